"""Plans for validation runs (tests and benchmarks): a given schedule, pipeline degree,
stages per rank and microbatch count, with the units cut so that stages take about equal
profiled time. The planner's search chooses splits for users; this only places and
predicts one, the same way (the simulator's prediction is stored in the plan).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from planner.cluster import Cluster, Job
from planner.plan import Plan, Prediction, StagePlan
from profiles.contract import sha256_of
from profiles.types import Profile
from simulator.actions import forward_table, stage_ranks
from simulator.engine import simulate
from simulator.placement import most_stages_per_rank, placement_table
from simulator.schedules import canonical_name, make_schedule

__all__ = ["balanced_bounds", "validation_plan"]


def balanced_bounds(
    profile: Profile,
    stages: int,
    dtype: str = "fp32",
    microbatch_size: int = 1,
) -> list[tuple[int, int]]:
    """Cut the units into ``stages`` runs of about equal F + B time (greedy on the prefix sums)."""
    units = profile.entry(dtype, microbatch_size).units
    if stages > len(units):
        raise ValueError(f"{stages} stages but the model has only {len(units)} units")
    cost = [u.forward_s + u.backward_s for u in units]
    total = sum(cost)
    cuts, acc = [], 0.0
    for i, c in enumerate(cost[:-1]):
        acc += c
        k = len(cuts) + 1
        left = len(units) - (i + 1)  # units after this one
        if k < stages and (acc >= total * k / stages or left == stages - k):
            cuts.append(i + 1)
    edges = [0, *cuts, len(units)]
    return list(zip(edges[:-1], edges[1:]))


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
    recompute: bool = False,
    forward_only: bool = False,
    placement: list[int] | None = None,
) -> Plan:
    """One plan, simulated, ready to save and run (``dp`` 1). ``Custom`` takes ``placement``
    (stage -> rank; ``pp`` and ``virtual`` then follow from it) and its unit-order table."""
    name = canonical_name(schedule)
    if name == "Custom":
        if placement is None:
            raise ValueError("schedule Custom needs placement=[rank of each stage]")
        table = placement_table(placement, microbatches)
        pp, virtual = max(placement) + 1, most_stages_per_rank(placement)
    else:
        table = make_schedule(name, pp, microbatches, virtual)
    owner = stage_ranks(table)
    if forward_only:
        table = forward_table(table)
    bounds = bounds or balanced_bounds(profile, len(owner), dtype, microbatch_size)
    stages = tuple(StagePlan(i, f, e, owner[i], dtype, recompute) for i, (f, e) in enumerate(bounds))
    job = Job(
        global_batch=microbatches * microbatch_size,
        microbatch_size=microbatch_size,
        microbatches=(microbatches,),
        schedules=(name,),
        pp=(pp,),
        dtypes=(dtype,),
        forward_only=forward_only,
    )
    plan = Plan(
        str(profile_path),
        sha256_of(profile_path),
        profile.model_name,
        pp,
        1,
        virtual,
        microbatches,
        microbatch_size,
        stages,
        name,
        table,
        replace(cluster, devices=pp),
        job,
        profile=profile,
    )
    tl = simulate(plan)
    return replace(
        plan,
        predicted=Prediction(
            tl.step_s,
            tuple(r.bubble_fraction for r in tl.ranks),
            tuple(r.peak_bytes for r in tl.ranks),
            plan.job.global_batch / tl.step_s if tl.step_s else 0.0,
        ),
    )
