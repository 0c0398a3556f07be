"""Executor overhead: its step time next to a plain ``torch.distributed.pipelining`` script.

    python bench/executor_overhead.py [--model gpt2-demo] [--microbatches 8] [--steps 6] [--rounds 3]

The plain script is what a user would write by hand: the same units cut the same way
(the even 2-stage split), ``PipelineStage`` + ``Schedule1F1B``, AdamW, a barrier and
``time.perf_counter`` around ``step()`` + ``optimizer.step()``. The executor runs the same
split as a Plan (1F1B table through ``_PipelineScheduleRuntime``, per-action timing, the
report). Both run inside the SAME two torchrun processes, alternating rounds (plain,
executor, plain, executor, ...) so drift in the machine's load hits both; the figure is
executor median / plain median - 1 over all timed steps. Both use the same allocator
setting (glibc keeps freed memory; the executor sets it, and it is process-wide).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _plain_steps(plan, steps: int, warmup: int) -> list[float]:
    """The hand-written pipelining script, timed like the executor times a step."""
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B

    from profiles.zoo import build_model

    rank = dist.get_rank()
    prof = plan.profile
    model = build_model(
        prof.model_name, config=prof.model_config, seed=0, attention=prof.measurement.get("attention", "sdpa")
    )
    s = plan.stages[rank]
    mod = nn.Sequential(*model.units[s.first : s.end])
    stage = PipelineStage(mod, rank, len(plan.stages), torch.device("cpu"))
    sched = Schedule1F1B(stage, plan.microbatches, loss_fn=model.loss_fn)
    opt = torch.optim.AdamW(mod.parameters(), lr=1e-4)
    times = []
    for i in range(warmup + steps):
        x, y = model.make_batch(plan.microbatches * plan.microbatch_size, prof.seq_len, 1000 * i)
        dist.barrier()
        t0 = time.perf_counter()
        if rank == 0:
            sched.step(x)
        else:
            sched.step(target=y, losses=[])
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def worker(plan_path: Path, steps: int, rounds: int) -> int:
    import torch
    import torch.distributed as dist

    from executor import runtime
    from executor.report import load_report
    from planner.plan import load_plan
    from profiles.tuning import keep_freed_memory

    torch.set_num_threads(1)
    keep_freed_memory()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    plan = load_plan(plan_path)
    _, cfg = runtime._args([str(plan_path), "--steps", str(steps), "--warmup", "2"])
    device = torch.device("cpu")
    plain, ours = [], []
    for r in range(rounds):
        plain += _plain_steps(plan, steps, 2)
        report = plan_path.with_name(f"executor.r{r}.run.json")
        ctx = runtime._Context(
            plan=plan, path=plan_path, report=report, torch_schedule=None, rank=rank, world=world, device=device
        )
        runtime._run(ctx, cfg)
        if rank == 0:
            ours += list(load_report(report).step_s)
    dist.barrier()
    if rank == 0:
        p, e = statistics.median(plain), statistics.median(ours)
        print(f"\nplain Schedule1F1B script: median step {p * 1e3:.1f} ms over {len(plain)} steps")
        print(f"pipeplan executor:         median step {e * 1e3:.1f} ms over {len(ours)} steps")
        print(
            f"executor overhead: {e / p - 1:+.1%} (target within 3%; load average "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())})"
        )
    dist.destroy_process_group()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt2-demo")
    ap.add_argument("--microbatches", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("runs/executor_overhead"))
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.steps, args.rounds)

    from planner import Cluster, Job, score_split
    from profiles import load_profile, profile_model

    args.out.mkdir(parents=True, exist_ok=True)
    prof_path = args.out / f"{args.model}.profile.json"
    if not prof_path.exists():
        profile_model(args.model, seq_len=args.seq_len, microbatch_sizes=(1,)).save(prof_path)
    job = Job(
        global_batch=args.microbatches,
        microbatch_size=1,
        microbatches=(args.microbatches,),
        schedules=("1F1B",),
        pp=(2,),
    )
    plan = score_split(
        load_profile(prof_path),
        Cluster(devices=2),
        job,
        "even",
        "1F1B",
        microbatches=args.microbatches,
        pp=2,
        profile_path=prof_path,
    )
    path = plan.save(args.out / "plan.json")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        __file__,
        "--worker",
        str(path),
        "--steps",
        str(args.steps),
        "--rounds",
        str(args.rounds),
    ]
    return subprocess.run(cmd, env=env).returncode


if __name__ == "__main__":
    raise SystemExit(main())
