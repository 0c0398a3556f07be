"""``pipeplan run``, ``pipeplan validate`` and ``pipeplan calibrate``: launch torchrun and compare."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from planner.export import plan_nodes, run_it_lines
from planner.plan import Plan, load_plan
from profiles.clikit import Command, progress_bar
from profiles.contract import UserError, check_outputs
from profiles.types import Profile
from simulator.engine import simulate
from simulator.gantt import write_gantt
from simulator.timeline import Timeline, write_trace

from .config import LAUNCHER, OVERSUBSCRIBE_MAX_PER_CORE, RunConfig, add_flags, worker_argv
from .report import RunReport, comm_per_pp_rank, disturbance_notes, load_report, predicted_comm, replayed_step_s
from .status import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, STATUS_DIR_ENV

__all__ = ["RUN", "VALIDATE", "CALIBRATE", "launch", "compare_table"]

_ROOT = Path(__file__).resolve().parent.parent


#: after Ctrl-C, SIGINT or SIGTERM: how long torchrun may take to stop its workers before it is killed
#: (its workers then see their agent gone and exit within a second, ``runtime._exit_with_agent``)
STOP_GRACE_S = 5.0
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _error_text(predicted: float, measured: float) -> str:
    """Measured against predicted, as a signed percentage; a difference that rounds to nothing reads
    +0.0% (never -0.0%), and "-" where nothing was predicted."""
    if not predicted:
        return "      -"
    return f"{round((measured - predicted) / predicted, 3) + 0.0:+7.1%}"


def launch(
    module: str,
    args: list[str],
    nproc: int,
    threads: int = 1,
    *,
    stdout: TextIO | int | None = None,
) -> int:
    """Run ``python -m module args`` under ``torchrun --standalone`` with ``nproc`` ranks; returns
    the exit status.

    torchrun runs in its own process group, so a terminal's Ctrl-C reaches this process only:
    SIGINT, SIGTERM or SIGHUP here is passed to torchrun as SIGTERM (it stops its workers), and
    torchrun is killed after ``STOP_GRACE_S``; the status is then 128 + the signal's number. A
    worker's own status (2 bad input, 3 CHECK FAILED) is returned rather than torchrun's 1.
    ``stdout`` (e.g. ``sys.stderr``) takes the workers' output instead of this process's stdout."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        module,
        *args,
    ]
    with tempfile.TemporaryDirectory(prefix="pipeplan-status-") as status:
        env[STATUS_DIR_ENV] = status
        if hasattr(stdout, "flush"):
            stdout.flush()  # what this process printed comes before the workers' lines
        proc = subprocess.Popen(cmd, env=env, stdout=stdout, start_new_session=True)
        rc, stopped_by = _wait(proc)
        if stopped_by:
            return 128 + stopped_by
        codes = [int(f.read_text() or 1) for f in Path(status).glob("rank*")]
    for code in (EXIT_BAD_INPUT, EXIT_CHECK_FAILED):  # a worker's own verdict says more than torchrun's 1
        if rc != 0 and code in codes:
            return code
    return rc


def _wait(proc: subprocess.Popen) -> tuple[int, int]:
    """Wait for torchrun, passing signals on; returns (its status, the signal that stopped it or 0)."""
    got: list[int] = []

    def forward(signum, _frame) -> None:
        if not got:
            print(f"pipeplan: {signal.Signals(signum).name}: stopping every rank", file=sys.stderr, flush=True)
            _signal_group(proc, signal.SIGTERM)
        got.append(signum)

    previous = {s: signal.signal(s, forward) for s in _FORWARDED} if _main_thread() else {}
    deadline = None
    try:
        while True:
            try:
                rc = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if got and deadline is None:
                    deadline = time.monotonic() + STOP_GRACE_S
                if deadline is not None and time.monotonic() > deadline:
                    _signal_group(proc, signal.SIGKILL)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:  # an exception here: never leave torchrun running
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
    return rc, got[0] if got else 0


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", type=Path, help="a Plan JSON file (pipeplan plan)")
    add_flags(p, LAUNCHER)


