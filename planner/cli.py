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
from simulator.costs import Option, Recompute
from simulator.engine import simulate
from simulator.placement import parse_placement
from simulator.schedules import canonical_name
from simulator.tensor_parallel import recompute_modes

from .batching import fewest_microbatches
from .cluster import (
    ALL_SCHEDULES,
    MAX_DEVICES,
    MAX_MICROBATCHES,
    PRESET_CLUSTERS,
    Cluster,
    Job,
    cluster_for_device,
    load_cluster,
    load_job,
    parse_bytes,
)
from .config import add_flags, check_flag_bounds, comma_ints, flag_values
from .explain import explain
from .export import run_it_lines
from .figures import FLOP_CONVENTION, duration, figures, oom_text, versus
from .given import score_split
from .plan import Plan, distinct_plans, load_plan
from .search import search

__all__ = ["PLAN", "SIMULATE", "format_plans", "write_plan_files"]

MAX_TOP = 100  #: the most plans ``--top`` lists


def _add_plan(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "profile",
        help="a Profile JSON file (from pipeplan profile), or a stored profile's model name "
        "(profiles/<device>/<name>.json, e.g. gpt2-demo)",
    )
    p.add_argument("--devices", type=int, help="devices in all (default: the cluster's)")
    p.add_argument("--device-memory", help="usable memory per device, e.g. 80GiB (default: the cluster's)")
    p.add_argument(
        "--cluster",
        help=f"cluster spec: a JSON file (pipeplan calibrate), a YAML file with the same "
        f"fields (.yaml/.yml), or a preset: {', '.join(PRESET_CLUSTERS)} (default: one node of the "
        f"profile's device, e.g. h100 for an h100 profile; cpu-local for a CPU profile)",
    )
    add_flags(p, Job)  # --global-batch .. --objective: the Job fields this command mirrors (planner/cluster.py)
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
        "--stage-options",
        help="with --split: each stage's precision and recompute, one entry a stage, e.g. "
        "bf16:full,bf16:none or full,none (default: per stage the fastest of --dtype x --recompute that fits)",
    )
    p.add_argument(
        "--placement",
        help="score this stage -> rank map as a Custom schedule, e.g. 0,1,0 (rank 0 "
        "holds stages 0 and 2); with --split that split, else the MILP's",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="wall-clock limit per MILP, seconds (default: none; the search is bounded by solver nodes and "
        "simulations, so the same command gives the same plan on any machine)",
    )
    p.add_argument("--explain", action="store_true", help="say why the winner wins")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("plan.json"),
        help="write the best Plan here (default plan.json) and its schedule CSV beside it",
    )
    p.add_argument("--json", action="store_true", help="print the best Plan JSON on stdout")


def _cluster_from(args: argparse.Namespace, profile: Profile) -> Cluster:
    """``--cluster``; without it, a node of the profile's device (``cluster_for_device``), noted in
    its name so the plan says which cluster it assumed."""
    if args.cluster:
        cluster = load_cluster(args.cluster)
    else:
        cluster = cluster_for_device(profile.device_kind, profile.device_name)
    if args.devices is not None:
        cluster = replace(cluster, devices=args.devices)
    if args.device_memory is not None:
        cluster = replace(cluster, memory_bytes=parse_bytes(args.device_memory))
    return cluster


