"""``pipeplan plan`` and ``pipeplan simulate`` (a PLAN, or the simulator's what-if forms)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from profiles.clikit import Command, bounded, progress_bar
from profiles.contract import UserError, check_outputs, json_text, write_files
from profiles.types import DTYPE_TABLE, Profile, load_profile, profile_file
from simulator import cli as simcli
from simulator.actions import csv_text
from simulator.engine import simulate
from simulator.placement import parse_placement
from simulator.schedules import CUSTOM, SCHEDULES, canonical_name

from .cluster import (
    MAX_DEVICES,
    MAX_GLOBAL_BATCH,
    MAX_MICROBATCHES,
    PRESET_CLUSTERS,
    Cluster,
    Job,
    load_cluster,
    load_job,
    parse_bytes,
)
from .explain import explain
from .export import run_it_lines
from .given import score_split
from .plan import Plan, load_plan
from .search import search

__all__ = ["PLAN", "SIMULATE", "format_plans", "write_plan_files"]

MAX_TOP = 100  #: the most plans ``--top`` lists
MAX_VIRTUAL_FLAG = 64  #: the most stages per rank ``--virtual`` may allow


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_plan(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "profile",
        help="a Profile JSON file (from pipeplan profile), or a stored profile's model name "
        "(profiles/<device>/<name>.json, e.g. gpt2-demo)",
    )
    p.add_argument("--devices", type=int, help="devices in all (default: the cluster's, else 2)")
    p.add_argument("--device-memory", help="usable memory per device, e.g. 80GiB (default: the cluster's)")
    p.add_argument(
        "--cluster",
        help=f"cluster spec: a JSON file (pipeplan calibrate), a YAML file with the same "
        f"fields (.yaml/.yml), or a preset: {', '.join(PRESET_CLUSTERS)}",
    )
    p.add_argument("--global-batch", type=int, default=8, help="samples per optimizer step (default 8)")
    p.add_argument("--microbatch-size", type=int, help="samples per microbatch (default: planner chooses)")
    p.add_argument(
        "--schedules",
        default=",".join([*SCHEDULES, CUSTOM.name]),
        help="comma list of allowed schedules (default: all seven and Custom)",
    )
    p.add_argument("--pp", type=_ints, default=(), help="allowed pipeline degrees, comma list (default: any)")
    p.add_argument("--microbatches", type=_ints, default=(), help="allowed microbatch counts (default: any)")
    p.add_argument(
        "--dtype",
        help="precision, or a comma list the MILP chooses from per stage (fp32, bf16, fp16; "
        "default: every dtype the profile has)",
    )
    p.add_argument(
        "--virtual",
        type=_ints,
        default=(),
        help="allowed stages per rank for schedules that take several (default 1..4)",
    )
    p.add_argument(
        "--recompute",
        nargs="?",
        const="none,selective,full",
        help="recompute modes the MILP chooses from per stage: comma list of none, selective, full "
        "(a bare --recompute: all three; default: every mode valid for the model)",
    )
    p.add_argument(
        "--tp",
        type=_ints,
        default=(),
        help="allowed tensor-parallel degrees, comma list (default: every divisor of the devices per "
        "node that divides the attention and key/value heads)",
    )
    p.add_argument(
        "--dp-mode",
        default="ddp,zero1,zero2,fsdp",
        help="allowed data-parallel modes, comma list of ddp, zero1, zero2, fsdp (default: all)",
    )
    p.add_argument(
        "--sequence-parallel",
        choices=["on", "off", "auto"],
        default="auto",
        help="Megatron sequence parallelism beside tp > 1 (auto: on, as Megatron runs it)",
    )
    p.add_argument(
        "--optimizer-bytes",
        type=float,
        default=8.0,
        help="optimizer state bytes per parameter (default 8: AdamW's two fp32 moments)",
    )
    p.add_argument("--forward-only", action="store_true", help="inference: forwards only, weights only")
    p.add_argument(
        "--objective",
        choices=["step", "throughput", "latency"],
        help="what to minimize: step (training step time; the default), throughput (samples/s, "
        "the default with --forward-only) or latency (one microbatch through the pipeline); "
        "throughput and latency need --forward-only",
    )
    p.add_argument("--job", help="a job JSON file (Job fields); flags given explicitly are ignored then")
    p.add_argument(
        "--solver",
        default="auto",
        choices=["auto", "highs", "cbc"],
        help="MILP solver (auto: HiGHS when installed, else CBC)",
    )
    p.add_argument("--top", type=int, default=3, help="how many plans to show (default 3)")
    p.add_argument(
        "--split",
        help="score this split instead of searching: first unit of stages 1..p-1 (e.g. 5,9), or 'even' with --pp",
    )
    p.add_argument(
        "--placement",
        help="score this stage -> rank map as a Custom schedule, e.g. 0,1,0 (rank 0 "
        "holds stages 0 and 2); with --split that split, else the MILP's",
    )
    p.add_argument("--time-limit", type=float, default=20.0, help="solver time limit per MILP, seconds")
    p.add_argument("--explain", action="store_true", help="say why the winner wins")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("plan.json"),
        help="write the best Plan here (default plan.json) and its schedule CSV beside it",
    )
    p.add_argument("--json", action="store_true", help="print the best Plan JSON on stdout")


def _recompute_modes(flag: str | None, profile) -> tuple[str, ...]:
    """``--recompute``'s modes; by default every mode valid for the model (selective needs a
    transformer's shape in its config)."""
    if flag is not None:
        modes = tuple(m.strip() for m in flag.split(",") if m.strip())
        bad = [m for m in modes if m not in ("none", "selective", "full")]
        if bad or not modes:
            raise UserError(f"--recompute {flag}: give a comma list of none, selective, full")
        return modes
    config = profile.model_config
    shaped = bool(config.get("num_attention_heads", config.get("n_head")))
    return ("none", "selective", "full") if shaped else ("none", "full")