#: the parsed arguments that are not run settings: the plan, ``validate``'s ``--json``, the subcommand
_NOT_SETTINGS = ("plan", "json", "command")


def _config(args: argparse.Namespace) -> RunConfig:
    """The run settings of ``run``/``validate``'s arguments (their bounds checked)."""
    return RunConfig.from_dict({k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS})


def side_files(plan_path: Path) -> list[Path]:
    """The files ``validate`` writes beside the plan (besides the RunReport)."""
    stem = plan_path.with_suffix("")
    return [Path(f"{stem}.sim.trace.json"), Path(f"{stem}.run.trace.json"), Path(f"{stem}.compare.png")]


def _check_run_args(plan_path: Path, cfg: RunConfig, extra_outputs: list[tuple[str, Path]] = ()) -> RunConfig:
    """Paths of ``run``/``validate``, before the plan is read: outputs that are neither an input nor
    unwritable. Returns ``cfg`` with its report path set."""
    report = cfg.report or plan_path.with_suffix(".run.json")
    inputs = [plan_path, cfg.data]
    outputs = [("--report", report), *extra_outputs]
    check_outputs(inputs, outputs)
    if cfg.torch_profiler is not None:
        d = cfg.torch_profiler
        if d.exists() and not d.is_dir():
            raise UserError(f"--torch-profiler {d}: not a folder: give a folder for the traces")
        check_outputs(inputs, [("--torch-profiler", d / "trace.json")])
    if cfg.data is not None and not Path(cfg.data).is_file():  # a token file may be large: its size is not capped
        raise UserError(f"--data {cfg.data}: not a regular file: give a text file or a uint16/uint32 .bin token file")
    return replace(cfg, report=report)


def _run_plan(
    plan_path: Path,
    cfg: RunConfig,
    *,
    plan: Plan | None = None,
    json_out: bool = False,
    extra_outputs: list[tuple[str, Path]] = (),
) -> tuple[int, Path]:
    """Launch the run of ``plan_path`` (``plan``: that file, already loaded; ``json_out``: the
    workers' output goes to stderr); returns torchrun's (or the workers') exit status and the
    report's path."""
    cfg = _check_run_args(plan_path, cfg, extra_outputs)
    report = cfg.report
    plan = plan or load_plan(plan_path)  # fail here, with one line, before any process starts
    # the plan's profile is an input too
    check_outputs([plan.profile_file(plan_path.parent)], [("--report", report), *extra_outputs])
    from profiles.zoo import check_trusted  # imports torch: only to run

    check_trusted(plan.profile.model_name, cfg.trust_remote_code, plan_path)
    nproc = cfg.nproc or plan.world_size
    if nproc != plan.world_size:
        raise UserError(
            f"--nproc {nproc}: the plan needs {plan.world_size} processes (pp {plan.pp} x dp {plan.dp} x tp {plan.tp})"
        )
    if cfg.torch_schedule:
        from .build import check_torch_schedule  # imports torch: only when asked

        check_torch_schedule(plan, cfg.torch_schedule)
    argv = [str(plan_path), *worker_argv(cfg)]
    _check_host(plan, plan_path, nproc, cfg.oversubscribe, argv, json_out)
    if report.exists():
        report.unlink()  # never leave last run's report looking like this one's
    rc = launch("executor", argv, nproc, stdout=sys.stderr if json_out else None)
    return rc, report


