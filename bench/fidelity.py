"""Prediction fidelity: simulated vs measured step time over a matrix of plans on 2 CPU ranks.

    python bench/fidelity.py [--models gpt2-demo,llama-small] [--microbatches 4,8] [--steps 5]
                             [--cluster cluster.json] [--out runs/fidelity]

2 zoo models x GPipe, 1F1B, Interleaved1F1B, ZBVZeroBubble x 2 microbatch counts = 16
plans. Each model is profiled here (one thread, as each rank runs, with ``--side-by-side``
processes training it beside the profiler, as the other rank computes in the runs), this machine is
calibrated with ``pipeplan calibrate`` (links, per-action runtime overhead, optimizer time
per parameter) unless ``--cluster`` gives a spec, the plans are cut so stages take about
equal profiled time, and all of them run in ONE torchrun launch (the executor takes several
plans), the whole matrix ``--rounds`` times in turn so a burst of outside load does not
land on one config only. Error = (measured - predicted) / predicted, from the median of all
of a config's timed steps (spread = (max - min) / median). Other work on the machine slows the
ranks down and is not part of the model: the load average is printed before and after, and the
off-CPU column gives, per config (median over rounds, busiest rank), the share of compute time a
rank was ready but not running. Each model is profiled again after the runs: how far that
profile is from the first is the machine's drift, a floor under the errors. The "model" column
splits the error: each round's plan simulated with that run's own action times
(``replayed_step_s``) against its measured step, median over rounds: the schedule model's own
error, the rest being compute that ran off its profile.
Target: median |error| <= 5%, max <= 10%.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "1")

SCHEDULES = [("GPipe", 1), ("1F1B", 1), ("Interleaved1F1B", 2), ("ZBVZeroBubble", 2)]


def _load() -> str:
    a, b, c = os.getloadavg()
    return f"{a:.2f} {b:.2f} {c:.2f}"


def _work(profile) -> float:
    return sum(u.forward_s + u.backward_s for u in profile.entry("fp32", 1).units)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gpt2-demo,llama-small")
    ap.add_argument("--microbatches", default="4,8")
    ap.add_argument("--schedules", default=",".join(n for n, _ in SCHEDULES))
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="run the whole matrix this many times, in turn")
    ap.add_argument(
        "--profile-repeats",
        type=int,
        default=15,
        help="timed repeats per unit when profiling (default 15; the profiler's own default is 5)",
    )
    ap.add_argument(
        "--side-by-side",
        type=int,
        default=1,
        metavar="N",
        help="profile with N processes training the model beside the profiler, as the other rank "
        "computes beside each rank in the runs (default 1; 0: alone)",
    )
    ap.add_argument("--cluster", type=Path, help="a calibrated cluster spec (default: calibrate now)")
    ap.add_argument("--out", type=Path, default=Path("runs/fidelity"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from executor.cli import launch
    from executor.plans import validation_plan
    from executor.report import load_report, replayed_step_s
    from planner.cluster import load_cluster
    from profiles import load_profile, profile_model

    args.out.mkdir(parents=True, exist_ok=True)
    load_before = _load()
    cluster_path = args.cluster or args.out / "cluster.json"
    if not args.cluster and launch("executor.calibrate", [str(cluster_path)], 2) != 0:
        print("calibration failed", file=sys.stderr)
        return 1
    cluster = load_cluster(cluster_path)
    virtual = dict(SCHEDULES)
    plans = []
    for model in args.models.split(","):
        prof_path = args.out / f"{model}.profile.json"
        if not prof_path.exists():
            print(f"profiling {model} ...", flush=True)
            profile_model(
                model,
                seq_len=args.seq_len,
                microbatch_sizes=(1,),
                repeats=args.profile_repeats,
                side_by_side=args.side_by_side,
            ).save(prof_path)
        profile = load_profile(prof_path)
        for name in args.schedules.split(","):
            for m in map(int, args.microbatches.split(",")):
                plan = validation_plan(profile, prof_path, cluster, name, 2, m, virtual.get(name, 1))
                plans.append((model, name, m, plan))
    runs = [
        (i, plan.save(args.out / f"{model}-{name}-m{m}.r{r}.json"))
        for r in range(args.rounds)
        for i, (model, name, m, plan) in enumerate(plans)
    ]
    load_run = _load()
    rc = launch("executor", [*(str(p) for _, p in runs), "--steps", str(args.steps), "--warmup", str(args.warmup)], 2)
    if rc != 0:
        print(f"the run failed (exit code {rc})", file=sys.stderr)
        return 1
    steps: dict[int, list[float]] = {}
    off_cpu: dict[int, list[float]] = {}  # per round: the most any rank spent ready but off the CPU
    model_err: dict[int, list[float]] = {}  # per round: measured vs the plan replayed with the run's action times
    for i, path in runs:
        report = load_report(path.with_suffix(".run.json"))
        steps.setdefault(i, []).extend(report.step_s)
        replayed = replayed_step_s(plans[i][3], report)
        model_err.setdefault(i, []).append(report.step_s_median / replayed - 1)
        off_cpu.setdefault(i, []).append(max(report.extra.get("off_cpu_fraction") or [0.0]))
    rows, errors, model_errors = [], [], []
    for i, (model, name, m, plan) in enumerate(plans):
        med = statistics.median(steps[i])
        pred = plan.predicted.step_s
        errors.append((med - pred) / pred)
        model_errors.append(statistics.median(model_err[i]))
        spread = (max(steps[i]) - min(steps[i])) / med
        rows.append(
            f"{model:<12} {name:<16} {m:>3} {pred * 1e3:10.1f} {med * 1e3:10.1f} {errors[-1]:+8.1%} "
            f"{model_errors[-1]:+7.1%} {spread:7.1%} {statistics.median(off_cpu[i]):8.1%}"
        )
    print(
        f"\n{'model':<12} {'schedule':<16} {'m':>3} {'pred ms':>10} {'meas ms':>10} {'error':>8} {'model':>7} "
        f"{'spread':>7} {'off-CPU':>8}"
    )
    print("\n".join(rows))
    abs_err = [abs(e) for e in errors]
    med, worst = statistics.median(abs_err), max(abs_err)
    print(
        f"\n{len(errors)} configs x {args.rounds} rounds x {args.steps} steps on 2 CPU ranks (gloo): "
        f"median |error| {med:.1%}, max |error| {worst:.1%}, mean error {statistics.mean(errors):+.1%}; "
        f"target median <= 5%, max <= 10%: {'met' if med <= 0.05 and worst <= 0.10 else 'NOT met'}"
    )
    abs_model = [abs(e) for e in model_errors]
    print(
        f"the schedule model alone (each run replayed with its own action times): median |error| "
        f"{statistics.median(abs_model):.1%}, max {max(abs_model):.1%}, mean {statistics.mean(model_errors):+.1%}"
    )
    print(f"load average (1/5/15 min): before calibration {load_before}; before the run {load_run}; after {_load()}")
    drift = {}
    for model in args.models.split(","):  # the noise floor: the same profile, taken again now
        again = profile_model(
            model,
            seq_len=args.seq_len,
            microbatch_sizes=(1,),
            repeats=args.profile_repeats,
            side_by_side=args.side_by_side,
        )
        before = load_profile(args.out / f"{model}.profile.json")
        drift[model] = _work(again) / _work(before) - 1
    print(
        "machine drift (the profile taken again after the runs, F + B summed over units): "
        + ", ".join(f"{model} {d:+.1%}" for model, d in drift.items())
    )
    summary = {
        "configs": [
            {"model": mo, "schedule": n, "microbatches": m, "error": e, "model_error": me}
            for (mo, n, m, _), e, me in zip(plans, errors, model_errors)
        ],
        "rounds": args.rounds,
        "median_abs_error": med,
        "max_abs_error": worst,
        "load_before_run": load_run,
        "load_after": _load(),
        "drift": drift,
    }
    (args.out / "fidelity.json").write_text(json.dumps(summary, indent=1))
    return 0


# -- the 4-rank matrix: tensor and sharded data parallelism inside the stages -----------------------

#: ``--parallel``: (label, tp, dp, dp mode) of each layout beside pp 2, on 4 CPU ranks
PARALLEL_LAYOUTS = [("pp2xtp2", 2, 1, "ddp"), ("pp2xdp2-fsdp", 1, 2, "fsdp")]
PARALLEL_RANKS = 4


def parallel_matrix(argv: list[str]) -> int:
    """``--parallel``: pp 2 x tp 2 and pp 2 x dp 2 (fsdp) on 4 CPU ranks, 1F1B, the plans' own
    tp and dp mode (Plan schema 2), measured step and time in collectives against the prediction.

    4 ranks may share fewer cores (``--oversubscribe``'s case): each model is profiled with as many
    processes training beside the profiler as the other ranks, at most one per spare core
    (``--side-by-side``), and the links and per-action overhead are calibrated on 4 ranks. Where
    the ranks outnumber the cores, they take turns on them, which the simulator does not model
    (one device per rank): the compute then runs slower than profiled, and the "model" column
    (each run replayed with its own action times) shows what the schedule model gets right anyway.
    A model whose config declares no tensor-parallel plan (GPT-2's Hugging Face config has none)
    runs fsdp only. The comm columns
    are per step, summed over the pipeline ranks (each the mean of its tp or dp peers): predicted
    from the cost layer (tp inside F and B) and the simulator's UNSHARD and REDUCE_GRAD, measured
    from the RunReport's collectives (issue to completion)."""
    ap = argparse.ArgumentParser(prog="bench/fidelity.py --parallel", description=parallel_matrix.__doc__)
    ap.add_argument("--parallel", action="store_true")
    ap.add_argument("--models", default="gpt2-demo,llama-small")
    ap.add_argument("--microbatches", default="4,8")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile-repeats", type=int, default=15)
    ap.add_argument("--cluster", type=Path, help="a spec calibrated on 4 ranks (default: calibrate now)")
    ap.add_argument("--out", type=Path, default=Path("runs/fidelity-parallel"))
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from dataclasses import replace

    from executor.cli import launch
    from executor.parallel import tp_plan
    from executor.plans import validation_plan
    from executor.report import comm_per_pp_rank, load_report, predicted_comm, replayed_step_s
    from planner.cluster import load_cluster
    from profiles import load_profile, profile_model
    from profiles.contract import UserError
    from simulator.costs import DPMode, Layout
    from simulator.engine import simulate

    n = PARALLEL_RANKS
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = _load()
    cluster_path = args.cluster or args.out / "cluster.json"
    if not args.cluster and launch("executor.calibrate", [str(cluster_path)], n) != 0:
        print("calibration failed", file=sys.stderr)
        return 1
    cluster = replace(load_cluster(cluster_path), devices=n, devices_per_node=n)  # one host
    plans = []
    for model in args.models.split(","):
        prof_path = args.out / f"{model}.profile.json"
        if not prof_path.exists():
            print(f"profiling {model} ...", flush=True)
            profile_model(
                model,
                seq_len=args.seq_len,
                microbatch_sizes=(1,),
                repeats=args.profile_repeats,
                side_by_side=min(n - 1, (os.cpu_count() or 1) - 1),
            ).save(prof_path)
        profile = load_profile(prof_path)
        for label, tp, dp, mode in PARALLEL_LAYOUTS:
            if tp > 1:
                try:
                    tp_plan(profile.model_config)
                except UserError as e:
                    print(f"{model}: {label} left out ({e})", flush=True)
                    continue
            layout = Layout(tp=tp, dp=dp, dp_mode=DPMode(mode))
            for m in map(int, args.microbatches.split(",")):
                plan = validation_plan(profile, prof_path, cluster, "1F1B", 2, m, layout=layout)
                plans.append((model, label, m, plan))
    runs = [
        (i, plan.save(args.out / f"{model}-{label}-m{m}.r{r}.json"))
        for r in range(args.rounds)
        for i, (model, label, m, plan) in enumerate(plans)
    ]
    load_run = _load()
    worker = [*(str(p) for _, p in runs), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    rc = launch("executor", worker, n)
    if rc != 0:
        print(f"the run failed (exit code {rc})", file=sys.stderr)
        return 1
    steps: dict[int, list[float]] = {}
    model_err: dict[int, list[float]] = {}
    comm: dict[int, list[tuple[float, float]]] = {}  # per round: measured (tp, dp) seconds, summed over pp ranks
    off_cpu: dict[int, list[float]] = {}
    for i, path in runs:
        report = load_report(path.with_suffix(".run.json"))
        plan = plans[i][3]
        steps.setdefault(i, []).extend(report.step_s)
        model_err.setdefault(i, []).append(report.step_s_median / replayed_step_s(plan, report) - 1)
        meas = comm_per_pp_rank(report, plan)
        comm.setdefault(i, []).append(tuple(sum(v[g] for v in meas.values()) for g in ("tp", "dp")))
        off_cpu.setdefault(i, []).append(max(report.extra.get("off_cpu_fraction") or [0.0]))
    header = (
        f"{'model':<12} {'layout':<13} {'m':>3} {'pred ms':>9} {'meas ms':>9} {'error':>7} {'model':>7} "
        f"{'comm pred':>10} {'comm meas':>10} {'off-CPU':>8}"
    )
    rows, errors, summary = [], [], []
    for i, (model, label, m, plan) in enumerate(plans):
        med = statistics.median(steps[i])
        pred = plan.predicted.step_s
        errors.append((med - pred) / pred)
        p_comm = sum(v["tp"] + v["dp"] for v in predicted_comm(plan, simulate(plan)).values())
        m_comm = statistics.median(tp + dp for tp, dp in comm[i])
        rows.append(
            f"{model:<12} {label:<13} {m:>3} {pred * 1e3:9.1f} {med * 1e3:9.1f} {errors[-1]:+7.1%} "
            f"{statistics.median(model_err[i]):+7.1%} {p_comm * 1e3:10.1f} {m_comm * 1e3:10.1f} "
            f"{statistics.median(off_cpu[i]):8.1%}"
        )
        summary.append(
            {"model": model, "layout": label, "microbatches": m, "predicted_s": pred, "measured_s": med}
            | {"error": errors[-1], "comm_predicted_s": p_comm, "comm_measured_s": m_comm}
        )
    print(f"\n{header}\n" + "\n".join(rows))
    abs_err = [abs(e) for e in errors]
    med, worst = statistics.median(abs_err), max(abs_err)
    print(
        f"\n{len(errors)} configs x {args.rounds} rounds x {args.steps} steps on {n} CPU ranks (gloo, "
        f"{os.cpu_count()} cores): median |error| {med:.1%}, max |error| {worst:.1%}; target median <= 5%, "
        f"max <= 10%: {'met' if med <= 0.05 and worst <= 0.10 else 'NOT met'}"
    )
    print(
        "comm: ms per step in tp and fsdp collectives, summed over the 2 pipeline ranks (predicted: cost "
        "layer + simulator; measured: the RunReport's collectives, issue to completion, median over rounds)"
    )
    print(f"load average (1/5/15 min): before calibration {load_before}; before the run {load_run}; after {_load()}")
    out = {"configs": summary, "median_abs_error": med, "max_abs_error": worst, "load_after": _load()}
    (args.out / "fidelity-parallel.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    if "--parallel" in sys.argv[1:]:
        raise SystemExit(parallel_matrix(sys.argv[1:]))
    raise SystemExit(main())
