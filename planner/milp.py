"""The split MILP: where to cut a chain of units into ``p`` contiguous stages.

Variables are cumulative ("prefix") binaries: ``z[u][s] = 1`` when unit ``u`` sits in
stage ``s`` or earlier. Contiguity is then two families of inequalities, and a unit's
membership of stage ``s`` is ``z[u][s] - z[u][s-1]``: linear, no unit x stage products.

Step-time model (one stage per rank, GPipe or 1F1B, m microbatches):
``(m - 1) * T + sum_s (F_s + B_s) + 2 * sum_boundaries transfer``, where ``T >= F_s + B_s``
for every stage. ``sum_s (F_s + B_s)`` is the same for every split, so the objective is
``(m - 1) * T`` plus the fill/drain transfers. Memory per stage: static bytes plus the
activations of the microbatches the schedule keeps in flight there (1F1B: ``min(m, p - s)``
on stage s; GPipe: ``m``). The simulator re-scores every answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pulp

from profiles.contract import UserError

__all__ = ["UnitData", "SplitResult", "solve_split", "min_memory_split", "SolverError", "in_flight"]


class SolverError(UserError):
    """The solver did not prove an answer (time limit without a solution, or an error)."""


@dataclass(frozen=True)
class UnitData:
    """Per-unit inputs of the MILP (seconds, bytes)."""

    work_s: float  # F + B of one microbatch
    static_bytes: int  # weights, grads, optimizer state
    act_bytes: int  # activations saved per microbatch in flight
    send_s: float  # time to send this unit's output to another rank


@dataclass(frozen=True)
class SplitResult:
    bounds: list[tuple[int, int]]
    objective: float
    status: str
    solver: str
    time_s: float
    gap: float | None


def in_flight(schedule: str, p: int, s: int, m: int) -> int:
    """Microbatches whose activations stage ``s`` holds at its peak."""
    return m if schedule == "GPipe" else min(m, p - s)


def _solver(time_limit: float):
    # CBC (bundled with PuLP 3.x) by default: HiGHS through highspy prints a banner on stdout.
    return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit), "CBC"


def _prefix_model(name: str, units: list[UnitData], p: int, sense=pulp.LpMinimize):
    U = len(units)
    if p > U:
        raise UserError(f"cannot cut {U} units into {p} stages: lower --pp")
    prob = pulp.LpProblem(name, sense)
    # z[u][s] = 1: unit u is in stage s or earlier; the last stage's column is the constant 1
    z = [[pulp.LpVariable(f"z_{u}_{s}", cat="Binary") for s in range(p - 1)] + [1] for u in range(U)]

    def member(u: int, s: int):
        return z[u][s] - (z[u][s - 1] if s > 0 else 0)

    # contiguity: earlier units sit in earlier stages; a unit in stage <= s is in stage <= s+1
    for u in range(U - 1):
        for s in range(p - 1):
            prob += z[u][s] >= z[u + 1][s], f"prefix_u{u}_s{s}"
    for u in range(U):
        for s in range(p - 2):
            prob += z[u][s] <= z[u][s + 1], f"monotone_u{u}_s{s}"
    # every stage holds at least one unit
    for s in range(p):
        prob += pulp.lpSum(member(u, s) for u in range(U)) >= 1, f"nonempty_s{s}"
    return prob, z, member


def _solve(prob: pulp.LpProblem, time_limit: float) -> tuple[str, str, float, float | None]:
    solver, solver_name = _solver(time_limit)
    t0 = time.perf_counter()
    prob.solve(solver)
    elapsed = time.perf_counter() - t0
    status = pulp.LpStatus[prob.status]
    gap = None
    if status == "Optimal" and elapsed >= time_limit * 0.98:
        status = "TimeLimit"  # never trust "Optimal" after a time limit
    if status not in ("Optimal", "TimeLimit"):
        return status, solver_name, elapsed, gap
    return status, solver_name, elapsed, gap


def _bounds(z, U: int, p: int) -> list[tuple[int, int]]:
    ends = []
    for s in range(p - 1):
        ends.append(sum(1 for u in range(U) if pulp.value(z[u][s]) > 0.5))
    ends.append(U)
    firsts = [0] + ends[:-1]
    return list(zip(firsts, ends))


def solve_split(units: list[UnitData], p: int, m: int, memory_bytes: int, schedule: str = "1F1B",
                time_limit: float = 20.0) -> SplitResult | None:
    """Best contiguous split into ``p`` stages under ``memory_bytes`` per stage; None when infeasible."""
    U = len(units)
    prob, z, member = _prefix_model("split", units, p)
    T = pulp.LpVariable("bottleneck_s", lowBound=0)
    # objective: steady-state bottleneck plus the transfers of fill and drain
    boundary_s = pulp.lpSum(2 * units[u].send_s * (z[u][s] - z[u + 1][s]) for s in range(p - 1) for u in range(U - 1))
    prob += (m - 1) * T + boundary_s, "step_time"
    # the bottleneck bounds every stage's work per microbatch
    for s in range(p):
        prob += T >= pulp.lpSum(units[u].work_s * member(u, s) for u in range(U)), f"bottleneck_s{s}"
    # memory: static bytes plus activations of the microbatches in flight on the stage
    for s in range(p):
        k = in_flight(schedule, p, s, m)
        prob += pulp.lpSum((units[u].static_bytes + k * units[u].act_bytes) * member(u, s) for u in range(U)) \
            <= memory_bytes, f"memory_s{s}"
    status, solver, elapsed, gap = _solve(prob, time_limit)
    if status == "Infeasible":
        return None
    if status not in ("Optimal", "TimeLimit") or pulp.value(T) is None:
        raise SolverError(f"the {solver} solver ended with status {status} for p={p}, m={m}: raise the time limit")
    return SplitResult(_bounds(z, U, p), float(pulp.value(prob.objective)), status, solver, elapsed, gap)


def min_memory_split(units: list[UnitData], p: int, m: int, schedule: str = "1F1B",
                     time_limit: float = 20.0) -> tuple[float, list[tuple[int, int]]]:
    """The smallest per-device memory any split into ``p`` stages can run in, and that split."""
    U = len(units)
    prob, z, member = _prefix_model("min_memory", units, p)
    peak = pulp.LpVariable("peak_bytes", lowBound=0)
    prob += peak, "peak_memory"
    for s in range(p):
        k = in_flight(schedule, p, s, m)
        prob += peak >= pulp.lpSum((units[u].static_bytes + k * units[u].act_bytes) * member(u, s)
                                   for u in range(U)), f"memory_s{s}"
    status, solver, _, _ = _solve(prob, time_limit)
    if status not in ("Optimal", "TimeLimit"):
        raise SolverError(f"the {solver} solver ended with status {status} while bounding memory")
    return float(pulp.value(peak)), _bounds(z, U, p)