def _check_host(
    plan: Plan, plan_path: Path, nproc: int, oversubscribe: bool, worker_args: list[str], json_out: bool
) -> None:
    """Refuse a launch bigger than this host (one line, exit 2), printing the multi-node commands
    (on stderr with ``json_out``)."""
    gpus = _local_gpus() if plan.cluster.device != "cpu" else 0
    if gpus:
        if nproc <= gpus:
            return
        have, fix = f"{gpus} GPUs", ""
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        most = OVERSUBSCRIBE_MAX_PER_CORE * cores
        if nproc <= cores or (oversubscribe and nproc <= most):
            return
        have = f"{cores} CPU cores"
        fix = "" if oversubscribe else f", or add --oversubscribe (CPU, at most {most} ranks here)"
    # the nodes the plan's cluster has, not this host's cores: the same lines ``pipeplan plan`` prints
    lines = run_it_lines(plan, plan_path, worker_args[1:])
    out = sys.stderr if json_out else sys.stdout
    print("\n".join(lines), file=out)
    nodes, per_node = plan_nodes(plan)
    where = f"on {nodes} nodes of {per_node} ranks" if nodes > 1 else f"on a node of {per_node} devices"
    raise UserError(
        f"{plan_path}: the plan needs {nproc} processes but this host has {have}: launch it {where} "
        f"with the {'commands' if nodes > 1 else 'command'} above{fix}"
    )


def _local_gpus() -> int:
    import torch  # only for a plan made for accelerators

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _run(args: argparse.Namespace) -> int:
    rc, _ = _run_plan(args.plan, _config(args))
    return rc


def compare_table(
    predicted: Timeline,
    report: RunReport,
    profile: Profile | None = None,
    replayed_s: float | None = None,
    plan: Plan | None = None,
) -> str:
    """Predicted vs measured: step time, per-rank busy time and peak memory, errors in %; with
    ``replayed_s`` (``replayed_step_s``) how much of the step's error the schedule model makes on
    its own; with ``plan`` (tp or a sharded dp mode) each pipeline rank's time in tensor- and
    data-parallel collectives; a note when other load on the machine disturbed the run or the
    profile the prediction came from."""

    err = _error_text
    measured = report.timeline
    lines = [
        f"{'':<22} {'predicted':>11} {'measured':>11} {'error':>8}",
        f"{'step time (ms)':<22} {predicted.step_s * 1e3:11.1f} {report.step_s_median * 1e3:11.1f} "
        f"{err(predicted.step_s, report.step_s_median)}",
    ]
    by_rank = _measured_by_pipeline_rank(predicted, measured)
    for r in predicted.ranks:
        m = by_rank.get(r.rank)
        if m is None:
            continue
        lines.append(
            f"{f'rank {r.rank} busy (ms)':<22} {r.busy_s * 1e3:11.1f} {m.busy_s * 1e3:11.1f} {err(r.busy_s, m.busy_s)}"
        )
        lines.append(
            f"{f'rank {r.rank} peak (MiB)':<22} {r.peak_bytes / 2**20:11.1f} {m.peak_bytes / 2**20:11.1f} "
            f"{err(r.peak_bytes, m.peak_bytes)}"
        )
    if plan is not None:
        lines += _comm_lines(plan, predicted, report)
    spread = (max(report.step_s) - min(report.step_s)) / report.step_s_median if report.step_s else 0.0
    if replayed_s:
        lines.append(
            f"{'replayed step (ms)':<22} {replayed_s * 1e3:11.1f} {report.step_s_median * 1e3:11.1f} "
            f"{err(replayed_s, report.step_s_median)}"
        )
        lines.append(
            "replayed: the plan simulated with the run's own action times; its error is the schedule "
            "model's own, the rest of the step's error is compute that ran off its profile"
        )
    lines.append(
        f"measured over {len(report.step_s)} steps (median; spread {spread:.1%}) on {report.world_size} "
        f"{report.device} ranks, {report.backend}"
    )
    lines += [f"note: {note}" for note in disturbance_notes(report, profile)]
    return "\n".join(lines)


def _measured_by_pipeline_rank(predicted: Timeline, measured: Timeline) -> dict:
    """Each simulated (pipeline) rank's measured counterpart: the lowest global rank that ran the
    same stages (data-parallel replica 0, tp rank 0, whatever the launch's rank layout: with tp or
    a sharded dp mode the mesh's, where global rank 1 is not pipeline rank 1)."""

    def stages(tl: Timeline) -> dict[int, frozenset]:
        out: dict[int, set] = {}
        for e in tl.events:
            out.setdefault(e.rank, set()).add(e.stage)
        return {r: frozenset(s) for r, s in out.items()}

    ran, planned = stages(measured), stages(predicted)
    first: dict[frozenset, int] = {}
    for rank in sorted(ran):
        first.setdefault(ran[rank], rank)
    stats = {r.rank: r for r in measured.ranks}
    return {r.rank: stats.get(first.get(planned.get(r.rank), r.rank)) for r in predicted.ranks}


