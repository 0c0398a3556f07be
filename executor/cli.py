"""``pipeplan run``, ``pipeplan validate`` and ``pipeplan calibrate``: launch torchrun and compare."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from planner.plan import load_plan
from profiles.clikit import Command
from profiles.contract import UserError
from profiles.types import Profile
from simulator.engine import simulate
from simulator.gantt import write_gantt
from simulator.timeline import Timeline, write_trace

from .report import RunReport, disturbance_notes, load_report, replayed_step_s

__all__ = ["RUN", "VALIDATE", "CALIBRATE", "launch", "compare_table"]

_ROOT = Path(__file__).resolve().parent.parent


def launch(module: str, args: list[str], nproc: int, threads: int = 1) -> int:
    """Run ``python -m module args`` under ``torchrun --standalone`` with ``nproc`` ranks."""
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
    return subprocess.run(cmd, env=env).returncode


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", type=Path, help="a Plan JSON file (pipeplan plan)")
    p.add_argument("--nproc", type=int, help="processes (default: the plan's pp x dp)")
    p.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before them (default 2)")
    p.add_argument("--check", action="store_true", help="compare loss and every gradient with one process")
    p.add_argument("--report", type=Path, help="RunReport path (default <plan>.run.json)")
    p.add_argument(
        "--torch-schedule",
        metavar="NAME",
        help="run torch's own schedule class NAME (e.g. 1F1B) on the same stages, for comparison",
    )
    p.add_argument("--data", type=Path, help="a small text file: its bytes as tokens (default: synthetic tokens)")
    p.add_argument("--torch-profiler", type=Path, metavar="DIR", help="write a torch.profiler trace per rank to DIR")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="import and run the package.module:function model the plan's profile names, on every rank",
    )


def _worker_args(args: argparse.Namespace, report: Path) -> list[str]:
    out = [str(args.plan), "--steps", str(args.steps), "--warmup", str(args.warmup), "--report", str(report)]
    for flag in ("torch_schedule", "data", "torch_profiler"):
        if getattr(args, flag, None):
            out += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return out + (["--check"] if args.check else []) + (["--trust-remote-code"] if args.trust_remote_code else [])


def _run_plan(args: argparse.Namespace) -> tuple[int, Path]:
    plan = load_plan(args.plan)  # fail here, with one line, before any process starts
    from profiles.zoo import check_trusted  # imports torch: only to run

    check_trusted(plan.profile.model_name, args.trust_remote_code, args.plan)
    nproc = args.nproc or plan.world_size
    if nproc != plan.world_size:
        raise UserError(f"--nproc {nproc}: the plan needs {plan.world_size} processes (pp {plan.pp} x dp {plan.dp})")
    if args.steps < 1 or args.warmup < 0:
        raise UserError("--steps must be >= 1 and --warmup >= 0")
    if getattr(args, "torch_schedule", None):
        from .build import check_torch_schedule  # imports torch: only when asked

        check_torch_schedule(plan, args.torch_schedule)
    if getattr(args, "data", None) and not args.data.is_file():
        raise UserError(f"--data {args.data}: no such file")
    report = args.report or args.plan.with_suffix(".run.json")
    if report.exists():
        report.unlink()  # never leave last run's report looking like this one's
    rc = launch("executor", _worker_args(args, report), nproc)
    return rc, report


def _run(args: argparse.Namespace) -> int:
    rc, _ = _run_plan(args)
    return rc


def compare_table(
    predicted: Timeline, report: RunReport, profile: Profile | None = None, replayed_s: float | None = None
) -> str:
    """Predicted vs measured: step time, per-rank busy time and peak memory, errors in %; with
    ``replayed_s`` (``replayed_step_s``) how much of the step's error the schedule model makes on
    its own; a note when other load on the machine disturbed the run or the profile the
    prediction came from."""

    def err(p: float, m: float) -> str:
        return f"{(m - p) / p:+7.1%}" if p else "      -"

    measured = report.timeline
    lines = [
        f"{'':<22} {'predicted':>11} {'measured':>11} {'error':>8}",
        f"{'step time (ms)':<22} {predicted.step_s * 1e3:11.1f} {report.step_s_median * 1e3:11.1f} "
        f"{err(predicted.step_s, report.step_s_median)}",
    ]
    by_rank = {r.rank: r for r in measured.ranks}
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


def _add_validate(p: argparse.ArgumentParser) -> None:
    _add_run(p)
    p.add_argument("--json", action="store_true", help="print the RunReport JSON on stdout")


def _validate(args: argparse.Namespace) -> int:
    plan = load_plan(args.plan)
    predicted = simulate(plan)
    rc, report_path = _run_plan(args)
    if rc != 0 or not report_path.exists():
        raise UserError(f"the run of {args.plan} failed (exit code {rc}); see the log above")
    report = load_report(report_path)
    stem = args.plan.with_suffix("")
    files = [
        write_trace(predicted, f"{stem}.sim.trace.json", "simulated"),
        write_trace(report.timeline, f"{stem}.run.trace.json", "measured"),
        write_gantt([predicted, report.timeline], f"{stem}.compare.png", ["simulated", "measured"]),
    ]
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0
    print(compare_table(predicted, report, plan.profile, replayed_step_s(plan, report)))
    for f in files:
        print(f"wrote {f}")
    return 0


def _add_calibrate(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o", "--output", type=Path, default=Path("cluster.json"), help="cluster spec to write (default cluster.json)"
    )


def _calibrate(args: argparse.Namespace) -> int:
    return launch("executor.calibrate", [str(args.output)], 2)


RUN = Command("run", "Run a Plan for real under torchrun and write a RunReport.", _add_run, _run)
VALIDATE = Command("validate", "Simulate a Plan, run it, and print predicted vs measured.", _add_validate, _validate)
CALIBRATE = Command(
    "calibrate",
    "Measure links, per-action runtime overhead and optimizer time; write a cluster spec.",
    _add_calibrate,
    _calibrate,
)
