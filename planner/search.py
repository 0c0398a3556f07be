"""The outer search: pipeline degree x data-parallel degree x schedule x virtual stages x
microbatching, each split from the MILP, every answer re-scored by the event simulator.

Order of work (timed per phase in ``SearchStats``):
1. enumerate candidates the schedules accept (``ScheduleSpec.check``; refusals become notes);
   ``Custom`` adds placements where ranks hold different numbers of stages: the job's own
   (``--placement``), else for each p one family member, p + 1 stages with the last back on
   rank 0 (beside the first, so the split can pair a light stage with a heavy one); they
   are screened, solved and simulated like every other candidate, and win only when faster;
2. a lower bound per candidate from total work (``(m * work + all-reduce) / p``, and the
   fill/drain bound ``(m - 1) * work / p + work`` for schedules whose spec has
   ``fill_drain_bound``, with one stage per rank), all read from the cost layer's records, in
   the units of the job's objective (step, time per sample, or one microbatch's latency);
   candidates are visited best bound first and the visit stops once the bound reaches the
   ``top``-th best simulated value (nothing later can enter the top);
3. screen each visited candidate with its work-balanced split: refused without a table
   when its weights alone overflow, by its memory pattern when its activations do, else
   simulated (a real plan the bound prunes against). The stage options are the first one
   that fits every stage, else stage by stage the least recompute (and precision) that
   lets each rank fit;
4. one MILP per (stages, placement, memory pattern, step model, m, microbatch size),
   started from the screened split: schedules that share all of those share the answer.
   Each schedule's best candidate first, then the most promising, at most
   ``max(2 * top, MILP_CANDIDATES)``, and only those whose MILP is small (``MILP_SIZE``);
   the others keep their balanced splits (noted). A MILP that ends without any answer
   leaves its candidate at the balanced split (noted), never dropped;
5. simulate each answer;
6. refine the best few: the MILP's next-best splits (no-good cuts) and a neighbourhood of
   cut moves, all simulated, so the *simulated* optimum is found where the MILP's step
   model is only a model (interleaved, zero-bubble, transfers).

Every phase is bounded by work, never by the clock: simulated actions for the screen, branch-
and-bound nodes per MILP, simulations per refined plan. The same inputs give the same plans on
any machine, however busy; ``time_limit`` (``--time-limit``) adds a wall-clock limit per MILP
only when the caller gives one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from profiles.contract import UserError
from profiles.types import Profile
from simulator.actions import ScheduleError
from simulator.costs import CostModel, DPMode, Layout, Option, pipeline_latency
from simulator.placement import most_stages_per_rank
from simulator.schedules import ScheduleSpec, schedule_spec

from .baselines import Recipes, compare
from .batching import entry_sizes, microbatching
from .candidate import Candidate
from .cluster import Cluster, Job
from .infeasible import InfeasibleError, infeasible_error
from .memory import fitting_options
from .milp import MILP_NODES, SolverError, StepModel, solve_split
from .plan import Plan
from .pricing import job_sequence_parallel, job_tp_degrees
from .refine import ALTERNATIVES, REFINE_AT_LEAST, REFINE_WITHIN
from .refine import refine as refine_plan
from .scoring import Context, build_plan, fits, objective_s
from .splits import min_max_split

__all__ = ["plan", "InfeasibleError", "SearchStats", "search"]

MAX_VIRTUAL = 4  # stages per rank tried for schedules with no upper bound, unless the job says
#: units x stages x options up to which a candidate gets its MILP (above, its root relaxation
#: alone is slow and too weak to improve on the balanced split within the node limit)
MILP_SIZE = 500
#: units x stages x options up to which the refinement also asks the MILP for its next-best split
SMALL_ALTERNATIVES = 400
MILP_CANDIDATES = 6  # above that, the MILP runs for this many (at least 2 x top) best-screened candidates
#: schedule actions the screen may simulate once the top is filled; a candidate whose table would
#: overrun it is not screened (with a note) unless its table is small (``SMALL_TABLE`` actions,
#: e.g. every pipeline of one or two ranks), so weak bounds of deep pipelines cannot crowd them out
SCREEN_ACTIONS = 1_500_000
SMALL_TABLE = 1024
PROGRESS_EVERY_S = 0.2  # the screen tells its progress at most this often (display only)


@dataclass(kw_only=True)
class SearchStats:
    """What the search did, phase by phase (seconds and counts)."""

    seconds: dict[str, float] = field(
        default_factory=lambda: {
            "enumerate": 0.0,
            "bound": 0.0,
            "screen": 0.0,
            "milp": 0.0,
            "simulate": 0.0,
            "refine": 0.0,
            "baselines": 0.0,
        }
    )
    candidates: int = 0
    pruned: int = 0
    milps: int = 0
    milp_reused: int = 0
    simulations: int = 0
    screened_actions: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, phase: str, t0: float) -> None:
        self.seconds[phase] += time.perf_counter() - t0


@dataclass(frozen=True)
class Screened:
    """A candidate and its work-balanced split simulated (None: it does not fit)."""

    candidate: Candidate
    plan: Plan | None


@dataclass
class Solved:
    """What the MILP phase found: plans that fit, candidates no split fits, and solver failures."""

    plans: list[Plan]
    infeasible: list[tuple[Candidate, StepModel]]
    failed: list[str]


class _Search(Context):
    """The inputs every phase shares (``Context``: CostModels and schedule tables built once),
    the work-balanced splits, and whom to tell the progress."""

    def __init__(
        self,
        profile: Profile,
        profile_path: str,
        cluster: Cluster,
        job: Job,
        *,
        time_limit: float | None,
        solver: str,
        progress: Callable[[str], None] | None = None,
    ):
        super().__init__(profile, profile_path, cluster, job, time_limit=time_limit, solver=solver)
        self._progress, self._said = progress, 0.0
        self._splits: dict[tuple, list[tuple[int, int]]] = {}

    def say(self, what: str, force: bool = False) -> None:
        """Tell ``progress`` where the search is (at most every ``PROGRESS_EVERY_S``, unless ``force``)."""
        now = time.perf_counter()
        if self._progress is not None and (force or now - self._said >= PROGRESS_EVERY_S):
            self._said = now
            self._progress(what)

    def balanced(self, c: Candidate) -> list[tuple[int, int]]:
        """The work-balanced split of the candidate's stage count under the first option (shared)."""
        key = (c.mbs, c.stages, c.layout.tp, c.layout.sequence_parallel)
        if key not in self._splits:
            costs = self.costs(c.mbs, c.layout)
            first = costs.options[0]
            work = [r.forward_s if self.job.forward_only else r.forward_s + r.backward_s for r in costs.records[first]]
            self._splits[key] = min_max_split(work, c.stages)
        return self._splits[key]

    def build(self, c: Candidate, bounds, options: list[Option], solver: dict) -> Plan:
        return build_plan(self, c, bounds, options, solver=solver, costs=self.costs(c.mbs, c.layout))

    def tp_degrees(self) -> list[int]:
        """The job's tensor-parallel degrees, or every one valid for the model and cluster: divisors
        of the devices per node that divide the attention heads and key/value heads."""
        return job_tp_degrees(self.job, self.profile, min(self.cluster.devices_per_node, self.cluster.devices))