def _cluster_from(args: argparse.Namespace) -> Cluster:
    cluster = load_cluster(args.cluster) if args.cluster else PRESET_CLUSTERS["cpu-local"]
    if args.devices is not None:
        cluster = replace(cluster, devices=args.devices)
    if args.device_memory is not None:
        cluster = replace(cluster, memory_bytes=parse_bytes(args.device_memory))
    return cluster


def format_plans(plans: list[Plan]) -> str:
    """One row per plan: configuration, simulated step, bubbles, peak memory per rank, speedups."""
    names = [b["name"] for b in plans[0].baselines]
    short = {
        "even-1F1B": "vs even",
        "torchtitan-1F1B": "vs titan",
        "deepspeed-parameters-1F1B": "vs ds-par",
        "megatron": "vs mega",
        "torchtitan-fsdp": "vs ttfsdp",
    }
    serving = plans[0].job.forward_only  # then latency and throughput columns too
    extra = f"{'lat ms':>9} {'samples/s':>10} " if serving else ""
    lines = [
        f"{'#':>2} {'schedule':<22} {'pp':>3} {'tp':>3} {'dp':>4} {'mode':>5} {'v':>2} {'m':>4} {'mbs':>4} "
        f"{'step ms':>9} {extra}"
        f"{'bubble':>7} {'peak GiB':>9} " + " ".join(f"{short.get(n, n):>9}" for n in names) + "  layout"
    ]
    for i, p in enumerate(plans, 1):
        pr = p.predicted
        by_name = {b["name"]: b for b in p.baselines}
        vs = " ".join(_vs(by_name.get(n)) for n in names)
        bubble = sum(pr.bubble_fraction) / len(pr.bubble_fraction)
        lines.append(
            f"{i:>2} {p.schedule:<22} {p.pp:>3} {p.tp:>3} {p.dp:>4} {p.dp_mode.value:>5} {p.virtual:>2} "
            f"{p.microbatches:>4} "
            f"{p.microbatch_size:>4} {pr.step_s * 1e3:9.2f} "
            + (f"{pr.latency_s * 1e3:9.2f} {pr.throughput:10.1f} " if serving else "")
            + f"{bubble:7.1%} {max(pr.peak_bytes) / 2**30:9.3f} "
            f"{vs}  {p.layout()}"
        )
    lines += [
        f"   {short.get(b['name'], b['name'])}: {b.get('config', b['name'])}"
        + ("" if b.get("fits_memory", True) else f" (OOM: {b['peak_bytes'] / 2**30:.1f} GiB)")
        for b in plans[0].baselines
        if b.get("config")
    ]
    return "\n".join(lines)


def _vs(b: dict | None) -> str:
    """A baseline's cell: how much faster the plan is, or OOM when the baseline does not fit."""
    if b is None:
        return f"{'-':>9}"
    if not b.get("fits_memory", True):
        return f"{'OOM':>9}"
    return f"{b['speedup']:8.2f}x"


def write_plan_files(plan: Plan, path: Path) -> list[Path]:
    """The Plan JSON and its torch-loadable schedule CSV (``<plan>.csv``), written as a pair:
    both or neither (``profiles.contract.write_files``)."""
    path = Path(path)
    return write_files({path: json_text(plan.stored_dict(path)), path.with_suffix(".csv"): csv_text(plan.table)})


