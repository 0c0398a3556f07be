"""The split MILP: where to cut a chain of units into ``S`` contiguous stages, and how
to run each stage (precision, recompute).

Variables are cumulative ("prefix") binaries: ``z[u][s] = 1`` when unit ``u`` sits in
stage ``s`` or earlier. Contiguity is then two families of inequalities, and a unit's
membership of stage ``s`` is ``z[u][s] - z[u][s-1]``: linear, no unit x stage
assignment products. This is orders of magnitude faster to solve than one binary per
(unit, stage) pair with explicit contiguity constraints.

Per-stage options (a dtype, with or without full recompute) are binaries ``c[s][o]``
with ``sum_o c[s][o] = 1``; the unit's costs under the chosen option are carried by
continuous ``y[u][s][o] >= member(u, s) + c[s][o] - 1``, ``y >= 0``. Every ``y`` has a
non-negative coefficient in ``<=`` rows and in the objective only, so the solver sets it
to the product ``member * c``. With one option, ``y`` is simply the membership. A hand-off
whose bytes depend on the option (the dtype) is carried the same way by
``q >= cut(u, s) + c[s][o] - 1``.

Coefficients come from the one cost layer (``simulator.costs.CostModel``): every
per-stage term below (:class:`_Split`'s forward, backward, input, weight, static, act,
keep, sends, grad, optimizer) is the sum over the stage's units of the very records the
simulator's ``StageCost`` sums, plus the same per-stage constants, and the first-stage
rule is the record's own (``CostModel.record``). ``stage_terms`` evaluates them for a
given split, so a test can hold them against the simulator's.

Step-time model (:class:`StepModel`), for a schedule whose stage ``s`` runs on rank
``rank_of[s]``, ``v`` stages per rank and ``m`` microbatches:

    v = 1:  (m - 1) * T  +  sum_s (F_s + Bcrit_s)        +  hand-offs  +  tail
    v > 1:  m * T        +  (p - 1) * max_s (F_s + Bcrit_s)  +  hand-offs  +  tail

``T`` bounds every rank's work per microbatch (``sum over its stages of F + B``, or ``F + I
+ W`` for zero-bubble schedules); ``Bcrit`` is the backward on the critical path (B, or I
for zero-bubble schedules); schedules that run all forwards before all backwards
(``SteadyState.PHASED``) bound the forward and backward loads apart (``(m - 1) * (TF +
TB)``). Hand-offs: every cut between ranks, its forward send and (training) its gradient
back. Tail: the largest over ranks of the data-parallel communication and optimizer step
after a rank's last backward; head: fsdp's gather of the first stage's weights before the
first forward. For one stage per rank and uniform costs this is exactly ``(m + p - 1) * t``,
the textbook GPipe/1F1B step; for the others it is a model, and the search re-scores every
answer with the event simulator and searches around it.

Linearisations (the model's approximations, all here): the tail adds the largest rank's
all-reduce and optimizer to the fill and drain, where the simulator adds each rank's to
that rank's own end; the collectives' latency terms are counted for every rank (a rank
without parameters has none in the simulator); only the first stage's rank's gather delays
the step (the others gather while they wait for their first input). Memory per rank: static bytes plus the
activations the schedule's own memory pattern (``memory.py``) holds, which equals the
simulator's peak exactly.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field

import pulp

from profiles.contract import UserError
from simulator.costs import CostModel, Option, TiedSync, pipeline_latency

from .memory import Pattern
from .solvers import ANSWERED, SolverError, available_solvers, solve

__all__ = [
    "StepModel",
    "SplitResult",
    "SolverError",
    "solve_split",
    "min_memory_split",
    "stage_terms",
    "StageTerms",
    "SplitTerms",
    "available_solvers",
    "MILP_NODES",
]

#: branch-and-bound nodes one split MILP may explore: the search's work bound (with a MIP start
#: the answer is never worse than the start; small chains close their gap well within it)
MILP_NODES = 50


@dataclass(frozen=True)
class StepModel:
    """The schedule's step-time and memory model, as the MILP sees it."""

    microbatches: int
    rank_of: tuple[int, ...]  # stage -> rank (Plan.table's placement)
    memory: Pattern  # activations held per rank (from the schedule table)
    _: KW_ONLY
    split_backward: bool = False  # zero-bubble family: I on the critical path, W fills bubbles
    phased: bool = False  # all forwards before all backwards (ScheduleSpec.steady_state PHASED)
    forward_only: bool = False  # inference: F only, no activations held, weights only
    latency: bool = False  # minimize one microbatch's pass (forwards and sends) instead of the step

    @property
    def stages(self) -> int:
        return len(self.rank_of)

    @property
    def virtual(self) -> int:
        return max(1, self.stages // (max(self.rank_of) + 1))

    def stages_of(self, rank: int) -> list[int]:
        return [s for s, r in enumerate(self.rank_of) if r == rank]

    def key(self) -> tuple:
        """Equal keys: the same MILP (schedules with one placement, memory pattern and step model share it)."""
        return (
            self.microbatches,
            self.rank_of,
            self.memory.key(),
            self.split_backward,
            self.phased,
            self.forward_only,
            self.latency,
        )


@dataclass(frozen=True, kw_only=True)
class SplitResult:
    bounds: list[tuple[int, int]]
    options: list[Option]  # chosen option per stage
    objective: float
    status: str  # Optimal | NodeLimit | TimeLimit (a feasible answer, not proven optimal)
    solver: str
    time_s: float
    gap: float | None  # relative gap between the answer and the best bound (0 when proven)
    bound: float | None = None  # best bound on the objective the solver proved
    facts: dict = field(default_factory=dict)


class _Contradiction(Exception):
    """A row without variables that does not hold: the model is infeasible as built."""


def _add(prob: pulp.LpProblem, row, name: str) -> None:
    """``prob += row, name``, except that rows the band left without variables are checked here."""
    if isinstance(row, bool) or not list(row.keys()):
        if not (row if isinstance(row, bool) else row.valid(0)):
            raise _Contradiction(name)
        return
    prob += row, name


def _is_var(x) -> bool:
    return isinstance(x, pulp.LpVariable)


class _Split:
    """The variables of a split with options, and every per-stage term as an affine
    expression of them, read from the cost layer's records."""

    def __init__(self, name: str, costs: CostModel, model: StepModel, sense=pulp.LpMinimize):
        self.costs, self.model = costs, model
        self.options = costs.options
        self.U, self.S = costs.num_units, model.stages
        if self.S > self.U:
            raise UserError(f"cannot cut {self.U} units into {self.S} stages: lower --pp or --virtual")
        self.prob = pulp.LpProblem(name, sense)
        self._prefix()
        self._choices()
        self._q: dict = {}  # (u, s, owner stage, option) -> product of a cut and an option
        self._sums: dict = {}  # (field, s) -> the stage's sum of that record field (never edited)

    # -- variables and structure ----------------------------------------------------------------
    def _prefix(self) -> None:
        """z[u][s] = 1: unit u is in stage s or earlier. Every stage holds a unit, so unit u sits
        in a stage between S - U + u and u: z is the constant 1 from column u on (and in the
        last column), the constant 0 before column S - U + u, a binary only in the band between."""
        U, S, prob = self.U, self.S, self.prob

        def prefix(u: int, s: int):
            if s >= u or s == S - 1:
                return 1
            if s < S - U + u:
                return 0
            return prob.add_variable(f"z_{u}_{s}", cat="Binary")

        z = self.z = [[prefix(u, s) for s in range(S)] for u in range(U)]
        # contiguity: a unit in stage <= s makes every earlier unit so; stage <= s implies stage <= s+1
        for u in range(U - 1):
            for s in range(S - 1):
                if _is_var(z[u][s]) or _is_var(z[u + 1][s]):
                    _add(prob, z[u][s] >= z[u + 1][s], f"prefix_u{u}_s{s}")
        for u in range(U):
            for s in range(S - 2):
                if _is_var(z[u][s]) or _is_var(z[u][s + 1]):
                    _add(prob, z[u][s] <= z[u][s + 1], f"monotone_u{u}_s{s}")
        # every stage holds at least one unit
        for s in range(S):
            _add(prob, pulp.lpSum(self.member(u, s) for u in self.units_of(s)) >= 1, f"nonempty_s{s}")

    def _choices(self) -> None:
        """One option per stage; y[u][s][o] is member(u, s) * c[s][o] (see the module docstring)."""
        U, S, prob, opts = self.U, self.S, self.prob, self.options
        if len(opts) == 1:
            self.c = [{opts[0]: 1} for _ in range(S)]
            self.y = [[{opts[0]: self.member(u, s)} for s in range(S)] for u in range(U)]
            return
        self.c = [{o: prob.add_variable(f"c_{s}_{i}", cat="Binary") for i, o in enumerate(opts)} for s in range(S)]
        self.y = [
            [
                {
                    o: (prob.add_variable(f"y_{u}_{s}_{i}", lowBound=0) if s <= u <= s + U - S else 0)
                    for i, o in enumerate(opts)
                }
                for s in range(S)
            ]
            for u in range(U)
        ]
        for s in range(S):
            _add(prob, pulp.lpSum(self.c[s].values()) == 1, f"one_option_s{s}")
            for u in self.units_of(s):
                for i, o in enumerate(opts):
                    _add(prob, self.y[u][s][o] >= self.member(u, s) + self.c[s][o] - 1, f"uses_u{u}_s{s}_o{i}")

    def units_of(self, s: int) -> range:
        """The units that can sit in stage ``s``."""
        return range(s, s + self.U - self.S + 1)

    def member(self, u: int, s: int):
        return self.z[u][s] - (self.z[u][s - 1] if s > 0 else 0)

    def cut(self, u: int, s: int):
        """1 when stage s ends right after unit u."""
        return self.z[u][s] - self.z[u + 1][s]

    # -- per-stage terms: sums of the cost layer's records --------------------------------------
    def field(self, name: str, s: int) -> pulp.LpAffineExpression:
        """Stage s's sum of the record field ``name`` (built once; callers combine, never edit)."""
        key = (name, s)
        if key not in self._sums:
            self._sums[key] = self.stage_sum(s, lambda r: getattr(r, name))
        return self._sums[key]

    def stage_sum(self, s: int, value) -> pulp.LpAffineExpression:
        """sum over the units of stage s of ``value(record)`` under the stage's option."""
        terms: dict = {}
        const = 0.0
        for u in self.units_of(s):
            for o in self.options:
                coef = value(self.costs.record(o, u, s))
                var = self.y[u][s][o]
                if _is_var(var):
                    terms[var] = terms.get(var, 0) + coef
                elif isinstance(var, (int, float)):
                    const += coef * var
                else:  # an affine membership (one option)
                    for v, k in var.items():
                        terms[v] = terms.get(v, 0) + coef * k
                    const += coef * var.constant
        return pulp.LpAffineExpression(terms, constant=const)

    def _timed(self, name: str, s: int):
        """A compute action's time on stage s: its units' records plus the runtime's overhead."""
        return self.field(name, s) + self.costs.action_overhead_s

    def forward(self, s: int):
        return self._timed("forward_s", s)

    def backward(self, s: int):
        return self._timed("backward_s", s)

    def input(self, s: int):
        return self._timed("input_s", s)

    def weight(self, s: int):
        return self._timed("weight_s", s)

    def static(self, s: int):
        return self.field("static_bytes", s)

    def rank_static(self, stages):
        """A rank's static bytes: its stages', and what every rank holds once
        (``CostModel.per_rank_bytes``)."""
        once = self.costs.per_rank_bytes if stages and not self.model.forward_only else 0
        return pulp.lpSum(self.static(s) for s in stages) + once

    def act(self, s: int):
        return self.field("activation_bytes", s)

    def keep(self, s: int):
        return self.field("keep_bytes", s)

    def grad(self, s: int):
        return self.field("grad_bytes", s)

    def reduced(self, s: int):
        return self.field("reduced_bytes", s)

    def optimizer(self, s: int):
        return self.field("optimizer_s", s)

    def sends(self, s: int, backward: bool = True):
        """The hand-offs at the cut after stage s: its output forward, and (``backward``) the
        gradient of stage s+1's input back, each on the link between their ranks."""
        if s >= self.S - 1:
            return pulp.LpAffineExpression()
        src, dst = self.model.rank_of[s], self.model.rank_of[s + 1]
        expr = pulp.LpAffineExpression()
        for u in range(s, min(s + self.U - self.S + 1, self.U - 1)):
            expr += self._priced_cut(u, s, s, lambda r: self.costs.send_s(src, dst, r.output_bytes), u)
            if backward:
                expr += self._priced_cut(u, s, s + 1, lambda r: self.costs.send_s(dst, src, r.input_bytes), u + 1)
        return expr

    def _priced_cut(self, u: int, s: int, owner: int, price, unit: int):
        """cut(u, s) times ``price`` of ``unit``'s record under stage ``owner``'s option."""
        prices = {o: price(self.costs.record(o, unit, owner)) for o in self.options}
        if len(set(prices.values())) == 1:
            return next(iter(prices.values())) * self.cut(u, s)
        out = pulp.LpAffineExpression()
        for i, (o, p) in enumerate(prices.items()):
            key = (u, s, owner, o)
            if key not in self._q:
                q = self._q[key] = self.prob.add_variable(f"q_{u}_{s}_{owner}_{i}", lowBound=0)
                _add(self.prob, q >= self.cut(u, s) + self.c[owner][o] - 1, f"hands_u{u}_s{s}_t{owner}_o{i}")
            out += p * self._q[key]
        return out

    # -- the schedule's view --------------------------------------------------------------------
    def work(self, s: int):
        """What stage s computes per microbatch."""
        if self.model.forward_only:
            return self.forward(s)
        if self.model.split_backward:
            return self.forward(s) + self.input(s) + self.weight(s)
        return self.forward(s) + self.backward(s)

    def critical(self, s: int):
        """Stage s's forward and the backward on the critical path."""
        if self.model.forward_only:
            return self.forward(s)
        return self.forward(s) + (self.input(s) if self.model.split_backward else self.backward(s))

    def tail(self, rank: int):
        """After the rank's last backward: tied gradients' all-reduce, data-parallel communication,
        then optimizer (affine in bytes)."""
        if self.model.forward_only:
            return pulp.LpAffineExpression()
        const, per_weight, per_grad = self.costs.dp_comm.tail_affine()
        return (
            const
            + self.tied_s(rank)
            + pulp.lpSum(
                per_weight * self.grad(s) + per_grad * self.reduced(s) + self.optimizer(s)
                for s in self.model.stages_of(rank)
            )
        )

    def tied_s(self, rank: int) -> float:
        """Tied parameters held by the first and the last unit (the embeddings) sit on the first
        and the last stage whatever the split: their all-reduce when those are on different ranks,
        in the first option's dtype (other tied groups are left to the simulator's re-scoring)."""
        r0, r1 = self.model.rank_of[0], self.model.rank_of[-1]
        if r0 == r1 or rank not in (r0, r1):
            return 0.0
        ends = {0, self.U - 1}
        return sum(
            self.costs.tied_sync_s(TiedSync((min(r0, r1), max(r0, r1)), self.costs.tied_bytes(p, self.options[0])))
            for units, p in self.costs.tied
            if set(units) == ends
        )

    def head(self, rank: int):
        """Before the rank's first forward: fsdp's gather of its weights (affine in bytes)."""
        if self.model.forward_only:
            return pulp.LpAffineExpression()
        const, per_byte = self.costs.dp_comm.head_affine()
        return const + pulp.lpSum(per_byte * self.grad(s) for s in self.model.stages_of(rank))

    def memory_rows(self, cap) -> None:
        """Per rank and memory-pattern vector: static bytes + activations held <= cap."""
        model, prob = self.model, self.prob
        for r in sorted(set(model.rank_of)):
            stages = model.stages_of(r)
            static = self.rank_static(stages)
            if model.forward_only:
                _add(prob, static <= cap, f"memory_r{r}")
                continue
            for i, held in enumerate(self.held(r)):
                _add(prob, static + held <= cap, f"memory_r{r}_v{i}")

    def held(self, rank: int) -> list[pulp.LpAffineExpression]:
        """Activation bytes held at each of the rank's memory-pattern vectors."""
        out = []
        for vec in self.model.memory.ranks[rank]:
            held = pulp.LpAffineExpression()
            for s, (a, k) in vec.items():
                if a:
                    held += a * self.act(s)
                if k:
                    held += k * self.keep(s)
            out.append(held)
        return out

    # -- a given split ----------------------------------------------------------------------------
    def assign(self, bounds: list[tuple[int, int]], options: list[Option]) -> list[pulp.LpVariable]:
        """Set every variable to the split ``bounds`` with ``options[s]`` per stage; the binaries set."""
        ends = [e for _, e in bounds]
        stage_of = [next(s for s, e in enumerate(ends) if u < e) for u in range(self.U)]
        binaries = []
        for u in range(self.U):
            for s in range(self.S):
                if _is_var(self.z[u][s]):
                    self.z[u][s].setInitialValue(1 if stage_of[u] <= s else 0)
                    binaries.append(self.z[u][s])
        for s in range(self.S):
            for o, var in self.c[s].items():
                if _is_var(var):
                    var.setInitialValue(1 if o == options[s] else 0)
                    binaries.append(var)
        for u in range(self.U):
            for s in range(self.S):
                for o, var in self.y[u][s].items():
                    if _is_var(var):
                        var.setInitialValue(1 if stage_of[u] == s and o == options[s] else 0)
        for (u, s, owner, o), q in self._q.items():
            q.setInitialValue(1 if ends[s] == u + 1 and options[owner] == o else 0)
        return binaries

    def bounds(self) -> list[tuple[int, int]]:
        ends = [sum(1 for u in range(self.U) if _val(self.z[u][s]) > 0.5) for s in range(self.S - 1)] + [self.U]
        return list(zip([0] + ends[:-1], ends))

    def chosen(self) -> list[Option]:
        return [max(self.options, key=lambda o: _val(self.c[s][o])) for s in range(self.S)]


def _val(x) -> float:
    return float(pulp.value(x)) if isinstance(x, (pulp.LpVariable, pulp.LpAffineExpression)) else float(x)


def solve_split(
    costs: CostModel,
    model: StepModel,
    memory_bytes: int,
    *,
    time_limit: float | None = None,
    solver: str = "auto",
    exclude: list[list[tuple[int, int]]] = (),
    start: tuple[list[tuple[int, int]], list[Option]] | None = None,
    nodes: int | None = MILP_NODES,
) -> SplitResult | None:
    """Best contiguous split under ``memory_bytes`` per rank by the step model; None when infeasible.

    Bounded by ``nodes`` (branch-and-bound nodes) and, only when given, ``time_limit`` (seconds).

    ``exclude``: splits not to return again (no-good cuts), to get the next-best ones.
    ``start``: a known split and its option per stage, given to the solver as its first answer
    (a MIP start); the solver drops it if it breaks a constraint.
    """
    try:
        return _solve_split(
            costs, model, memory_bytes, limits=(time_limit, nodes), solver=solver, exclude=exclude, start=start
        )
    except _Contradiction:
        return None  # e.g. a stage forced to one unit that does not fit, or every split excluded


def _step_objective(sp: _Split) -> pulp.LpAffineExpression:
    """The step-time model of the module docstring, its variables and rows added to ``sp``."""
    model, prob, S, m = sp.model, sp.prob, sp.S, sp.model.microbatches
    ranks = sorted(set(model.rank_of))
    # the bottleneck per microbatch bounds every rank's work (forward and backward loads apart when phased)
    TF = prob.add_variable("bottleneck_forward_s", lowBound=0)
    TB = prob.add_variable("bottleneck_backward_s", lowBound=0) if model.phased and not model.forward_only else None
    for r in ranks:
        mine = model.stages_of(r)
        if TB is not None:
            _add(prob, TF >= pulp.lpSum(sp.forward(s) for s in mine), f"bottleneck_forward_r{r}")
            _add(prob, TB >= pulp.lpSum(sp.backward(s) for s in mine), f"bottleneck_backward_r{r}")
        else:
            _add(prob, TF >= pulp.lpSum(sp.work(s) for s in mine), f"bottleneck_r{r}")
    T = TF + TB if TB is not None else TF
    if model.virtual == 1:
        # one stage per rank: a microbatch's pass through every stage is the fill and drain
        fill_s = pulp.lpSum(sp.critical(s) for s in range(S))
    else:
        # several stages per rank: the rank's work per microbatch once more, and the fill and
        # drain through p - 1 ranks at the slowest stage ((m + (p-1)/v) t when uniform)
        t_stage = prob.add_variable("slowest_stage_s", lowBound=0)
        for s in range(S):
            _add(prob, t_stage >= sp.critical(s), f"slowest_stage_s{s}")
        fill_s = T + (len(ranks) - 1) * t_stage
    handoffs = pulp.lpSum(sp.sends(s, backward=not model.forward_only) for s in _cross_rank_cuts(model))
    # the end of the step: the slowest rank's all-reduce and optimizer
    tail = prob.add_variable("tail_s", lowBound=0)
    for r in ranks:
        _add(prob, tail >= sp.tail(r), f"tail_r{r}")
    # and its start: the first stage's rank gathers its weights (fsdp) before the first forward
    return sp.head(model.rank_of[0]) + (m - 1) * T + fill_s + handoffs + tail


def _cross_rank_cuts(model: StepModel) -> list[int]:
    return [s for s in range(model.stages - 1) if model.rank_of[s] != model.rank_of[s + 1]]


def _solve_split(
    costs: CostModel, model: StepModel, memory_bytes: int, *, limits, solver: str, exclude, start
) -> SplitResult | None:
    sp = _Split("split", costs, model)
    prob, S = sp.prob, sp.S
    # objective: the step; or, for latency, one microbatch through every stage and every
    # forward hand-off (the split moves only the sends)
    if model.latency:
        forwards = [sp.forward(s) for s in range(S)]
        prob += pipeline_latency(forwards, model.rank_of, lambda s: sp.sends(s, backward=False)), "latency"
    else:
        prob += _step_objective(sp), "step_time"
    # memory: static bytes plus the activations the schedule holds, per rank
    sp.memory_rows(memory_bytes)
    # no-good cuts: not one of the splits already seen
    for i, bounds in enumerate(exclude):
        ends = [e for _, e in bounds[:-1]]
        _add(prob, pulp.lpSum(sp.cut(e - 1, s) for s, e in enumerate(ends)) <= S - 2, f"not_seen_{i}")

    time_limit, nodes = limits
    facts = solve(prob, time_limit, solver, sp.assign(*start) if start else (), nodes=nodes)
    if facts.status == "Infeasible":
        return None
    if facts.status not in ANSWERED:
        raise SolverError(
            f"the {facts.solver} solver ended with status {facts.status} for {S} stages, "
            f"m={model.microbatches} (no split found within its limit)"
        )
    return SplitResult(
        bounds=sp.bounds(),
        options=sp.chosen(),
        objective=_val(prob.objective),
        status=facts.status,
        solver=facts.solver,
        time_s=facts.time_s,
        gap=facts.gap,
        bound=facts.bound,
    )


def min_memory_split(
    costs: CostModel,
    model: StepModel,
    *,
    time_limit: float | None = None,
    solver: str = "auto",
    nodes: int | None = MILP_NODES,
) -> tuple[float, list[tuple[int, int]]]:
    """The smallest per-device memory any split (and option choice) can run in, and that split
    (within ``nodes``: an upper bound on the least memory when the limit ends the search)."""
    sp = _Split("min_memory", costs, model)
    # the peak in GiB: in bytes (1e10 and more) the objective is past the solvers' tolerances, and
    # HiGHS called a feasible model infeasible (or "optimal" at a bound of 0)
    peak = sp.prob.add_variable("peak_gib", lowBound=0)
    sp.prob += peak, "peak_memory"
    sp.memory_rows(peak * 2**30)
    facts = solve(sp.prob, time_limit, solver, nodes=nodes)
    if facts.status not in ANSWERED:
        raise SolverError(f"the {facts.solver} solver ended with status {facts.status} while bounding memory")
    return float(pulp.value(peak)) * 2**30, sp.bounds()


@dataclass(frozen=True, kw_only=True)
class StageTerms:
    """The MILP's per-stage terms at one split, as numbers (to hold against the simulator's)."""

    forward_s: float
    backward_s: float
    backward_input_s: float
    backward_weight_s: float
    static_bytes: float
    activation_bytes: float
    keep_bytes: float
    sends_s: float  # forward hand-off after this stage plus the gradient back (0 for the last)
    grad_bytes: float
    optimizer_s: float


@dataclass(frozen=True)
class SplitTerms:
    """What the MILP's rows and objective are made of, evaluated at one split."""

    stages: list[StageTerms]
    peak_bytes: dict[int, float]  # per rank: static plus the largest memory-pattern vector
    tail_s: dict[int, float]  # per rank: data-parallel communication and optimizer after its last backward
    head_s: dict[int, float]  # per rank: fsdp's gather before its first forward
    admitted: bool  # every memory row holds under the cap given


def stage_terms(
    costs: CostModel, model: StepModel, bounds: list[tuple[int, int]], options: list[Option], cap: float = float("inf")
) -> SplitTerms:
    """The MILP's terms with its variables set to ``bounds`` and ``options``: the very expressions
    its rows and objective are made of, evaluated, and whether its memory rows admit the split
    under ``cap`` bytes per device."""
    sp = _Split("terms", costs, model)
    try:
        sp.memory_rows(cap if cap != float("inf") else 2**62)
        contradiction = False
    except _Contradiction:  # a row the split's band left constant already fails
        contradiction = True
    # build the hand-off products before ``assign``, so that it sets them too
    sends = [sp.sends(s) if model.rank_of[s] != model.rank_of[s + 1] else 0 for s in range(sp.S - 1)] + [0]
    sp.assign(bounds, options)
    stages = [
        StageTerms(
            forward_s=_val(sp.forward(s)),
            backward_s=_val(sp.backward(s)),
            backward_input_s=_val(sp.input(s)),
            backward_weight_s=_val(sp.weight(s)),
            static_bytes=_val(sp.static(s)),
            activation_bytes=_val(sp.act(s)),
            keep_bytes=_val(sp.keep(s)),
            sends_s=_val(sends[s]),
            grad_bytes=_val(sp.grad(s)),
            optimizer_s=_val(sp.optimizer(s)),
        )
        for s in range(sp.S)
    ]
    ranks = sorted(set(model.rank_of))
    peak = {}
    for r in ranks:
        static = _val(sp.rank_static(model.stages_of(r)))
        peak[r] = static + (0.0 if model.forward_only else max(_val(h) for h in sp.held(r)))
    rows = [row for name, row in sp.prob.constraints.items() if name.startswith("memory_")]
    admitted = not contradiction and all(row.valid(eps=1e-6) for row in rows)
    return SplitTerms(
        stages, peak, {r: _val(sp.tail(r)) for r in ranks}, {r: _val(sp.head(r)) for r in ranks}, admitted
    )
