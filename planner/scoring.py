"""A split made into a simulated Plan, and what the MILP reads per unit.

Shared by the search, its refinement, the baselines, ``score_split`` and the executor's
validation plans: the schedule tables and step models of a job (``Schedules``: built once per
(schedule, pp, m, v) and reused by the screen, the MILP and the refinement; the one place
tables are made), what every plan of a job shares (``Context``), and ``build_plan``, which
turns a ``Candidate`` cut at a split, with options per stage, into a Plan and simulates it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from profiles.contract import sha256_of
from profiles.types import Profile
from simulator.actions import Table, forward_table, stage_ranks
from simulator.costs import CostModel, Layout, Option, pipeline_latency
from simulator.engine import SimInput, simulate
from simulator.placement import placement_table
from simulator.schedules import SteadyState, canonical_name, make_schedule, schedule_spec

from .candidate import Candidate
from .cluster import Cluster, Job
from .memory import memory_pattern
from .milp import StepModel
from .plan import Plan, Prediction, StagePlan
from .pricing import cost_model

__all__ = ["Schedules", "Context", "build_plan", "fits", "objective_s"]


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


class Context:
    """What every plan of one job shares: the profile (and its file), the cluster and the job, the
    job's schedule tables and step models (``schedules``), its CostModels (built once each), and
    how its MILPs are solved (``time_limit``: wall seconds per MILP, only when given; ``solver``)."""

    def __init__(
        self,
        profile: Profile,
        profile_path: str,
        cluster: Cluster,
        job: Job,
        *,
        time_limit: float | None = None,
        solver: str = "auto",
    ):
        self.profile, self.profile_path, self.cluster, self.job = profile, profile_path, cluster, job
        self.time_limit, self.solver = time_limit, solver
        self.schedules = Schedules(job)
        self._costs: dict[tuple[int, Layout], CostModel] = {}

    def costs(self, mbs: int, layout: Layout) -> CostModel:
        """The job's options at microbatch size ``mbs`` on ``layout`` (built once each)."""
        if (mbs, layout) not in self._costs:
            self._costs[mbs, layout] = cost_model(self.profile, self.cluster, self.job, mbs, layout=layout)
        return self._costs[mbs, layout]

    def table(self, c: Candidate) -> Table:
        return self.schedules.table(c.schedule, c.pp, c.m, c.virtual, c.placement)

    def model(self, c: Candidate) -> StepModel:
        return self.schedules.model(c.schedule, c.pp, c.m, c.virtual, c.placement)


def build_plan(
    ctx: Context,
    c: Candidate,
    bounds: Sequence[tuple[int, int]],
    options: Sequence[Option],
    *,
    solver: dict | None = None,
    costs: CostModel | None = None,
    table: Table | None = None,
) -> Plan:
    """A Plan of candidate ``c`` cut at ``bounds``, stage ``s`` run with ``options[s]``, simulated
    (``predicted`` filled); stages go where the candidate's table (``ctx.table``) puts them.

    ``solver``: the facts of whatever chose the split; ``costs``: a CostModel of ``c``'s microbatch
    size and layout with (at least) the stages' options (built from the plan when None);
    ``table``: a table of one's own instead of the candidate's. ``Custom``: the table is
    (re)ordered by this split's own stage times (``placement_table`` with durations), so a rank
    holding two stages interleaves them as their costs need."""
    job, layout = ctx.job, c.layout
    table = table if table is not None else ctx.table(c)
    owner = stage_ranks(table)
    stages = tuple(
        StagePlan(i, f, e, owner[i], o.dtype, o.recompute) for i, ((f, e), o) in enumerate(zip(bounds, options))
    )
    plan = Plan(
        profile_path=ctx.profile_path,
        profile_sha256=_sha(ctx.profile_path),
        model_name=ctx.profile.model_name,
        pp=c.pp,
        layout=layout,
        virtual=c.virtual,
        microbatches=c.m,
        microbatch_size=c.mbs,
        stages=stages,
        schedule=canonical_name(c.schedule),
        table=table,
        cluster=ctx.cluster,
        job=job,
        solver=solver or {},
        profile=ctx.profile,
    )
    inp = plan.sim_input(costs)
    if c.placement is not None:  # Custom: order by this split's costs
        ordered = placement_table(list(c.placement), c.m, [(sc.forward_s, sc.backward_s) for sc in inp.costs])
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
    """One microbatch through an idle pipeline (``pipeline_latency``): the stages' forwards and the
    sends between their ranks."""
    costs, links = inp.costs, inp.links
    ranks = [rank_of[s] for s in range(len(costs))]
    return pipeline_latency(
        [sc.forward_s for sc in costs], ranks, lambda s: links.transfer_s(ranks[s], ranks[s + 1], costs[s].output_bytes)
    )


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
