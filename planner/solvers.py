"""The MILP solvers behind PuLP: HiGHS (through highspy) when installed, else CBC, with what
each proved (status, gap, bound) read back, a MIP start handed to either, and a limit never
reported as Optimal.

A solve is bounded by work, not by the clock: at most ``nodes`` branch-and-bound nodes, one
thread, so the same model gives the same answer on a quiet machine and a busy one. A wall-clock
``time_limit`` is applied only when a caller asks for one (``--time-limit``)."""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pulp

from profiles.contract import UserError

__all__ = ["SolverError", "Facts", "ANSWERED", "available_solvers", "solve"]

#: statuses that come with an answer: proven optimal, or the best found within a limit
ANSWERED = ("Optimal", "NodeLimit", "TimeLimit")


class SolverError(UserError):
    """The solver did not prove an answer (time limit without a solution, or an error)."""


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
class Facts:
    status: str  # Optimal | NodeLimit | TimeLimit | Infeasible | NoSolution | <solver's own word>
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

    def findSolutionValues(self, lp):
        # pulp has no entry for the node limit's status (kSolutionLimit): read the answer here
        import highspy

        h = lp.solverModel
        if h.getModelStatus() != highspy.HighsModelStatus.kSolutionLimit:
            return super().findSolutionValues(lp)
        values = h.getSolution().col_value
        for var in lp.variables():
            var.varValue = values[var.index]
        if h.getInfo().primal_solution_status == 2:  # kSolutionStatusFeasible
            return pulp.LpStatusOptimal, pulp.LpSolutionIntegerFeasible
        return pulp.LpStatusNotSolved, pulp.LpSolutionNoSolutionFound


def solve(
    prob: pulp.LpProblem,
    time_limit: float | None = None,
    solver: str = "auto",
    start: list[pulp.LpVariable] = (),
    nodes: int | None = None,
) -> Facts:
    """Solve and say what was proven. A limit is never reported as Optimal. ``nodes``: the most
    branch-and-bound nodes (the work bound; None: no bound); ``time_limit``: wall seconds, only
    when given. ``start``: variables whose initial values form a known answer (a MIP start: an
    incumbent from the first node, so a limit still returns at least that answer)."""
    name = _pick(solver)
    t0 = time.perf_counter()
    if name == "highs":
        limits = {"timeLimit": time_limit} if time_limit is not None else {}
        if nodes is not None:
            limits["mip_max_nodes"] = int(nodes)
        with _quiet_stdout():
            prob.solve(_HiGHS(list(start), msg=False, threads=1, **limits))
        facts = _highs_facts(prob)
    else:
        facts = _cbc_solve(prob, time_limit, nodes, warm=bool(start))
    return Facts(facts[0], name, time.perf_counter() - t0, facts[1], facts[2])


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
    if st in (S.kTimeLimit, S.kIterationLimit, S.kInterrupt, S.kSolutionLimit):
        # stopped before the root bound: no gap or bound to report (None, not inf: plans are JSON)
        known = bound is not None and abs(bound) < 1e30
        limit = "NodeLimit" if st == S.kSolutionLimit else "TimeLimit"
        return (limit if has_answer else "NoSolution"), (gap if known else None), (bound if known else None)
    return h.modelStatusToString(st), None, None


_CBC_RESULT = re.compile(r"^Result - (.*)$", re.M)
_CBC_GAP = re.compile(r"^Gap:\s+([0-9.eE+-]+)", re.M)
_CBC_BOUND = re.compile(r"^Lower bound:\s+([0-9.eE+-]+)", re.M)


def _cbc_solve(prob, time_limit: float | None, nodes: int | None, warm: bool = False):
    fd, log = tempfile.mkstemp(prefix="pipeplan-cbc-", suffix=".log")
    os.close(fd)
    try:
        prob.solve(
            pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, maxNodes=nodes, logPath=log, threads=1, warmStart=warm)
        )
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
    if "node" in result.lower():
        return ("NodeLimit" if has_answer else "NoSolution"), gap, bound
    if "time" in result.lower() or "Stopped" in result:
        return ("TimeLimit" if has_answer else "NoSolution"), gap, bound
    if prob.status == pulp.LpStatusOptimal and has_answer:
        return "Optimal", gap if gap is not None else 0.0, bound
    return pulp.LpStatus[prob.status], None, None