def format_plans(plans: list[Plan]) -> str:
    """One row per distinct plan (``distinct_plans``): configuration, step, bubbles, memory per
    device, tokens/s, model TFLOP/s per device and MFU (``planner.figures``), layout; then the
    cluster assumed, the FLOP convention, and how each plan compares with each baseline."""
    plans = distinct_plans(plans)
    serving = plans[0].job.forward_only  # then latency and throughput columns too
    extra = f"{'lat ms':>9} {'samples/s':>10} " if serving else ""
    lines = [
        f"{'#':>2} {'schedule':<22} {'pp':>3} {'tp':>3} {'dp':>4} {'mode':>5} {'v':>2} {'m':>4} {'mbs':>4} "
        f"{'step':>10} {extra}{'bubble':>7} {'GiB/dev':>8} {'tokens/s':>11} {'tok/s/dev':>10} "
        f"{'TFLOP/s/dev':>11} {'MFU':>6}  layout"
    ]
    for i, p in enumerate(plans, 1):
        pr, fig, lay = p.predicted, figures(p), p.layout
        bubble = sum(pr.bubble_fraction) / len(pr.bubble_fraction)
        lines.append(
            f"{i:>2} {p.schedule_label:<22} {p.pp:>3} {lay.tp:>3} {lay.dp:>4} {lay.dp_mode.value:>5} {p.virtual:>2} "
            f"{p.microbatches:>4} {p.microbatch_size:>4} {duration(pr.step_s):>10} "
            + (f"{pr.latency_s * 1e3:9.2f} {pr.throughput:10.1f} " if serving else "")
            + f"{bubble:7.1%} {fig.peak_bytes_per_device / 2**30:8.2f} {fig.tokens_per_s:11,.0f} "
            f"{fig.tokens_per_s_per_device:10,.1f} {fig.tflops_per_device:11.1f} "
            f"{'-' if fig.mfu is None else f'{fig.mfu:.1%}':>6}  {p.pipeline_layout()}"
        )
    c = plans[0].cluster
    lines.append(
        f"cluster: {c.name}, {c.devices} x {c.device} ({c.devices_per_node} per node, "
        f"{c.memory_bytes / 2**30:g} GiB each)"
    )
    peak = figures(plans[0]).peak_tflops
    lines.append(
        f"TFLOP/s: {FLOP_CONVENTION}; MFU against "
        + (f"the device's peak, {peak:g} TFLOP/s" if peak else "the device's peak (unknown for a measured profile)")
    )
    return "\n".join(lines + _comparisons(plans))


def _comparisons(plans: list[Plan]) -> list[str]:
    """Rows of baselines, a column per plan: ``1.30× faster than``, ``0.76× (slower)``, ``OOM (214 GiB)``;
    under each, the recipe and the configuration it was priced at (the first plan's)."""
    names = list(dict.fromkeys(b["name"] for p in plans for b in p.baselines))
    if not names:
        return []
    rows = [{b["name"]: b for b in p.baselines} for p in plans]
    width, first_col = 20, max(len(n) for n in names) + 2
    out = [
        "compared with what people run (the hand splits at each plan's own layout):",
        (f"  {'':<{first_col}}" + "".join(f"{f'plan {i}':<{width}}" for i in range(1, len(plans) + 1))).rstrip(),
    ]
    for name in names:
        cells = "".join(f"{versus(r[name]) if name in r else '-':<{width}}" for r in rows)
        out.append(f"  {name:<{first_col}}{cells}".rstrip())
        first = next(r[name] for r in rows if name in r)
        step = duration(first["step_s"]) if first.get("fits_memory", True) else oom_text(first["peak_bytes"])
        out.append(f"    {first.get('recipe', name)}: {first.get('config', '?')}: {step}")
    return out


def write_plan_files(plan: Plan, path: Path) -> list[Path]:
    """The Plan JSON and its torch-loadable schedule CSV (``<plan>.csv``), written as a pair:
    both or neither (``profiles.contract.write_files``)."""
    path = Path(path)
    return write_files({path: json_text(plan.stored_dict(path)), path.with_suffix(".csv"): csv_text(plan.table)})


def _check_flags(args: argparse.Namespace) -> None:
    """Bounds of the plan flags, before anything is read or built: each Job flag's own range (its
    declaration's), then the ranges that depend on other flags."""
    bounded("--devices", args.devices, 1, MAX_DEVICES)
    check_flag_bounds(Job, args)
    bounded("--microbatch-size", args.microbatch_size, 1, args.global_batch, " (at most --global-batch)")
    bounded("--microbatches", args.microbatches, 1, min(args.global_batch, MAX_MICROBATCHES), " (per replica)")
    bounded("--pp", args.pp, 1, args.devices or MAX_DEVICES, " (at most --devices)")
    bounded("--top", args.top, 1, MAX_TOP)
    bounded("--time-limit", args.time_limit, 0.01, 86400.0, " seconds")
    if args.stage_options and not args.split:
        raise UserError("--stage-options sets each stage of a given split: add --split (e.g. --split even --pp 4)")
    dtypes = args.dtypes or ()
    if len(set(dtypes)) != len(dtypes):
        raise UserError(f"--dtype {','.join(dtypes)}: a dtype is named twice: name each once")
    for name in args.schedules:
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
    fewest = fewest_microbatches(job.global_batch, cluster.devices, sizes)
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


