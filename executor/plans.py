"""Plans for validation runs (tests and benchmarks): a given schedule, pipeline degree,
stages per rank and microbatch count, with the units cut so that stages take about equal
profiled time (the planner's min-max splitter). The planner's search chooses splits for
users; this only places and predicts one with the planner's own ``build_plan`` (its table
the planner's ``Schedules.table``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from planner.candidate import Candidate
from planner.cluster import Cluster, Job
from planner.plan import Plan
from planner.pricing import cost_model
from planner.scoring import Context, build_plan
from planner.splits import min_max_split
from profiles.types import Profile
from simulator.actions import stage_ranks
from simulator.costs import Layout, Option, Recompute
from simulator.placement import most_stages_per_rank
from simulator.schedules import schedule_spec

__all__ = ["validation_plan"]


def validation_plan(
    profile: Profile,
    profile_path: str | Path,
    cluster: Cluster,
    schedule: str,
    pp: int,
    microbatches: int,
    *,
    virtual: int = 1,
    microbatch_size: int = 1,
    dtype: str = "fp32",
    bounds: list[tuple[int, int]] | None = None,
    recompute: bool | Recompute = False,
    forward_only: bool = False,
    placement: list[int] | None = None,
    layout: Layout | None = None,
) -> Plan:
    """One plan, simulated, ready to save and run (``dp`` 1 and ``tp`` 1 unless ``layout`` gives
    them, with its dp mode and sequence parallelism). ``Custom`` takes ``placement`` (stage ->
    rank; ``pp`` and ``virtual`` then follow from it); its table is ordered by the split's costs,
    as the planner orders it."""
    spec = schedule_spec(schedule)
    placed = None
    if spec.custom:
        if placement is None:
            raise ValueError("schedule Custom needs placement=[rank of each stage]")
        placed, pp, virtual = tuple(placement), max(placement) + 1, most_stages_per_rank(placement)
    layout = (layout or Layout()).on_pipeline(pp)  # as Plan.parallelism has it
    c = Candidate(
        pp=pp, layout=layout, m=microbatches, mbs=microbatch_size, spec=spec, virtual=virtual, placement=placed
    )
    job = _job(c, dtype, forward_only)
    ctx = Context(profile, str(profile_path), replace(cluster, devices=pp * layout.stride), job)
    stages = len(stage_ranks(ctx.table(c)))
    option = Option(dtype, Recompute.FULL if recompute is True else Recompute(recompute or "none"))
    if bounds is None:
        work = [
            r.forward_s + r.backward_s
            for r in cost_model(profile, cluster, job, microbatch_size, layout=layout).records[Option(dtype)]
        ]
        bounds = min_max_split(work, stages)
    return build_plan(ctx, c, bounds, [option] * len(bounds))


def _job(c: Candidate, dtype: str, forward_only: bool) -> Job:
    """The job that runs candidate ``c`` alone, in ``dtype``."""
    layout = c.layout
    return Job(
        global_batch=c.m * c.mbs * layout.dp,
        microbatch_size=c.mbs,
        microbatches=(c.m,),
        schedules=(c.schedule,),
        pp=(c.pp,),
        dtypes=(dtype,),
        forward_only=forward_only,
        tp=(layout.tp,),
        dp_modes=(layout.dp_mode.value,),
        sequence_parallel="on" if layout.sequence_parallel else "off",
    )
