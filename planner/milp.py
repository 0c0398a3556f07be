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
to the product ``member * c``. With one option, ``y`` is simply the membership.

Step-time model (:class:`StepModel`), for a schedule whose stage ``s`` runs on rank
``rank_of[s]``, ``v`` stages per rank and ``m`` microbatches:

    v = 1:  (m - 1) * T  +  sum_s (F_s + Bcrit_s)      +  sum over cuts across ranks of hops * send
    v > 1:  m * T        +  (p - 1) * max_s (F_s + Bcrit_s)  +  the same hand-offs

``T`` bounds every rank's work per microbatch (``sum over its stages of F + B``);
``Bcrit`` is the backward on the critical path (B, or I for zero-bubble schedules);
schedules that run all forwards before all backwards (GPipe, LoopedBFS) bound the
forward and backward loads apart (``(m - 1) * (TF + TB)``). For one stage per rank and
uniform costs this is exactly ``(m + p - 1) * t``, the textbook GPipe/1F1B step; for the
others it is a model, and the search re-scores every answer with the event simulator and
searches around it. Memory per rank: static bytes plus the activations the schedule's
own memory pattern (``memory.py``) holds, which equals the simulator's peak.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pulp

from profiles.contract import UserError

from .memory import Pattern

__all__ = [
    "UnitData",
    "StepModel",
    "SplitResult",
    "SolverError",
    "solve_split",
    "min_memory_split",
    "available_solvers",
]


class SolverError(UserError):
    """The solver did not prove an answer (time limit without a solution, or an error)."""


@dataclass(frozen=True)
class UnitData:
    """One unit's costs under one option (dtype, recompute), per microbatch (seconds, bytes)."""

    forward_s: float
    backward_s: float  # B (including the recomputed forward, when recomputing)
    input_s: float  # I: the part of the backward on the critical path of zero-bubble schedules
    static_bytes: int  # weights, grads, optimizer state
    act_bytes: int  # activations held per microbatch in flight
    send_s: float  # time to send this unit's output to another rank
    keep_fraction: float = 0.5  # share of act_bytes held from I until W
    grad_bytes: int = 0  # gradient bytes all-reduced across data-parallel replicas

    @property
    def work_s(self) -> float:
        return self.forward_s + self.backward_s


