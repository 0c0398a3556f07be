"""A split made into a simulated Plan, and what the MILP reads per unit.

Shared by the search, its refinement and ``score_split``: the per-unit options
(dtype x recompute) the MILP chooses from, the schedule tables and step models of a
search (built once per (schedule, pp, m, v) and reused by the screen, the MILP and the
refinement), and ``build_plan``, which turns a split into a Plan and simulates it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from profiles.contract import sha256_of
from profiles.types import Profile
from simulator.actions import Table, forward_table, stage_ranks
from simulator.costs import CostModel, Layout, Option
from simulator.engine import SimInput, simulate
from simulator.placement import placement_table
from simulator.schedules import SteadyState, canonical_name, make_schedule, schedule_spec

from .cluster import Cluster, Job
from .memory import memory_pattern
from .milp import StepModel
from .plan import Plan, Prediction, StagePlan

__all__ = ["Schedules", "build_plan", "fits", "objective_s"]


class Schedules:
    """The schedule tables and step models of one job, each built once per (schedule, pp, m, v),
    or for ``Custom``, per (placement, m) (``placement``: stage -> rank; pp and v are then unused).

    Building a table and reading its memory pattern cost more than simulating it on large
    pipelines; the screen, the MILP, the refinement and the infeasibility report all ask
    for the same few. Tables are shared, never edited (a Plan holds its table as given).
    """

    def __init__(self, job: Job):
        self.forward_only = job.forward_only
        self.latency = job.objective == "latency"
        self._tables: dict[tuple, Table] = {}
        self._models: dict[tuple, StepModel] = {}

    def table(self, schedule: str, pp: int, m: int, v: int, placement: tuple[int, ...] | None = None) -> Table:
        key = _key(schedule, pp, m, v, placement)
        if key not in self._tables:
            table = placement_table(list(placement), m) if placement else make_schedule(schedule, pp, m, v)
            if self.forward_only:  # serving runs the forwards only, in order
                table = forward_table(table)
            self._tables[key] = table
        return self._tables[key]

    def model(self, schedule: str, pp: int, m: int, v: int, placement: tuple[int, ...] | None = None) -> StepModel:
        """The MILP's view of the schedule: placement (its table's), memory pattern, step-time model."""
        key = _key(schedule, pp, m, v, placement)
        if key not in self._models:
            spec = schedule_spec(schedule)
            table = self.table(schedule, pp, m, v, placement)
            owner = stage_ranks(table)
            self._models[key] = StepModel(
                m,
                tuple(owner[s] for s in range(len(owner))),
                memory_pattern(table, self.forward_only),
                split_backward=spec.split_backward,
                phased=spec.steady_state is SteadyState.PHASED,
                forward_only=self.forward_only,
                latency=self.latency,
            )
        return self._models[key]


def _key(schedule: str, pp: int, m: int, v: int, placement: tuple[int, ...] | None) -> tuple:
    spec = schedule_spec(schedule)
    name = spec.name
    if spec.custom != (placement is not None):
        raise ValueError(f"{name}: a placement is given with Custom, and only with Custom")
    return (name, tuple(placement), m) if placement is not None else (name, pp, m, v)


def build_plan(
    profile: Profile,
    profile_path: str,
    cluster: Cluster,
    job: Job,
    bounds,
    schedule: str,
    pp: int,
    dp: int,
    m: int,
    mbs: int,
    options: list[Option],
    virtual: int = 1,
    table: Table | None = None,
    solver: dict | None = None,
    placement: tuple[int, ...] | None = None,
    costs: CostModel | None = None,
    layout: Layout | None = None,
) -> Plan:
    """A Plan for this split, simulated (``predicted`` filled); stages go where the table puts them.

    ``costs``: the search's CostModel for this microbatch size and layout (built here when None);
    ``layout``: tp, dp mode and sequence parallelism (default: the costs', else tp 1 and ddp over ``dp``).
    ``Custom`` with its ``placement``: the table is (re)ordered by this split's own
    stage times (``placement_table`` with durations), so a rank holding two stages interleaves
    them as their costs need."""
    if table is None:
        table = Schedules(job).table(schedule, pp, m, virtual, placement)
    layout = layout or (costs.layout if costs is not None else Layout(dp=dp))
    if layout.dp != dp:
        raise ValueError(f"layout {layout} disagrees with dp={dp}")
    owner = stage_ranks(table)
    stages = tuple(
        StagePlan(i, f, e, owner[i], o.dtype, o.recompute) for i, ((f, e), o) in enumerate(zip(bounds, options))
    )
    plan = Plan(
        profile_path=profile_path,
        profile_sha256=_sha(profile_path),
        model_name=profile.model_name,
        pp=pp,
        layout=layout,
        virtual=virtual,
        microbatches=m,
        microbatch_size=mbs,
        stages=stages,
        schedule=canonical_name(schedule),
        table=table,
        cluster=cluster,
        job=job,
        solver=solver or {},
        profile=profile,
    )
    inp = plan.sim_input(costs)
    if placement is not None:  # Custom: order by this split's costs
        ordered = placement_table(list(placement), m, [(c.forward_s, c.backward_s) for c in inp.costs])
        plan = replace(plan, table=forward_table(ordered) if job.forward_only else ordered)
        inp = replace(inp, table=plan.table)
    tl = simulate(inp, detail=False)
    per_sample = job.global_batch / tl.step_s if tl.step_s > 0 else 0.0
    pred = Prediction(
        tl.step_s,
        tuple(r.bubble_fraction for r in tl.ranks),
        tuple(r.peak_bytes for r in tl.ranks),
        throughput=per_sample,
        latency_s=_latency_s(inp, owner),
    )
    return replace(plan, predicted=pred)


def _latency_s(inp: SimInput, rank_of: dict[int, int]) -> float:
    """One microbatch through an idle pipeline: every stage's forward and every send between
    ranks, as the event engine would time a table of that microbatch alone."""
    costs, links = inp.costs, inp.links
    sends = sum(links.transfer_s(rank_of[s], rank_of[s + 1], costs[s].output_bytes) for s in range(len(costs) - 1))
    return sum(c.forward_s for c in costs) + sends


def objective_s(plan: Plan) -> float:
    """What the job minimizes, in seconds: the step (training, or a forward-only batch), the
    time per sample (``throughput``: 1 / samples per second) or one microbatch's ``latency``."""
    pred, goal = plan.predicted, plan.job.objective
    if goal == "latency":
        return pred.latency_s
    if goal == "throughput":
        return 1.0 / pred.throughput if pred.throughput > 0 else float("inf")
    return pred.step_s


def fits(plan: Plan) -> bool:
    """The simulated peak of every rank is within the device memory."""
    return max(plan.predicted.peak_bytes) <= plan.cluster.memory_bytes


_SHA: dict[str, tuple[float, str]] = {}


def _sha(path: str) -> str:
    """sha256 of the profile file, computed once per modification."""
    p = Path(path)
    if not p.exists():
        return ""
    mtime = p.stat().st_mtime
    hit = _SHA.get(path)
    if hit is None or hit[0] != mtime:
        _SHA[path] = hit = (mtime, sha256_of(p))
    return hit[1]
