"""Plan quality, measured: the planner's best 2-stage plan vs the even 1F1B split, in one run.

    python bench/plan_vs_even.py [--model gpt2-demo] [--microbatches 8] [--steps 5] [--cluster FILE]

Both plans use 1F1B on 2 CPU ranks with the same microbatching; the planner chooses the
split (gpt2-demo's big vocabulary head makes the even unit count a poor cut). Both run in
ONE torchrun launch (the executor takes several plans), alternating (plan, even, plan, even) so drift in the machine's
load hits both; the ratio is even / planned median step time (> 1: the plan is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt2-demo")
    ap.add_argument("--microbatches", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cluster", type=Path, help="a calibrated cluster spec (default: calibrate now)")
    ap.add_argument("--out", type=Path, default=Path("runs/plan_vs_even"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from executor.cli import launch
    from executor.report import load_report
    from planner import Job, plan, score_split
    from planner.cluster import load_cluster
    from profiles import load_profile, profile_model

    args.out.mkdir(parents=True, exist_ok=True)
    cluster_path = args.cluster or args.out / "cluster.json"
    if not args.cluster and launch("executor.calibrate", [str(cluster_path)], 2) != 0:
        return 1
    cluster = load_cluster(cluster_path)
    prof_path = args.out / f"{args.model}.profile.json"
    if not prof_path.exists():
        # as make demo profiles: 15 repeats, beside a neighbour training the model (the other rank)
        profile_model(args.model, seq_len=args.seq_len, microbatch_sizes=(1,), repeats=15, side_by_side=1).save(
            prof_path
        )
    profile = load_profile(prof_path)
    job = Job(
        global_batch=args.microbatches,
        microbatch_size=1,
        microbatches=(args.microbatches,),
        schedules=("1F1B",),
        pp=(2,),
    )
    best = plan(profile, cluster, job, top=1, profile_path=prof_path)[0]
    even = score_split(
        profile, cluster, job, "even", "1F1B", microbatches=args.microbatches, pp=2, profile_path=prof_path
    )
    plans = {"planned": best, "even": even}
    order = [(name, r, plans[name].save(args.out / f"{name}.r{r}.json")) for r in range(args.rounds) for name in plans]
    if launch("executor", [*(str(p) for *_, p in order), "--steps", str(args.steps), "--warmup", "2"], 2):
        return 1
    measured: dict[str, list[float]] = {"planned": [], "even": []}
    for name, _, path in order:
        measured[name] += list(load_report(path.with_suffix(".run.json")).step_s)
    layouts = {k: p.pipeline_layout() for k, p in plans.items()}
    predicted = {k: p.predicted.step_s for k, p in plans.items()}
    med = {k: statistics.median(v) for k, v in measured.items()}
    print(f"\n{'plan':<8} {'layout':<22} {'predicted ms':>13} {'measured ms':>12}")
    for k in plans:
        print(f"{k:<8} {layouts[k]:<22} {predicted[k] * 1e3:13.1f} {med[k] * 1e3:12.1f}")
    print(
        f"\neven / planned step time: predicted {predicted['even'] / predicted['planned']:.2f}x, "
        f"measured {med['even'] / med['planned']:.2f}x ({args.model}, 1F1B, 2 CPU ranks, m={args.microbatches}; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