def _cluster_note(plan: Plan, args: argparse.Namespace) -> Plan:
    """Without ``--cluster`` the plan says which cluster it assumed, and why."""
    if args.cluster:
        return plan
    prof = plan.profile
    note = (
        f"cluster: {plan.cluster.name} assumed from the profile's device ({prof.device_name}); "
        f"plan for another with --cluster"
    )
    return replace(plan, notes=(*plan.notes, note))


def _job_from_flags(args: argparse.Namespace, profile: Profile) -> Job:
    """The Job of the flags; where a flag was left out the command decides: every dtype of the
    profile, every recompute mode valid for the model, throughput for a forward-only job."""
    values = flag_values(Job, args)
    values["dtypes"] = args.dtypes or tuple(dict.fromkeys(e.dtype for e in profile.entries))
    if args.recompute is None:  # selective needs a transformer's shape in the model's config
        values["recompute"] = recompute_modes(profile.model_config)
    values["objective"] = args.objective or ("throughput" if args.forward_only else "step")
    job = Job(**values)
    job.check(None)
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


def _stage_options(text: str, job: Job) -> list[Option]:
    """``--stage-options``: one ``DTYPE:RECOMPUTE``, ``DTYPE`` or ``RECOMPUTE`` a stage (the other
    from the job's first choice)."""
    out = []
    for i, entry in enumerate(x.strip() for x in text.split(",")):
        dtype, recompute = job.dtypes[0], job.recompute[0]
        for part in (p.strip().lower() for p in entry.split(":")):
            if part in DTYPE_TABLE:
                dtype = part
            elif part in {r.value for r in Recompute}:
                recompute = part
            else:
                raise UserError(
                    f"--stage-options entry {i} {entry!r}: give DTYPE:RECOMPUTE, e.g. bf16:full "
                    f"(dtypes {', '.join(DTYPE_TABLE)}; recompute {', '.join(r.value for r in Recompute)})"
                )
        out.append(Option(dtype, Recompute(recompute)))
    return out


def _run_plan(args: argparse.Namespace) -> int:
    _check_flags(args)
    profile_path = profile_file(args.profile)
    cluster_path = Path(args.cluster) if args.cluster and args.cluster not in PRESET_CLUSTERS else None
    inputs = [profile_path, cluster_path, args.job and Path(args.job)]
    check_outputs(inputs, [("-o", args.output), ("-o (its schedule CSV)", args.output.with_suffix(".csv"))])
    bar = progress_bar(3, "planning", enabled=not args.json)
    bar.set_postfix_str("reading inputs")
    profile = load_profile(profile_path)
    cluster = _cluster_from(args, profile)
    job = load_job(args.job) if args.job else _job_from_flags(args, profile)
    profile = _check_profile(profile, profile_path, job, f"--job {args.job}: dtypes" if args.job else "--dtype")
    if args.pp and max(args.pp) > cluster.devices:
        raise UserError(f"--pp {max(args.pp)}: more than the cluster's {cluster.devices} devices: lower --pp")
    _check_microbatch_count(profile, cluster, job)
    job, placement = _with_placement(args, job, profile, cluster)
    bar.update()
    bar.set_postfix_str("searching" if not args.split else "scoring the split")
    if args.split:
        split = "even" if args.split == "even" else list(comma_ints(args.split))
        bounded("--split", split if split != "even" else None, 1, profile.num_units - 1, " (a unit index)")
        plans = [
            score_split(
                profile,
                cluster,
                job,
                split,
                # the first schedule asked for; 1F1B when --schedules was left at its default (all)
                job.schedules[0] if args.schedules != ALL_SCHEDULES else "1F1B",
                args.microbatches[0] if args.microbatches else None,
                pp=args.pp[0] if args.pp else None,
                profile_path=str(profile_path),
                virtual=args.virtual[0] if args.virtual else 1,
                placement=placement,
                stage_options=_stage_options(args.stage_options, job) if args.stage_options else None,
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
    plans = [_cluster_note(_fitted_note(p), args) for p in plans]
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
        if note.startswith(("fitted:", "cluster:")):
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
