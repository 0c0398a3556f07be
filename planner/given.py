"""A split the user gives (``--split``, ``--placement``), simulated and compared with the baselines."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from profiles.contract import UserError
from profiles.types import Profile
from simulator.costs import DPMode, Layout, Option, Recompute
from simulator.placement import check_placement, most_stages_per_rank
from simulator.schedules import CUSTOM, ScheduleSpec, schedule_spec

from .baselines import compare
from .batching import entry_sizes, microbatching
from .candidate import Candidate
from .cluster import Cluster, Job
from .infeasible import InfeasibleError
from .memory import fitting_options
from .plan import Plan
from .pricing import cost_model, job_options, job_sequence_parallel, job_tp_degrees
from .scoring import Context, build_plan
from .splits import even_split

__all__ = ["score_split"]


def score_split(
    profile: Profile,
    cluster: Cluster,
    job: Job,
    split: list[int] | str,
    schedule: str = "1F1B",
    microbatches: int | None = None,
    *,
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
    spec = CUSTOM if placement else schedule_spec(schedule)
    S, virtual, what = _stages(spec, pp, virtual, placement)
    bounds = _bounds(split, profile.num_units, S, virtual if not placement else None, what)
    pp = max(placement) + 1 if placement else len(bounds) // virtual
    layout = _layout(profile, cluster, job, pp)
    if stage_options is not None and len(stage_options) != len(bounds):
        raise UserError(
            f"--stage-options gives {len(stage_options)} entries but the split has {len(bounds)} stages: "
            f"give one a stage"
        )
    m, mbs = _microbatching(profile, job, layout.dp, microbatches, stage_options)
    placed = tuple(placement) if placement else None
    c = Candidate(pp=pp, layout=layout, m=m, mbs=mbs, spec=spec, virtual=virtual, placement=placed)
    ctx = Context(profile, str(profile_path or ""), cluster, job)
    ctx.table(c)  # a schedule that refuses these microbatches says so before anything is priced
    allowed = job_options(job)
    costs = cost_model(
        profile, cluster, job, mbs, layout=layout, options=list(dict.fromkeys(allowed + (stage_options or [])))
    )
    memory = ctx.model(c).memory
    options = (
        stage_options
        or fitting_options(
            costs, bounds, memory, cluster.memory_bytes, job.forward_only, allowed=[allowed] * len(bounds)
        )
        or [allowed[0]] * len(bounds)
    )  # nothing fits: priced as the job's first option, refused below
    p = build_plan(ctx, c, bounds, options, solver={"status": "given", "solver": "none"}, costs=costs)
    _refuse_overflow(p)
    return replace(p, baselines=compare(p))


def _stages(spec: ScheduleSpec, pp: int | None, virtual: int, placement: list[int] | None):
    """(stages, stages per rank, what makes them, in the user's words); stages None when only the
    split says (no ``pp``)."""
    if placement:
        check_placement(placement)
        if pp and max(placement) + 1 != pp:
            raise UserError(
                f"--placement {','.join(map(str, placement))} uses {max(placement) + 1} ranks but --pp "
                f"is {pp}: leave out --pp, or place stages on ranks 0..{pp - 1}"
            )
        return len(placement), most_stages_per_rank(placement), f"--placement {','.join(map(str, placement))}"
    if virtual == 1 and spec.min_virtual > 1:
        virtual = spec.min_virtual
    return (spec.num_stages(pp, virtual) if pp else None), virtual, f"--pp {pp} with {spec.name}"


def _bounds(split: list[int] | str, U: int, S: int | None, virtual: int | None, what: str) -> list[tuple[int, int]]:
    """The stages' unit ranges: ``"even"`` over ``S`` stages, or cut before each unit of ``split``
    (their count a multiple of ``virtual`` stages per rank, unless None: a placement's)."""
    if split == "even":
        if not S:
            raise UserError("--split even needs --pp (or --placement)")
        if S > U:
            raise UserError(f"{what} makes {S} stages but the model has {U} units: use fewer stages")
        return even_split(U, S)
    cuts = list(split)
    if cuts != sorted(set(cuts)) or not all(0 < c < U for c in cuts):
        raise UserError(f"--split {','.join(map(str, cuts))}: give increasing unit indices between 1 and {U - 1}")
    if virtual and (len(cuts) + 1) % virtual:
        raise UserError(f"--split has {len(cuts) + 1} stages, not a multiple of {virtual} stages per rank")
    if S and S != len(cuts) + 1:
        raise UserError(f"--split has {len(cuts) + 1} stages but {what} makes {S}: give {S - 1} cuts")
    edges = [0, *cuts, U]
    return list(zip(edges[:-1], edges[1:]))


def _layout(profile: Profile, cluster: Cluster, job: Job, pp: int) -> Layout:
    """The job's first tp degree, dp mode and sequence-parallel choice on ``pp`` pipeline ranks
    (the degrees and choices the profile's model runs)."""
    tp = job_tp_degrees(job, profile, cluster.devices)[0] if job.tp else 1
    if cluster.devices % (pp * tp):
        raise UserError(f"--devices {cluster.devices} is not a multiple of {pp} pipeline ranks x tp {tp}")
    dp = cluster.devices // (pp * tp)
    return job.layout(
        tp=tp,
        dp=dp,
        dp_mode=DPMode(job.dp_modes[0]) if dp > 1 else DPMode.DDP,
        sequence_parallel=job_sequence_parallel(job, tp, profile)[0],
    ).on_pipeline(pp)


def _microbatching(
    profile: Profile, job: Job, dp: int, microbatches: int | None, stage_options: list[Option] | None
) -> tuple[int, int]:
    """(microbatches, microbatch size): the first the job allows on ``dp`` replicas, of the count
    asked for (if any), at a size profiled in the dtypes the stages use."""
    pairs = microbatching(job, dp)
    if microbatches:
        pairs = [(mm, b) for mm, b in pairs if mm == microbatches]
    dtypes = {o.dtype for o in stage_options} if stage_options else set(job.dtypes)
    pairs = [(mm, b) for mm, b in pairs if b in entry_sizes(profile, tuple(dtypes))]
    if not pairs:
        raise UserError(
            f"no profiled microbatch size gives {microbatches or 'any'} microbatches for global batch "
            f"{job.global_batch} on {dp} replicas: adjust --microbatches or --global-batch"
        )
    return pairs[0]


def _refuse_overflow(p: Plan) -> None:
    """An InfeasibleError naming the stages of the rank most over the device memory, if any."""
    cap = p.cluster.memory_bytes
    over = [(r, b) for r, b in enumerate(p.predicted.peak_bytes) if b > cap]
    if not over:
        return
    r, need = max(over, key=lambda x: x[1])
    stages = [s for s in p.stages if s.rank == r]
    what = ", ".join(f"stage {s.index} (units {s.first}..{s.end - 1})" for s in stages)
    raise InfeasibleError(
        f"{what} on rank {r} needs {need / 2**30:.2f} GiB but devices have "
        f"{cap / 2**30:.2f} GiB: over by "
        f"{(need - cap) / 2**30:.2f} GiB; move units off it, raise "
        f"--device-memory or lower the microbatch size"
        + ("" if all(st.recompute is Recompute.FULL for st in stages) else ", or allow --recompute full")
    )
