"""A split the user gives (``--split``, ``--placement``), simulated and compared with the baselines."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from profiles.contract import UserError
from profiles.types import Profile
from simulator.costs import DPMode, Layout, Option, Recompute
from simulator.placement import check_placement, most_stages_per_rank
from simulator.schedules import CUSTOM, schedule_spec

from .baselines import compare
from .batching import entry_sizes, microbatching
from .cluster import Cluster, Job
from .infeasible import InfeasibleError
from .memory import fitting_options
from .plan import Plan
from .pricing import cost_model, job_options, job_sequence_parallel, job_tp_degrees
from .scoring import Schedules, build_plan
from .splits import even_split

__all__ = ["score_split"]


def score_split(
    profile: Profile,
    cluster: Cluster,
    job: Job,
    split: list[int] | str,
    schedule: str = "1F1B",
    microbatches: int | None = None,
    pp: int | None = None,
    profile_path: str | Path | None = None,
    virtual: int = 1,
    placement: list[int] | None = None,
    stage_options: list[Option] | None = None,
) -> Plan:
    """Simulate a split the user gives: first unit of stages 1..S-1, or ``"even"`` (with ``pp``).
    With ``placement`` (stage -> rank) the schedule is ``Custom``, its table ``placement_table``.
    The job's first tp degree, dp mode and sequence-parallel choice make the layout; each stage
    runs with ``stage_options`` (one a stage), else the fastest of the job's dtypes x recompute
    modes that fits it (``memory.fitting_options``)."""
    profile_path = str(profile_path or "")
    U = profile.num_units
    spec = CUSTOM if placement else schedule_spec(schedule)
    if placement:
        check_placement(placement)
        if pp and max(placement) + 1 != pp:
            raise UserError(
                f"--placement {','.join(map(str, placement))} uses {max(placement) + 1} ranks but --pp "
                f"is {pp}: leave out --pp, or place stages on ranks 0..{pp - 1}"
            )
        S, virtual = len(placement), most_stages_per_rank(placement)
        what = f"--placement {','.join(map(str, placement))}"
    else:
        if virtual == 1 and spec.min_virtual > 1:
            virtual = spec.min_virtual
        S = spec.num_stages(pp, virtual) if pp else None
        what = f"--pp {pp} with {schedule}"
    if split == "even":
        if not S:
            raise UserError("--split even needs --pp (or --placement)")
        if S > U:
            raise UserError(f"{what} makes {S} stages but the model has {U} units: use fewer stages")
        bounds = even_split(U, S)
    else:
        cuts = list(split)
        if cuts != sorted(set(cuts)) or not all(0 < c < U for c in cuts):
            raise UserError(f"--split {','.join(map(str, cuts))}: give increasing unit indices between 1 and {U - 1}")
        if not placement and (len(cuts) + 1) % virtual:
            raise UserError(f"--split has {len(cuts) + 1} stages, not a multiple of {virtual} stages per rank")
        if S and S != len(cuts) + 1:
            raise UserError(f"--split has {len(cuts) + 1} stages but {what} makes {S}: give {S - 1} cuts")
        edges = [0, *cuts, U]
        bounds = list(zip(edges[:-1], edges[1:]))
    pp = max(placement) + 1 if placement else len(bounds) // virtual
    tp = job_tp_degrees(job, profile, cluster.devices)[0] if job.tp else 1
    if cluster.devices % (pp * tp):
        raise UserError(f"--devices {cluster.devices} is not a multiple of {pp} pipeline ranks x tp {tp}")
    dp = cluster.devices // (pp * tp)
    layout = Layout(
        tp=tp,
        dp=dp,
        dp_mode=DPMode(job.dp_modes[0]) if dp > 1 else DPMode.DDP,
        sequence_parallel=job_sequence_parallel(job, tp, profile)[0],
    ).on_pipeline(pp)
    pairs = microbatching(job, dp)
    if microbatches:
        pairs = [(mm, b) for mm, b in pairs if mm == microbatches]
    if stage_options is not None and len(stage_options) != len(bounds):
        raise UserError(
            f"--stage-options gives {len(stage_options)} entries but the split has {len(bounds)} stages: "
            f"give one a stage"
        )
    dtypes = {o.dtype for o in stage_options} if stage_options else set(job.dtypes)
    pairs = [(mm, b) for mm, b in pairs if b in entry_sizes(profile, tuple(dtypes))]
    if not pairs:
        raise UserError(
            f"no profiled microbatch size gives {microbatches or 'any'} microbatches for global batch "
            f"{job.global_batch} on {dp} replicas: adjust --microbatches or --global-batch"
        )
    m, mbs = pairs[0]
    schedules = Schedules(job)
    placed = tuple(placement) if placement else None
    table = schedules.table(spec.name, pp, m, virtual, placed)
    allowed = job_options(job)
    costs = cost_model(
        profile, cluster, job, mbs, layout=layout, options=list(dict.fromkeys(allowed + (stage_options or [])))
    )
    options = (
        stage_options
        or fitting_options(
            costs,
            bounds,
            schedules.model(spec.name, pp, m, virtual, placed).memory,
            cluster.memory_bytes,
            job.forward_only,
            allowed=[allowed] * len(bounds),
        )
        or [allowed[0]] * len(bounds)
    )  # nothing fits: priced as the job's first option, refused below
    p = build_plan(
        profile,
        profile_path,
        cluster,
        job,
        bounds,
        spec.name,
        pp,
        dp,
        m,
        mbs,
        options,
        virtual,
        table,
        {"status": "given", "solver": "none"},
        placed,
        costs,
    )
    over = [(r, b) for r, b in enumerate(p.predicted.peak_bytes) if b > cluster.memory_bytes]
    if over:
        r, need = max(over, key=lambda x: x[1])
        stages = [s for s in p.stages if s.rank == r]
        what = ", ".join(f"stage {s.index} (units {s.first}..{s.end - 1})" for s in stages)
        raise InfeasibleError(
            f"{what} on rank {r} needs {need / 2**30:.2f} GiB but devices have "
            f"{cluster.memory_bytes / 2**30:.2f} GiB: over by "
            f"{(need - cluster.memory_bytes) / 2**30:.2f} GiB; move units off it, raise "
            f"--device-memory or lower the microbatch size"
            + ("" if all(st.recompute is Recompute.FULL for st in stages) else ", or allow --recompute full")
        )
    return replace(p, baselines=compare(p))
