"""Run a plan from the dashboard: ``pipeplan validate PLAN --json`` in the background.

One run per plan file at a time. The run is a child process in a session (and so a process
group) of its own, so torchrun and its workers can be stopped together: by the Stop button,
or, for any run still going when the dashboard's server exits, at exit. Nothing here blocks: a
view polls :meth:`Run.state` on each rerun. Progress is the time elapsed against an expected
duration (startup plus the plan's predicted steps), since ``validate`` reports only at the end.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from planner.plan import Plan

__all__ = ["Run", "start", "running", "host_problem", "host_cores", "STEPS", "WARMUP"]

_ROOT = Path(__file__).resolve().parent.parent
STEPS, WARMUP = 3, 1  #: timed and untimed steps of a dashboard run (small: it is a check, not a benchmark)
_STARTUP_S = 15.0  #: torchrun, imports and building the stages, before the first step (a guess, shown as such)
_RUNS: dict[str, Run] = {}  #: plan path -> its latest run, for this server process


def host_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def host_problem(plan: Plan) -> str | None:
    """Why ``plan`` cannot run on this host (one line), or None: it needs one CPU core per process."""
    cores = host_cores()
    if plan.world_size > cores:
        return (
            f"this plan needs {plan.world_size} processes (pp {plan.pp} x dp {plan.layout.dp}) and this host has "
            f"{cores} cores: run it on its cluster with the command below"
        )
    return None


@dataclass
class Run:
    """A background ``pipeplan validate``."""

    plan_path: Path
    proc: subprocess.Popen
    out_path: Path  #: its stdout: the RunReport JSON (``--json``)
    err_path: Path  #: its stderr: the log
    expected_s: float
    started: float = field(default_factory=time.monotonic)
    opened: bool = False  #: its report has been opened in the Compare view once
    stopped: bool = False  #: ended by :meth:`stop`

    @property
    def report_path(self) -> Path:
        return self.plan_path.with_suffix(".run.json")

    def state(self) -> tuple[str, float, str]:
        """(``running`` | ``done`` | ``failed`` | ``stopped``, progress 0..1, one line to show)."""
        rc = self.proc.poll()
        elapsed = time.monotonic() - self.started
        if rc is None:
            frac = min(0.95, 0.02 + elapsed / self.expected_s)
            return "running", frac, f"running pipeplan validate: {elapsed:.0f} s (about {self.expected_s:.0f} s)"
        if self.stopped:
            return "stopped", 0.0, f"stopped after {elapsed:.0f} s"
        if rc == 0 and self.report_path.is_file():
            return "done", 1.0, f"done in {elapsed:.0f} s: {self.report_path.name}"
        return "failed", 1.0, f"pipeplan validate ended with exit code {rc}"

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.err_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """End the run's whole process group: SIGTERM, then SIGKILL after 5 s."""
        if self.proc.poll() is not None:
            return
        self.stopped = True
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass

    def discard(self) -> None:
        """Stop it and remove its logs."""
        self.stop()
        for p in (self.out_path, self.err_path):
            p.unlink(missing_ok=True)


def running(plan_path: str | Path) -> Run | None:
    """The latest run of ``plan_path`` started from this server (running or finished), if any."""
    return _RUNS.get(str(Path(plan_path).resolve()))


def start(plan_path: str | Path, plan: Plan) -> Run:
    """Start ``pipeplan validate PLAN --json`` in a new session; a previous run of the plan is stopped first."""
    path = Path(plan_path).resolve()
    old = _RUNS.pop(str(path), None)
    if old is not None:
        old.discard()
    fd_out, out = tempfile.mkstemp(prefix="pipeplan-validate-", suffix=".json")
    fd_err, err = tempfile.mkstemp(prefix="pipeplan-validate-", suffix=".log")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, str(_ROOT / "pipeplan.py"), "validate", str(path), "--json"]
    cmd += ["--steps", str(STEPS), "--warmup", str(WARMUP)]
    with os.fdopen(fd_out, "w") as o, os.fdopen(fd_err, "w") as e:
        proc = subprocess.Popen(cmd, stdout=o, stderr=e, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    step = plan.predicted.step_s if plan.predicted else 1.0
    run = Run(path, proc, Path(out), Path(err), expected_s=_STARTUP_S + 3 * (STEPS + WARMUP) * step)
    _RUNS[str(path)] = run
    return run


@atexit.register
def _stop_all() -> None:
    for run in list(_RUNS.values()):
        run.discard()