def _check_flags(args: argparse.Namespace) -> None:
    """Bounds of the plan flags, before anything is read or built."""
    bounded("--devices", args.devices, 1, MAX_DEVICES)
    bounded("--global-batch", args.global_batch, 1, MAX_GLOBAL_BATCH)
    bounded("--microbatch-size", args.microbatch_size, 1, args.global_batch, " (at most --global-batch)")
    bounded("--microbatches", args.microbatches, 1, min(args.global_batch, MAX_MICROBATCHES), " (per replica)")
    bounded("--pp", args.pp, 1, args.devices or MAX_DEVICES, " (at most --devices)")
    bounded("--virtual", args.virtual, 1, MAX_VIRTUAL_FLAG)
    bounded("--top", args.top, 1, MAX_TOP)
    bounded("--time-limit", args.time_limit, 0.01, 86400.0, " seconds")
    bounded("--optimizer-bytes", args.optimizer_bytes, 0.0, 1024.0, " bytes per parameter")
    dtypes = [d for d in (args.dtype or "").split(",") if d]
    if len(set(dtypes)) != len(dtypes):
        raise UserError(f"--dtype {args.dtype}: a dtype is named twice: name each once")
    for name in (s for s in args.schedules.split(",") if s):
        canonical_name(name)  # unknown names: one line listing the known ones


def _check_profile(profile: Profile, path: Path, job: Job, flag: str) -> Profile:
    """The profile has the job's dtypes; a microbatch size it did not measure is predicted from
    its per-unit fits (``Profile.with_sizes``)."""
    have = list(dict.fromkeys(e.dtype for e in profile.entries))
    missing = [d for d in job.dtypes if d not in have]
    if missing:
        raise UserError(
            f"{flag} {','.join(missing)}: the profile {path} has {', '.join(have)} only: plan with "
            f"--dtype {have[0]}, or profile again with --dtypes {','.join(have + missing)}"
        )
    if job.microbatch_size is not None:
        for d in job.dtypes:
            profile = profile.with_sizes(d, [job.microbatch_size])
    return profile


def _check_microbatch_count(profile: Profile, cluster: Cluster, job: Job) -> None:
    """Refuse a job whose every way of cutting the batch makes more than MAX_MICROBATCHES
    microbatches per replica (the search leaves such candidates out)."""
    sizes = [job.microbatch_size] if job.microbatch_size else [e.microbatch_size for e in profile.entries]
    fewest = job.global_batch / (cluster.devices * max(sizes))
    if fewest > MAX_MICROBATCHES:
        raise UserError(
            f"--global-batch {job.global_batch} on {cluster.devices} devices in microbatches of at most {max(sizes)} "
            f"makes at least {fewest:.0f} microbatches per replica, more than the {MAX_MICROBATCHES} pipeplan plans: "
            f"lower --global-batch, or raise --devices or the microbatch size (--microbatch-size)"
        )


def _fitted_note(plan: Plan) -> Plan:
    fitted = plan.profile.measurement.get("fitted", []) if plan.profile else []
    used = [f"{s.dtype}/mb{plan.microbatch_size}" for s in plan.stages]
    if not any(u in fitted for u in used):
        return plan
    measured = sorted({e.microbatch_size for e in plan.profile.entries} - {plan.microbatch_size})
    note = (
        f"fitted: microbatch size {plan.microbatch_size} was not measured; its costs are predicted from the "
        f"profile's per-unit fits over sizes {', '.join(map(str, measured))}"
    )
    return replace(plan, notes=(*plan.notes, note))


def _job_from_flags(args: argparse.Namespace, profile: Profile) -> Job:
    dtypes = tuple(d for d in (args.dtype or "").split(",") if d) or tuple(
        dict.fromkeys(e.dtype for e in profile.entries)
    )
    for d in dtypes:
        if d not in DTYPE_TABLE:
            raise UserError(f"--dtype {d}: choose from {', '.join(DTYPE_TABLE)}")
    objective = args.objective or ("throughput" if args.forward_only else "step")
    if objective != "step" and not args.forward_only:
        raise UserError(
            f"--objective {objective} ranks serving plans: add --forward-only, or drop it to minimize the training step"
        )
    job = Job(
        global_batch=args.global_batch,
        microbatch_size=args.microbatch_size,
        microbatches=args.microbatches,
        schedules=tuple(s for s in args.schedules.split(",") if s),
        pp=args.pp,
        dtypes=dtypes,
        virtual=args.virtual,
        recompute=_recompute_modes(args.recompute, profile),
        tp=args.tp,
        dp_modes=tuple(m for m in args.dp_mode.split(",") if m),
        sequence_parallel=args.sequence_parallel,
        optimizer_bytes_per_param=args.optimizer_bytes,
        forward_only=args.forward_only,
        objective=objective,
    )
    job.check("flags")
    return job