@dataclass(frozen=True)
class StepModel:
    """The schedule's step-time and memory model, as the MILP sees it."""

    microbatches: int
    rank_of: tuple[int, ...]  # stage -> rank (Plan.table's placement)
    memory: Pattern  # activations held per rank (from the schedule table)
    split_backward: bool = False  # zero-bubble family: I on the critical path, W fills bubbles
    phased: bool = False  # all forwards before all backwards (GPipe, LoopedBFS)
    forward_only: bool = False  # inference: F only, no activations held, weights only
    latency: bool = False  # minimize one microbatch's pass (forwards and sends) instead of the step

    @property
    def stages(self) -> int:
        return len(self.rank_of)

    @property
    def virtual(self) -> int:
        return max(1, self.stages // (max(self.rank_of) + 1))


@dataclass(frozen=True)
class SplitResult:
    bounds: list[tuple[int, int]]
    options: list[str]  # chosen option per stage
    objective: float
    status: str  # Optimal | TimeLimit (a feasible answer, not proven optimal)
    solver: str
    time_s: float
    gap: float | None  # relative gap between the answer and the best bound (0 when proven)
    bound: float | None = None  # best bound on the objective the solver proved
    facts: dict = field(default_factory=dict)


# -- solvers ----------------------------------------------------------------------------


def available_solvers() -> list[str]:
    have = pulp.listSolvers(onlyAvailable=True)
    return [name for name, key in (("highs", "HiGHS"), ("cbc", "PULP_CBC_CMD")) if key in have]


@contextmanager
def _quiet_stdout():
    """Send fd 1 to /dev/null meanwhile: HiGHS prints its banner there when first built,
    whatever its options (``--json`` must print one object and nothing else)."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _pick(solver: str) -> str:
    have = available_solvers()
    if solver == "auto":
        return "highs" if "highs" in have else "cbc"
    if solver not in ("highs", "cbc"):
        raise UserError(f"--solver {solver}: choose auto, highs or cbc")
    if solver not in have:
        raise UserError(f"--solver {solver} is not installed here (available: {', '.join(have) or 'none'})")
    return solver


@dataclass(frozen=True)
class _Facts:
    status: str  # Optimal | TimeLimit | Infeasible | NoSolution | <solver's own word>
    solver: str
    time_s: float
    gap: float | None
    bound: float | None


class _HiGHS(pulp.HiGHS):
    """pulp's HiGHS, given the MIP start that pulp hands CBC (``warmStart``) but not highspy:
    the variables with an initial value (``setInitialValue``); HiGHS completes the rest."""

    def __init__(self, start: list[pulp.LpVariable], **kwargs):
        super().__init__(**kwargs)
        self.start = start

    def callSolver(self, lp):
        if self.start:
            index = np.array([v.index for v in self.start], dtype=np.int32)
            value = np.array([v.varValue for v in self.start], dtype=np.float64)
            lp.solverModel.setSolution(len(index), index, value)
        super().callSolver(lp)


def _solve(prob: pulp.LpProblem, time_limit: float, solver: str = "auto", start: list[pulp.LpVariable] = ()) -> _Facts:
    """Solve and say what was proven. A time limit is never reported as Optimal. ``start``:
    variables whose initial values form a known answer (a MIP start: an incumbent from the
    first node, so a time limit still returns at least that answer)."""
    name = _pick(solver)
    t0 = time.perf_counter()
    if name == "highs":
        with _quiet_stdout():
            prob.solve(_HiGHS(list(start), msg=False, timeLimit=time_limit, threads=1))
        facts = _highs_facts(prob)
    else:
        facts = _cbc_solve(prob, time_limit, warm=bool(start))
    return _Facts(facts[0], name, time.perf_counter() - t0, facts[1], facts[2])


def _highs_facts(prob) -> tuple[str, float | None, float | None]:
    import highspy

    h = prob.solverModel
    st = h.getModelStatus()
    info = h.getInfo()
    S = highspy.HighsModelStatus
    has_answer = info.primal_solution_status == 2  # kSolutionStatusFeasible
    integer = any(v.cat == pulp.LpInteger for v in prob.variables())
    bound = info.mip_dual_bound if integer else info.objective_function_value
    gap = (info.mip_gap if integer else 0.0) if has_answer else None
    if st == S.kOptimal:
        return "Optimal", gap if gap is not None and gap < 1e30 else 0.0, bound
    if st in (S.kInfeasible, S.kUnboundedOrInfeasible):
        return "Infeasible", None, None
    if st in (S.kTimeLimit, S.kIterationLimit, S.kInterrupt):
        # stopped before the root bound: no gap or bound to report (None, not inf: plans are JSON)
        known = bound is not None and abs(bound) < 1e30
        return ("TimeLimit" if has_answer else "NoSolution"), (gap if known else None), (bound if known else None)
    return h.modelStatusToString(st), None, None


_CBC_RESULT = re.compile(r"^Result - (.*)$", re.M)
_CBC_GAP = re.compile(r"^Gap:\s+([0-9.eE+-]+)", re.M)
_CBC_BOUND = re.compile(r"^Lower bound:\s+([0-9.eE+-]+)", re.M)


def _cbc_solve(prob, time_limit: float, warm: bool = False) -> tuple[str, float | None, float | None]:
    fd, log = tempfile.mkstemp(prefix="pipeplan-cbc-", suffix=".log")
    os.close(fd)
    try:
        prob.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, logPath=log, threads=1, warmStart=warm))
        with open(log, errors="replace") as f:
            text = f.read()
    finally:
        os.unlink(log)
    result = (_CBC_RESULT.findall(text) or [""])[-1]
    gap = float(_CBC_GAP.findall(text)[-1]) if _CBC_GAP.findall(text) else None
    bound = float(_CBC_BOUND.findall(text)[-1]) if _CBC_BOUND.findall(text) else None
    if "infeasible" in result.lower() or prob.status == pulp.LpStatusInfeasible:
        return "Infeasible", None, None
    has_answer = prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)
    if "time" in result.lower() or "Stopped" in result:
        return ("TimeLimit" if has_answer else "NoSolution"), gap, bound
    if prob.status == pulp.LpStatusOptimal and has_answer:
        return "Optimal", gap if gap is not None else 0.0, bound
    return pulp.LpStatus[prob.status], None, None


# -- the model ----------------------------------------------------------------------------


class _Contradiction(Exception):
    """A row without variables that does not hold: the model is infeasible as built."""


def _add(prob: pulp.LpProblem, row, name: str) -> None:
    """``prob += row, name``, except that rows the band left without variables are checked here."""
    if isinstance(row, bool) or not list(row.keys()):
        if not (row if isinstance(row, bool) else row.valid(0)):
            raise _Contradiction(name)
        return
    prob += row, name


def _prefix_model(name: str, options: dict[str, list[UnitData]], S: int, sense=pulp.LpMinimize):
    """Variables and structure shared by every objective: prefix binaries, options, contiguity."""
    labels = list(options)
    U = len(options[labels[0]])
    if S > U:
        raise UserError(f"cannot cut {U} units into {S} stages: lower --pp or --virtual")
    prob = pulp.LpProblem(name, sense)

    # z[u][s] = 1: unit u is in stage s or earlier. Every stage holds a unit, so unit u sits in
    # a stage between S - U + u and u: z is the constant 1 from column u on (and in the last
    # column), the constant 0 before column S - U + u, a binary only in the band between.
    def prefix(u: int, s: int):
        if s >= u or s == S - 1:
            return 1
        if s < S - U + u:
            return 0
        return prob.add_variable(f"z_{u}_{s}", cat="Binary")

    z = [[prefix(u, s) for s in range(S)] for u in range(U)]

    def member(u: int, s: int):
        return z[u][s] - (z[u][s - 1] if s > 0 else 0)

    def free(*xs) -> bool:
        return any(isinstance(x, pulp.LpVariable) for x in xs)

    # contiguity: a unit in stage <= s makes every earlier unit so; stage <= s implies stage <= s+1
    for u in range(U - 1):
        for s in range(S - 1):
            if free(z[u][s], z[u + 1][s]):
                _add(prob, z[u][s] >= z[u + 1][s], f"prefix_u{u}_s{s}")
    for u in range(U):
        for s in range(S - 2):
            if free(z[u][s], z[u][s + 1]):
                _add(prob, z[u][s] <= z[u][s + 1], f"monotone_u{u}_s{s}")
    # every stage holds at least one unit
    for s in range(S):
        _add(prob, pulp.lpSum(member(u, s) for u in range(s, s + U - S + 1)) >= 1, f"nonempty_s{s}")

    # one option per stage; y[u][s][o] is member(u, s) * c[s][o] (see the module docstring)
    if len(labels) == 1:
        c = [{labels[0]: 1} for _ in range(S)]
        y = [[{labels[0]: member(u, s)} for s in range(S)] for u in range(U)]
    else:
        c = [{o: prob.add_variable(f"c_{s}_{i}", cat="Binary") for i, o in enumerate(labels)} for s in range(S)]
        y = [
            [
                {
                    o: (prob.add_variable(f"y_{u}_{s}_{i}", lowBound=0) if s <= u <= s + U - S else 0)
                    for i, o in enumerate(labels)
                }
                for s in range(S)
            ]
            for u in range(U)
        ]
        for s in range(S):
            _add(prob, pulp.lpSum(c[s].values()) == 1, f"one_option_s{s}")
        for s in range(S):
            for u in range(s, s + U - S + 1):
                for i, o in enumerate(labels):
                    _add(prob, y[u][s][o] >= member(u, s) + c[s][o] - 1, f"uses_u{u}_s{s}_o{i}")

    def stage_sum(s: int, value) -> pulp.LpAffineExpression:
        """sum over units of stage s of ``value(unit data)`` under the stage's option (only units
        s .. s + U - S can sit in stage s)."""
        terms: dict = {}
        rest = []
        for u in range(s, s + U - S + 1):
            for o in labels:
                var = y[u][s][o]
                if isinstance(var, pulp.LpVariable):
                    terms[var] = terms.get(var, 0) + value(options[o][u])
                else:
                    rest.append(value(options[o][u]) * var)
        expr = pulp.LpAffineExpression(terms)
        for e in rest:
            expr += e
        return expr

    def cut(u: int, s: int):
        """1 when stage s ends right after unit u."""
        return z[u][s] - z[u + 1][s]

    return prob, z, c, stage_sum, cut


def _memory_rows(prob, model: StepModel, stage_sum, cap) -> None:
    """Per rank and memory-pattern vector: static bytes + activations held <= cap (a number or a variable)."""
    by_rank: dict[int, list[int]] = {}
    for s, r in enumerate(model.rank_of):
        by_rank.setdefault(r, []).append(s)
    for r, stages in sorted(by_rank.items()):
        if model.forward_only:
            static = pulp.lpSum(stage_sum(s, lambda d: d.static_bytes) for s in stages)
            _add(prob, static <= cap, f"memory_r{r}")
            continue
        static = pulp.lpSum(stage_sum(s, lambda d: d.static_bytes) for s in stages)
        act = {s: stage_sum(s, lambda d: d.act_bytes) for s in {s for vec in model.memory.ranks[r] for s in vec}}
        # the first stage has no input gradient: its I is empty and W frees everything, so it
        # keeps all of its activations from I until W (as ``stage_costs`` says, w_keep_fraction 1)
        keep = {s: act[s] if s == 0 else stage_sum(s, lambda d: d.keep_fraction * d.act_bytes) for s in act}
        for i, vec in enumerate(model.memory.ranks[r]):
            terms: dict = {}
            const = 0
            for s, (a, k) in vec.items():
                if not (a or k):
                    continue
                for e, f in ((act[s], a), (keep[s], k)):
                    if f:
                        const += f * e.constant
                        for var, coef in e.items():
                            terms[var] = terms.get(var, 0) + f * coef
            held = pulp.LpAffineExpression(terms, constant=const)
            _add(prob, static + held <= cap, f"memory_r{r}_v{i}")


def solve_split(
    options: dict[str, list[UnitData]],
    model: StepModel,
    memory_bytes: int,
    *,
    time_limit: float = 20.0,
    solver: str = "auto",
    exclude: list[list[tuple[int, int]]] = (),
    start: tuple[list[tuple[int, int]], list[str]] | None = None,
) -> SplitResult | None:
    """Best contiguous split under ``memory_bytes`` per rank by the step model; None when infeasible.

    ``exclude``: splits not to return again (no-good cuts), to get the next-best ones.
    ``start``: a known split and its option per stage, given to the solver as its first answer
    (a MIP start); the solver drops it if it breaks a constraint.
    """
    try:
        return _solve_split(options, model, memory_bytes, time_limit, solver, exclude, start)
    except _Contradiction:
        return None  # e.g. a stage forced to one unit that does not fit, or every split excluded


def _solve_split(
    options, model: StepModel, memory_bytes: int, time_limit: float, solver: str, exclude, start
) -> SplitResult | None:
    S, m = model.stages, model.microbatches
    labels = list(options)
    U = len(options[labels[0]])
    ranks = sorted(set(model.rank_of))
    prob, z, c, stage_sum, cut = _prefix_model("split", options, S)

    # data: per-stage times as expressions of the split and options
    def fwd(s):
        return stage_sum(s, lambda d: d.forward_s)

    def bwd(s):
        return stage_sum(s, lambda d: 0.0 if model.forward_only else d.backward_s)

    def crit(s):
        return stage_sum(
            s,
            lambda d: (
                d.forward_s + (0.0 if model.forward_only else (d.input_s if model.split_backward else d.backward_s))
            ),
        )

    # variables: the bottleneck per microbatch (forward and backward loads apart when phased)
    TF = prob.add_variable("bottleneck_forward_s", lowBound=0)
    TB = prob.add_variable("bottleneck_backward_s", lowBound=0) if model.phased else None
    hops = 1 if model.forward_only else 2
    boundary_s = pulp.lpSum(
        hops * options[labels[0]][u].send_s * cut(u, s)
        for s in range(S - 1)
        if model.rank_of[s] != model.rank_of[s + 1]
        for u in range(s, min(s + U - S + 1, U - 1))
    )
    steady = (m - 1) * (TF + TB if TB is not None else TF)
    if model.virtual == 1:
        # one stage per rank: a microbatch's pass through every stage is the fill and drain
        fill_s = pulp.lpSum(crit(s) for s in range(S))
    else:
        # several stages per rank: the rank's work per microbatch once more, and the fill and
        # drain through p - 1 ranks at the slowest stage ((m + (p-1)/v) t when uniform)
        t_stage = prob.add_variable("slowest_stage_s", lowBound=0)
        for s in range(S):
            _add(prob, t_stage >= crit(s), f"slowest_stage_s{s}")
        fill_s = (TF + TB if TB is not None else TF) + (len(ranks) - 1) * t_stage

    # objective: steady state at the bottleneck, fill and drain, hand-offs across ranks; or, for
    # latency, one microbatch through every stage and every hand-off (the split moves only the sends)
    if model.latency:
        prob += pulp.lpSum(fwd(s) for s in range(S)) + boundary_s, "latency"
    else:
        prob += steady + fill_s + boundary_s, "step_time"

    # the bottleneck bounds every rank's work per microbatch
    for r in ranks:
        mine = [s for s in range(S) if model.rank_of[s] == r]
        if TB is not None:
            _add(prob, TF >= pulp.lpSum(fwd(s) for s in mine), f"bottleneck_forward_r{r}")
            _add(prob, TB >= pulp.lpSum(bwd(s) for s in mine), f"bottleneck_backward_r{r}")
        else:
            _add(prob, TF >= pulp.lpSum(fwd(s) + bwd(s) for s in mine), f"bottleneck_r{r}")

    # memory: static bytes plus the activations the schedule holds, per rank
    _memory_rows(prob, model, stage_sum, memory_bytes)

    # no-good cuts: not one of the splits already seen
    for i, bounds in enumerate(exclude):
        ends = [e for _, e in bounds[:-1]]
        _add(prob, pulp.lpSum(cut(e - 1, s) for s, e in enumerate(ends)) <= S - 2, f"not_seen_{i}")

    facts = _solve(prob, time_limit, solver, _start_values(z, c, *start) if start else ())
    if facts.status == "Infeasible":
        return None
    if facts.status not in ("Optimal", "TimeLimit"):
        raise SolverError(
            f"the {facts.solver} solver ended with status {facts.status} for {S} stages, m={m} "
            f"after {facts.time_s:.1f} s: raise --time-limit"
        )
    chosen = [max(labels, key=lambda o: _val(c[s][o])) for s in range(S)]
    return SplitResult(
        _bounds(z, U, S), chosen, _val(prob.objective), facts.status, facts.solver, facts.time_s, facts.gap, facts.bound
    )


def min_memory_split(
    options: dict[str, list[UnitData]], model: StepModel, *, time_limit: float = 20.0, solver: str = "auto"
) -> tuple[float, list[tuple[int, int]]]:
    """The smallest per-device memory any split (and option choice) can run in, and that split."""
    S = model.stages
    U = len(next(iter(options.values())))
    prob, z, _, stage_sum, _ = _prefix_model("min_memory", options, S)
    peak = prob.add_variable("peak_bytes", lowBound=0)
    prob += peak, "peak_memory"
    _memory_rows(prob, model, stage_sum, peak)
    facts = _solve(prob, time_limit, solver)
    if facts.status not in ("Optimal", "TimeLimit"):
        raise SolverError(f"the {facts.solver} solver ended with status {facts.status} while bounding memory")
    return float(pulp.value(peak)), _bounds(z, U, S)


def _start_values(z, c, bounds: list[tuple[int, int]], labels: list[str]) -> list[pulp.LpVariable]:
    """Set the binaries to the split ``bounds`` with option ``labels[s]`` per stage; the ones set."""
    out = []
    for s, (_, end) in enumerate(bounds):
        for u in range(len(z)):
            if isinstance(z[u][s], pulp.LpVariable):
                z[u][s].setInitialValue(1 if u < end else 0)
                out.append(z[u][s])
        for o, var in c[s].items():
            if isinstance(var, pulp.LpVariable):
                var.setInitialValue(1 if o == labels[s] else 0)
                out.append(var)
    return out


def _val(x) -> float:
    return float(pulp.value(x)) if isinstance(x, (pulp.LpVariable, pulp.LpAffineExpression)) else float(x)


def _bounds(z, U: int, S: int) -> list[tuple[int, int]]:
    ends = [sum(1 for u in range(U) if _val(z[u][s]) > 0.5) for s in range(S - 1)] + [U]
    return list(zip([0] + ends[:-1], ends))