# -- 1. enumerate ------------------------------------------------------------------------------------


def _virtuals(spec: ScheduleSpec, job: Job, pp: int, U: int) -> list[int]:
    hi = spec.max_virtual if spec.max_virtual is not None else MAX_VIRTUAL
    vs = [v for v in range(spec.min_virtual, hi + 1) if not job.virtual or v in job.virtual]
    return [v for v in vs if spec.num_stages(pp, v) <= U]


def _specs(job: Job, stats: SearchStats) -> list[ScheduleSpec]:
    """The job's schedules (an unknown one is noted and skipped)."""
    specs = []
    for name in job.schedules:
        try:
            specs.append(schedule_spec(name))
        except ScheduleError as e:
            stats.notes.append(f"{name} skipped: {e}")
    return specs


def _enumerate(s: _Search, stats: SearchStats) -> list[Candidate]:
    profile, cluster, job = s.profile, s.cluster, s.job
    U = profile.num_units
    sizes = entry_sizes(profile, job.dtypes)
    pps = job.pp or tuple(p for p in range(1, min(U, cluster.devices) + 1) if cluster.devices % p == 0)
    specs = _specs(job, stats)
    out = []
    for pp in pps:
        if cluster.devices % pp or pp > U:
            stats.notes.append(f"pp={pp} skipped: {cluster.devices} devices or {U} units do not allow it")
            continue
        for layout in _layouts(s, pp, cluster.devices // pp, stats):
            for m, mbs in microbatching(job, layout.dp):
                if mbs not in sizes:
                    continue
                out += _schedule_candidates(job, specs, U, stats, pp=pp, layout=layout, m=m, mbs=mbs)
    return out


def _layouts(s: _Search, pp: int, per_stage: int, stats: SearchStats) -> list[Layout]:
    """tp x dp splits of the ``per_stage`` devices a pipeline rank has, with each dp mode and
    sequence-parallel choice the job allows (at dp 1 every mode is ddp; at tp 1 there is no SP).
    Each layout applies its mode's reshard rule for this pipeline (``Layout.on_pipeline``)."""
    job = s.job
    out = []
    for tp in s.tp_degrees():
        if per_stage % tp:
            continue
        dp = per_stage // tp
        modes = (DPMode.DDP,) if dp == 1 else _undominated_modes(job.dp_modes)
        sps = job_sequence_parallel(job, tp, s.profile)
        out += [
            job.layout(tp=tp, dp=dp, dp_mode=mode, sequence_parallel=sp).on_pipeline(pp)
            for mode in dict.fromkeys(modes)
            for sp in sps
        ]
    if not out:
        stats.notes.append(f"no tp degree of {list(s.tp_degrees())} divides {per_stage} devices per pipeline rank")
    return out


def _undominated_modes(names: tuple[str, ...]) -> tuple[DPMode, ...]:
    """The dp modes worth trying: the modes that keep whole parameters and reduce once a step
    (ddp, zero1) send the same bytes per step in the cost model (an all-reduce is a
    reduce-scatter plus an all-gather) and shard ever more state, and a sharded optimizer step is
    shorter, so the most sharded of them allowed dominates the others; the modes that reduce
    every microbatch (zero2: less gradient memory, more traffic) and the parameter-sharding modes
    (they gather before the first forward, least memory) are kept beside it."""
    modes = [DPMode(n) for n in names]
    kept = [m for m in modes if m.spec.shards_params or m.spec.reduces_each_microbatch]
    once = [m for m in modes if m not in kept]
    best = max(once, key=lambda m: m.spec.sharded_parts, default=None)
    return tuple(([best] if best else []) + kept)


def _schedule_candidates(
    job: Job, specs, U: int, stats: SearchStats, *, pp: int, layout: Layout, m: int, mbs: int
) -> list[Candidate]:
    if pp == 1:  # no pipeline, no schedule to choose: one candidate under the first plain schedule
        specs = [sp for sp in specs if not sp.custom and sp.min_virtual == 1][:1]
    out = []
    for spec in specs:
        if spec.custom:
            out += [
                Candidate(pp=pp, layout=layout, m=m, mbs=mbs, spec=spec, virtual=most_stages_per_rank(pl), placement=pl)
                for pl in _custom_placements(job, pp, U)
            ]
            continue
        for v in _virtuals(spec, job, pp, U):
            if pp == 1 and v > 1:
                continue  # no pipeline: several stages on the one rank only add hand-offs
            try:
                spec.check(pp, m, v)
            except ScheduleError as e:
                stats.notes.append(f"{spec.name} pp={pp} m={m} v={v} skipped: {str(e).splitlines()[0]}")
                continue
            out.append(Candidate(pp=pp, layout=layout, m=m, mbs=mbs, spec=spec, virtual=v))
    return out


def _custom_placements(job: Job, pp: int, U: int) -> list[tuple[int, ...]]:
    """The Custom placements tried on ``pp`` ranks: the job's own, else the wrap family
    (p + 1 stages, stage p back on rank 0); none that needs more stages than units."""
    if job.placements:
        return [tuple(pl) for pl in job.placements if max(pl) + 1 == pp and len(pl) <= U]
    return [tuple(range(pp)) + (0,)] if 2 <= pp < U else []


# -- 2. bounds ---------------------------------------------------------------------------------------


def _lower_bound(costs: CostModel, c: Candidate, forward_only: bool) -> float:
    """No split of this candidate simulates a shorter step: every action's records at their
    cheapest option plus the runtime's overhead per action, spread over the ranks, and each
    rank's share of the end-of-step all-reduce and optimizer."""
    recs = list(zip(*costs.records.values()))  # per unit, its record under each option
    oh = costs.action_overhead_s
    if forward_only:
        per_unit = [min(r.forward_s for r in rs) for rs in recs]
        per_stage = oh
    else:
        per_unit = [min(r.forward_s + r.backward_s for r in rs) for rs in recs]
        per_stage = 2 * oh
    work = sum(per_unit) + c.stages * per_stage
    lb = c.m * work / c.pp
    if not forward_only:
        # the step is at least the mean over ranks of (busy + all-reduce + optimizer)
        _, per_weight, per_grad = costs.dp_comm.tail_affine()
        weights = sum(min(r.grad_bytes for r in rs) for rs in recs)
        grad = sum(min(r.reduced_bytes for r in rs) for rs in recs)
        opt = sum(min(r.optimizer_s for r in rs) for rs in recs)
        lb += (per_weight * weights + per_grad * grad + opt) / c.pp
    if c.spec.fill_drain_bound and c.virtual == 1:
        lb = max(lb, (c.m - 1) * max(work / c.pp, max(per_unit) + per_stage) + work)
    return lb


def _objective_bound(step_lb: float, costs: CostModel, job: Job) -> float:
    """The step's lower bound in the units of ``objective_s``: per sample for throughput; for
    latency, one microbatch's forwards through every unit (sends only add)."""
    if job.objective == "latency":  # every unit its own stage on one rank, at its fastest forward
        fastest = [min(r.forward_s for r in rs) for rs in zip(*costs.records.values())]
        return pipeline_latency(fastest, [0] * len(fastest), lambda s: 0.0)
    if job.objective == "throughput":
        return step_lb / job.global_batch
    return step_lb


def _bound(s: _Search, cands: list[Candidate]) -> list[Candidate]:
    """The candidates with their lower bounds, best first."""
    out = []
    for c in cands:
        costs = s.costs(c.mbs, c.layout)
        lb = _objective_bound(_lower_bound(costs, c, s.job.forward_only), costs, s.job)
        out.append(replace(c, lower_bound=lb))
    out.sort(key=lambda c: (c.lower_bound, c.pp, c.schedule, c.m))
    return out


# -- 3. screen ---------------------------------------------------------------------------------------


def _screen_one(s: _Search, c: Candidate) -> Plan | None:
    """The candidate's work-balanced split under options that fit it (``_fitting_options``),
    simulated; None when no choice of options fits that split (the weights alone, or the memory
    pattern's peak, which is the simulator's, so nothing that fits is refused). A screened plan is
    the MILP's start: a feasible answer from the first node."""
    bounds = s.balanced(c)
    options = _fitting_options(s, c, bounds)
    if options is None:
        return None
    return s.build(c, bounds, options, {"status": "balanced split", "solver": "none"})


def _fitting_options(s: _Search, c: Candidate, bounds) -> list[Option] | None:
    """Per-stage options under which ``bounds`` fits memory (``memory.fitting_options``)."""
    costs = s.costs(c.mbs, c.layout)
    return fitting_options(costs, bounds, s.model(c).memory, s.cluster.memory_bytes, s.job.forward_only)


def _screen(s: _Search, cands: list[Candidate], keep: int, stats: SearchStats) -> list[Screened]:
    """Every candidate that can still enter the top, best bound first, screened. A screened plan
    that fits is a real plan, so the bound may prune against it. With the top filled, a candidate
    whose table would take the actions simulated past ``SCREEN_ACTIONS`` is not screened."""
    fitting: list[Plan] = []
    out = []
    spent, skipped = 0, 0  # actions simulated since the top was filled; candidates left for the budget
    for i, c in enumerate(cands):
        s.say(f"screening {i + 1}/{len(cands)}")
        if len(fitting) >= keep and c.lower_bound >= _kth(fitting, keep):
            stats.pruned = len(cands) - i
            break
        table = 2 * c.stages * c.m  # at least F and B per stage and microbatch
        if len(fitting) >= keep and spent + table > SCREEN_ACTIONS and table > SMALL_TABLE:
            skipped += 1  # its table would overrun the budget (small tables are always screened)
            continue
        t0 = time.perf_counter()
        p = _screen_one(s, c)
        stats.simulations += p is not None
        # its table was built (and simulated when it fits) whether or not it fits: count it
        actions = sum(len(a) for a in p.table.values()) if p is not None else table
        stats.screened_actions += actions
        spent += actions if len(fitting) >= keep else 0
        if p is not None and not fits(p):
            p = None
        if p is not None:
            fitting.append(p)
        stats.add("screen", t0)
        out.append(Screened(c, p))
    if skipped:
        stats.pruned += skipped
        stats.notes.append(f"{skipped} candidates with weaker bounds and larger tables left unscreened (screen budget)")
    return out


def _kth(plans: list[Plan], k: int) -> float:
    return sorted(objective_s(p) for p in plans)[k - 1]


# -- 4. solve ----------------------------------------------------------------------------------------


def _milp_order(screened: list[Screened]) -> tuple[list[Screened], int]:
    """The candidates in the order they get their MILP, and how many families lead it: each
    schedule's (and data-parallel mode's) best candidate first, so that every family the job
    allows gets its MILP (a mode that trades time for memory, zero2 beside ddp, may be the only one
    whose split fits, and only the MILP's split); then the rest, each by what it may reach: a
    screened plan's objective, or, whose balanced split does not fit, its bound (a split the MILP
    finds may fit, and beat the screened plans)."""
    order = sorted(screened, key=lambda x: objective_s(x.plan) if x.plan else x.candidate.lower_bound)
    firsts = list({(x.candidate.schedule, x.candidate.layout.dp_mode): x for x in reversed(order)}.values())
    firsts.sort(key=order.index)
    chosen = {id(x) for x in firsts}
    return firsts + [x for x in order if id(x) not in chosen], len(firsts)


def _solve(s: _Search, screened: list[Screened], keep: int, stats: SearchStats) -> Solved:
    """One MILP per distinct (microbatch size, layout, step model), started from the screened
    split, each answer simulated, in ``_milp_order``: at most ``max(2 * top, MILP_CANDIDATES)`` of
    them (or one per family, if more), and only where the MILP is small enough to close its gap
    within its node limit (``_milp_size`` up to ``MILP_SIZE``; the others keep their balanced
    splits, which the refinement searches around). A MILP that ends with no answer leaves its
    candidate at its screened split, with a note: a candidate is never dropped for the solver's
    sake. A candidate without a screened split and too large for the MILP is taken as not fitting
    (``infeasible``), since its balanced split fits under no choice of options."""
    out = Solved([x.plan for x in screened if x.plan is not None], [], [])
    order, families = _milp_order(screened)
    answers: dict[tuple, object] = {}
    large = 0
    for x in order:
        c, screen = x.candidate, x.plan
        if _milp_size(s, c) > MILP_SIZE:
            large += screen is not None
            if screen is None:
                out.infeasible.append((c, s.model(c)))
            continue
        if stats.milps >= max(2 * keep, MILP_CANDIDATES, families):
            continue
        if len(out.plans) >= keep and c.lower_bound >= _kth(out.plans, keep):
            continue
        s.say(f"MILP {stats.milps + 1}", force=True)
        t0 = time.perf_counter()
        model = s.model(c)
        key = (c.mbs, c.layout, model.key())
        start = (screen.bounds, [st.option for st in screen.stages]) if screen else None
        if key in answers:
            stats.milp_reused += 1
        else:
            try:
                answers[key] = solve_split(
                    s.costs(c.mbs, c.layout),
                    model,
                    s.cluster.memory_bytes,
                    time_limit=s.time_limit,
                    solver=s.solver,
                    start=start,
                )
            except SolverError as e:  # no answer within its limit: the screened split stands
                kept = "kept its balanced split" if screen is not None else "left out (no split fits)"
                stats.notes.append(f"{c.label()} mbs={c.mbs} {kept}: {e}")
                out.failed.append(str(e))
                answers[key] = e
            stats.milps += 1
        res = answers[key]
        stats.add("milp", t0)
        if isinstance(res, SolverError):
            continue
        if res is None:
            out.infeasible.append((c, model))
            continue
        t0 = time.perf_counter()
        facts = {"status": res.status, "solver": res.solver, "gap": res.gap, "bound": res.bound}
        facts["objective_s"] = res.objective
        if start and (res.bounds, res.options) == start:
            p = replace(screen, solver={**facts, "start": "balanced split"})  # the same split: simulated already
        else:
            p = s.build(c, res.bounds, res.options, facts)
            stats.simulations += 1
        stats.add("simulate", t0)
        if fits(p):
            out.plans.append(p)
    if large:
        stats.notes.append(
            f"{large} candidates kept their balanced splits without a MILP (units x stages x options above "
            f"{MILP_SIZE}: its gap would not close within {MILP_NODES} nodes); the refinement searched around them"
        )
    out.plans = _dedupe(sorted(out.plans, key=_rank))
    return out


def _milp_size(s: _Search, c: Candidate) -> int:
    """The split MILP's size for ``c``: units x stages x options (its continuous variables)."""
    return s.profile.num_units * c.stages * len(s.costs(c.mbs, c.layout).options)


# -- 5. refine ---------------------------------------------------------------------------------------


def _refine(s: _Search, plans: list[Plan], top: int, refine: int | None, stats: SearchStats) -> list[Plan]:
    """The best few (within ``REFINE_WITHIN`` of the best) searched around with the simulator,
    best first, each within its own budget of simulations."""
    close = [p for p in plans if objective_s(p) <= objective_s(plans[0]) * (1 + REFINE_WITHIN)]
    n = min(len(close), refine if refine is not None else max(top, REFINE_AT_LEAST))
    s.say(f"refining the best {n}", force=True)
    refined = [refine_plan(s, p, stats, alternatives=_alternatives(s, p)) for p in plans[:n]]
    return _dedupe(sorted(refined + plans[n:], key=_rank))


def _alternatives(s: _Search, p: Plan) -> int:
    """The MILP's next-best splits the refinement asks for around ``p``: only where its MILP is small."""
    options = s.costs(p.microbatch_size, p.parallelism).options
    return ALTERNATIVES if s.profile.num_units * len(p.stages) * len(options) <= SMALL_ALTERNATIVES else 0


# -- the search --------------------------------------------------------------------------------------


def search(
    profile: Profile,
    cluster: Cluster,
    job: Job,
    top: int = 3,
    *,
    profile_path: str | Path | None = None,
    time_limit: float | None = None,
    solver: str = "auto",
    refine: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[Plan], SearchStats]:
    """The ``top`` plans, best simulated step time first, and what the search did:
    enumerate -> bound -> screen -> solve -> refine -> baselines. Bounded by work (see the
    module's docstring), so deterministic; ``time_limit``: wall seconds per MILP, only when given
    (a MILP past it returns its best split so far, at worst the screened one it started from);
    ``progress``: told the phase as it goes (e.g. a progress bar's status)."""
    profile_path = str(profile_path or profile.measurement.get("path", ""))
    if not profile_path or not Path(profile_path).exists():
        raise UserError("plan() needs the profile's file path (profile_path=...) so the plan can refer to it")
    if job.seq_len is not None and job.seq_len != profile.seq_len:
        raise UserError(
            f"the job's sequence length {job.seq_len} differs from the profile's {profile.seq_len}: "
            f"profile again with --seq-len {job.seq_len}"
        )
    stats = SearchStats()
    s = _Search(profile, profile_path, cluster, job, time_limit=time_limit, solver=solver, progress=progress)
    keep = max(top, 1)

    t0 = time.perf_counter()
    cands = _enumerate(s, stats)
    stats.add("enumerate", t0)
    t0 = time.perf_counter()
    cands = _bound(s, cands)
    stats.candidates = len(cands)
    stats.add("bound", t0)
    screened = _screen(s, cands, keep, stats)
    solved = _solve(s, screened, keep, stats)
    if not solved.plans and solved.failed:
        raise SolverError(f"no candidate was solved; first failure: {solved.failed[0]}")
    if not solved.plans:
        raise infeasible_error(s, solved.infeasible)
    t0 = time.perf_counter()
    s.say("the Megatron-style and torchtitan-style recipes", force=True)
    made = Recipes()
    recipes = _recipes(solved.plans[0], job, made)
    stats.add("baselines", t0)
    t0 = time.perf_counter()
    results = _refine(s, _dedupe(sorted(solved.plans + recipes, key=_rank)), top, refine, stats)
    stats.add("refine", t0)
    t0 = time.perf_counter()
    out = [replace(p, baselines=compare(p, made)) for p in results[:top]]
    stats.add("baselines", t0)
    return out, stats


def _recipes(best: Plan, job: Job, made: Recipes) -> list[Plan]:
    """The Megatron-style and torchtitan-style configurations (``baselines``) as candidates too,
    when the job allows their layout and they fit: a plan is never slower than the recipes users
    run, even where the search's budget left their region unscreened."""
    out = []
    for name, b in made.beside(best).items():
        if b is None or not fits(b) or b.schedule not in {schedule_spec(n).name for n in job.schedules}:
            continue
        if (job.tp and b.tp not in job.tp) or (b.dp > 1 and b.dp_mode.value not in job.dp_modes):
            continue
        if (job.pp and b.pp not in job.pp) or (job.virtual and b.virtual not in job.virtual):
            continue
        if any(st.recompute.value not in job.recompute for st in b.stages):
            continue
        out.append(replace(b, solver={"status": "recipe", "solver": "none", "recipe": name}))
    return out


def plan(
    profile: Profile,
    cluster: Cluster,
    job: Job,
    top: int = 3,
    *,
    profile_path: str | Path | None = None,
    time_limit: float | None = None,
    solver: str = "auto",
) -> list[Plan]:
    """The ``top`` plans for ``job`` on ``cluster``, best simulated step time first."""
    return search(profile, cluster, job, top, profile_path=profile_path, time_limit=time_limit, solver=solver)[0]


def _rank(p: Plan):
    # the job's objective; on a tie, the step, then the MILP's plan (with its solver facts)
    # before the screened balanced split
    return (
        objective_s(p),
        p.predicted.step_s,
        p.solver.get("status") == "balanced split",
        p.pp,
        p.tp,
        p.dp_mode.value,
        p.schedule,
        p.virtual,
        p.microbatches,
        p.split,
    )


def _dedupe(plans: list[Plan]) -> list[Plan]:
    seen, out = set(), []
    for p in plans:
        key = (
            p.pp,
            p.parallelism,
            p.schedule,
            p.virtual,
            p.microbatches,
            p.microbatch_size,
            tuple(p.bounds),
            tuple((st.dtype, st.recompute, st.rank) for st in p.stages),
        )
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out