def _with_placement(args: argparse.Namespace, job: Job, profile: Profile, cluster: Cluster) -> tuple[Job, list | None]:
    if not args.placement:
        return job, None
    placement = parse_placement(args.placement)
    pp = max(placement) + 1
    if args.pp and args.pp != (pp,):
        raise UserError(
            f"--placement {args.placement} uses {pp} ranks but --pp is {','.join(map(str, args.pp))}: "
            f"leave out --pp, or place stages on ranks 0..{args.pp[0] - 1}"
        )
    if len(placement) > profile.num_units:
        raise UserError(
            f"--placement {args.placement} makes {len(placement)} stages but the model has "
            f"{profile.num_units} units: give at most {profile.num_units} stages"
        )
    if cluster.devices % pp:
        raise UserError(
            f"--placement {args.placement} uses {pp} ranks but --devices {cluster.devices} is not a "
            f"multiple of {pp}: use --devices {pp}"
        )
    return replace(job, schedules=("Custom",), pp=(pp,), placements=(tuple(placement),)), placement


def _run_plan(args: argparse.Namespace) -> int:
    _check_flags(args)
    profile_path = profile_file(args.profile)
    cluster_path = Path(args.cluster) if args.cluster and args.cluster not in PRESET_CLUSTERS else None
    inputs = [profile_path, cluster_path, args.job and Path(args.job)]
    check_outputs(inputs, [("-o", args.output), ("-o (its schedule CSV)", args.output.with_suffix(".csv"))])
    bar = progress_bar(3, "planning", enabled=not args.json)
    bar.set_postfix_str("reading inputs")
    profile = load_profile(profile_path)
    cluster = _cluster_from(args)
    job = load_job(args.job) if args.job else _job_from_flags(args, profile)
    profile = _check_profile(profile, profile_path, job, f"--job {args.job}: dtypes" if args.job else "--dtype")
    if args.pp and max(args.pp) > cluster.devices:
        raise UserError(f"--pp {max(args.pp)}: more than the cluster's {cluster.devices} devices: lower --pp")
    _check_microbatch_count(profile, cluster, job)
    job, placement = _with_placement(args, job, profile, cluster)
    bar.update()
    bar.set_postfix_str("searching" if not args.split else "scoring the split")
    if args.split:
        split = "even" if args.split == "even" else list(_ints(args.split))
        bounded("--split", split if split != "even" else None, 1, profile.num_units - 1, " (a unit index)")
        plans = [
            score_split(
                profile,
                cluster,
                job,
                split,
                job.schedules[0],
                args.microbatches[0] if args.microbatches else None,
                args.pp[0] if args.pp else None,
                profile_path=str(profile_path),
                virtual=args.virtual[0] if args.virtual else 1,
                placement=placement,
            )
        ]
    else:
        plans, stats = search(
            profile,
            cluster,
            job,
            top=args.top,
            profile_path=str(profile_path),
            time_limit=args.time_limit,
            solver=args.solver,
            progress=bar.set_postfix_str,
        )
    plans = [_fitted_note(p) for p in plans]
    bar.update()
    bar.set_postfix_str("writing")
    written = write_plan_files(plans[0], args.output)
    bar.update()
    bar.close()
    if args.json:
        print(json.dumps(plans[0].to_dict()))
        return 0
    print(format_plans(plans))
    if args.explain:
        print("\n".join(explain(plans)))
    for note in plans[0].notes:
        if note.startswith("fitted:"):
            print(f"note: {note}")
    print(f"wrote {written[0]} and {written[1]}")
    print("\n".join(run_it_lines(plans[0], args.output)))
    return 0


def _add_simulate(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", nargs="?", help="a Plan JSON file (or use the what-if flags below)")
    simcli.add_whatif_arguments(p)
    simcli.add_output_arguments(p)


def _run_simulate(args: argparse.Namespace) -> int:
    if args.plan:
        if args.schedule or args.table:
            raise UserError("give either a PLAN file or --schedule/--table, not both")
        simcli.check_output_flags(args, [Path(args.plan)])
        plan = load_plan(args.plan)
        simcli.check_output_flags(args, [plan.profile_file(Path(args.plan).parent)])  # an input too
        return simcli.report(simulate(plan), args, f"simulated {Path(args.plan).name}")
    simcli.check_output_flags(args, [args.table])
    return simcli.report(simulate(simcli.whatif_input(args)), args, "what-if", unit="")


PLAN = Command(
    "plan", "Choose split, schedule and microbatches with a MILP; every candidate simulated.", _add_plan, _run_plan
)
SIMULATE = Command(
    "simulate", "Simulate a Plan (or a schedule with uniform costs, or any CSV table).", _add_simulate, _run_simulate
)