def _comm_lines(plan: Plan, predicted: Timeline, report: RunReport) -> list[str]:
    """Per pipeline rank: seconds in tp and dp collectives per step, predicted vs measured."""
    pred = predicted_comm(plan, predicted)
    if not pred:
        return []
    meas = comm_per_pp_rank(report, plan)
    if not meas:
        return ["comm: this report has no measured collectives (written before they were recorded)"]
    lines = []
    for rank, p in pred.items():
        for group in ("tp", "dp"):
            m = meas.get(rank, {}).get(group, 0.0)
            if p[group] or m:
                err = _error_text(p[group], m)
                lines.append(f"{f'rank {rank} {group} comm (ms)':<22} {p[group] * 1e3:11.1f} {m * 1e3:11.1f} {err}")
    lines.append(
        "comm: time in tensor-parallel (tp, inside F and B) and sharded data-parallel (dp) collectives "
        "per pipeline rank and step, issue to completion, the mean over the rank's tp and dp peers"
    )
    return lines


def _add_validate(p: argparse.ArgumentParser) -> None:
    _add_run(p)
    p.add_argument("--json", action="store_true", help="print the RunReport JSON on stdout")


def _validate(args: argparse.Namespace) -> int:
    sim_trace, run_trace, png = side_files(args.plan)
    side = [("side file", sim_trace), ("side file", run_trace), ("side file", png)]
    cfg = _check_run_args(args.plan, _config(args), side)
    report_path = cfg.report
    existed = {p for _, p in side + [("--report", report_path)] if p.exists()}
    bar = progress_bar(3, "validating", enabled=not args.json)
    bar.set_postfix_str("simulating")
    plan = load_plan(args.plan)
    predicted = simulate(plan)
    bar.update()
    bar.set_postfix_str("running")
    rc, report_path = _run_plan(args.plan, cfg, plan=plan, json_out=args.json, extra_outputs=side)
    if rc != 0 or not report_path.exists():
        bar.close()
        print(
            f"pipeplan validate: the run of {args.plan} failed (exit status {rc}); see the log above", file=sys.stderr
        )
        return rc or 1
    bar.update()
    bar.set_postfix_str("comparing")
    report = load_report(report_path)
    write_trace(predicted, sim_trace, "simulated")
    write_trace(report.timeline, run_trace, "measured")
    write_gantt([predicted, report.timeline], png, ["simulated", "measured"])
    bar.update()
    bar.close()
    # the files written, each said (on stderr with --json, which keeps stdout one JSON object)
    said = [
        f"wrote {p}{' (replaced the previous one)' if p in existed else ''}"
        for p in (report_path, sim_trace, run_trace, png)
    ]
    if args.json:
        print(json.dumps(report.to_dict()))
        print("; ".join(said), file=sys.stderr)
        return 0
    print(compare_table(predicted, report, plan.profile, replayed_step_s(plan, report), plan))
    print("\n".join(said))
    return 0


def _add_calibrate(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o", "--output", type=Path, default=Path("cluster.json"), help="cluster spec to write (default cluster.json)"
    )


def _calibrate(args: argparse.Namespace) -> int:
    check_outputs([], [("-o", args.output)])
    return launch("executor.calibrate", [str(args.output)], 2)


RUN = Command("run", "Run a Plan for real under torchrun and write a RunReport.", _add_run, _run)
VALIDATE = Command("validate", "Simulate a Plan, run it, and print predicted vs measured.", _add_validate, _validate)
CALIBRATE = Command(
    "calibrate",
    "Measure links, per-action runtime overhead and optimizer time; write a cluster spec.",
    _add_calibrate,
    _calibrate,
)
