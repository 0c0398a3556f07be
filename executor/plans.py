"""Plans for validation runs (tests and benchmarks): a given schedule, pipeline degree,
stages per rank and microbatch count, with the units cut so that stages take about equal
profiled time (the planner's min-max splitter). The planner's search chooses splits for
users; this only places and predicts one with the planner's own ``build_plan``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from planner.cluster import Cluster, Job
from planner.plan import Plan
from planner.pricing import cost_model
from planner.scoring import build_plan
from planner.splits import min_max_split
from profiles.types import Profile
from simulator.actions import forward_table, stage_ranks
from simulator.costs import Layout, Option, Recompute
from simulator.placement import most_stages_per_rank, placement_table
from simulator.schedules import make_schedule, schedule_spec

__all__ = ["validation_plan"]


def validation_plan(
    profile: Profile,
    profile_path: str | Path,
    cluster: Cluster,
    schedule: str,
    pp: int,
    microbatches: int,
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
    name = spec.name
    if spec.custom:
        if placement is None:
            raise ValueError("schedule Custom needs placement=[rank of each stage]")
        table = placement_table(placement, microbatches)
        pp, virtual = max(placement) + 1, most_stages_per_rank(placement)
    else:
        table = make_schedule(name, pp, microbatches, virtual)
    layout = (layout or Layout()).on_pipeline(pp)  # as Plan.parallelism has it
    job = Job(
        global_batch=microbatches * microbatch_size * layout.dp,
        microbatch_size=microbatch_size,
        microbatches=(microbatches,),
        schedules=(name,),
        pp=(pp,),
        dtypes=(dtype,),
        forward_only=forward_only,
        tp=(layout.tp,),
        dp_modes=(layout.dp_mode.value,),
        sequence_parallel="on" if layout.sequence_parallel else "off",
    )
    if forward_only:
        table = forward_table(table)
    option = Option(dtype, Recompute.FULL if recompute is True else Recompute(recompute or "none"))
    if bounds is None:
        work = [
            r.forward_s + r.backward_s
            for r in cost_model(profile, cluster, job, microbatch_size, layout=layout).records[Option(dtype)]
        ]
        bounds = min_max_split(work, len(stage_ranks(table)))
    return build_plan(
        profile,
        str(profile_path),
        replace(cluster, devices=pp * layout.stride),
        job,
        bounds,
        name,
        pp,
        layout.dp,
        microbatches,
        microbatch_size,
        [option] * len(bounds),
        virtual,
        table,
        placement=tuple(placement) if spec.custom else None,
        layout=layout,
    )
