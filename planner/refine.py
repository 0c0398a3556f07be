"""Refinement: the simulated optimum near the MILP's answer.

The MILP's step time is a model (exact for one stage per rank with uniform costs, a model
for interleaved, zero-bubble and V schedules and for transfers), so the best few answers
are searched around with the event simulator: the MILP's next-best splits (no-good cuts),
the even split, and a hill-climb over cut moves and one stage's option at a time from each,
within a budget of simulations that shrinks as the table grows.
"""

from __future__ import annotations

from dataclasses import replace
from itertools import combinations

from .candidate import Candidate
from .milp import solve_split
from .plan import Plan
from .scoring import Context, build_plan, fits, objective_s
from .solvers import ANSWERED
from .splits import even_split

__all__ = ["refine", "REFINE_WITHIN", "REFINE_AT_LEAST", "ALTERNATIVES"]

REFINE_WITHIN = 0.15  # refine every candidate simulated within 15% of the best ...
REFINE_AT_LEAST = 6  # ... up to max(top, this many)
ALTERNATIVES = 1  # next-best MILP splits (no-good cuts) tried per refined plan (small chains)
#: schedule actions one refined plan may simulate (at least 12 simulations, at most 200): the
#: refinement's work bound
REFINE_ACTIONS = 150_000


def refine(ctx: Context, p: Plan, stats, *, alternatives: int = ALTERNATIVES) -> Plan:
    """Best simulated plan among the MILP's next-best splits (``alternatives`` of them) and their cut
    neighbourhoods, all of ``p``'s candidate (``Candidate.of_plan``). ``ctx``: the job's shared
    inputs (its CostModels, step models, and how its MILPs are solved); ``stats``: the search's
    ``SearchStats`` (simulations and MILPs are counted there). Bounded by a number of simulations
    that shrinks as the table grows, never by the clock."""
    c = Candidate.of_plan(p)
    costs, model = ctx.costs(c.mbs, c.layout), ctx.model(c)
    actions = sum(len(a) for a in p.table.values())
    budget = max(12, min(200, REFINE_ACTIONS // max(actions, 1)))  # simulations allowed here
    options = [s.option for s in p.stages]
    seen = {(tuple(p.bounds), tuple(options))}
    best = p

    def score(bounds, opts=None) -> Plan | None:
        nonlocal budget
        opts = list(opts or options)
        if (tuple(bounds), tuple(opts)) in seen or budget <= 0:
            return None
        seen.add((tuple(bounds), tuple(opts)))
        budget -= 1
        stats.simulations += 1
        q = build_plan(ctx, c, bounds, opts, solver={**p.solver, "refined": "neighbourhood"}, costs=costs)
        return q if fits(q) else None

    # the MILP's next-best splits
    exclude = [list(p.bounds)]
    starts = [p]
    for _ in range(alternatives):
        if budget <= 0 or p.solver.get("status") not in ANSWERED:
            break
        res = solve_split(
            costs, model, p.cluster.memory_bytes, time_limit=ctx.time_limit, solver=ctx.solver, exclude=exclude
        )
        stats.milps += 1
        if res is None:
            break
        exclude.append(res.bounds)
        if res.options != options:
            continue
        q = score(res.bounds)
        if q is not None:
            starts.append(replace(q, solver={**p.solver, "refined": "next-best MILP split"}))
    q = score(even_split(p.stages[-1].end, len(p.stages)))  # and the even split, as one more start
    if q is not None:
        starts.append(q)
    # hill-climb from each start: move one cut by up to three units, two cuts by one unit
    # (same or opposite ways), or, with few cuts, any larger subset by one unit; then change one
    # stage's option (precision, recompute)
    for start in sorted(starts, key=objective_s):
        here = _climb(start, score, lambda: budget, costs.options)
        if objective_s(here) < objective_s(best):
            best = here
    return best


def _climb(best: Plan, score, budget_left, choices) -> Plan:
    improved = True
    while improved and budget_left() > 0:
        improved = False
        opts = [s.option for s in best.stages]
        cuts = [f for f, _ in best.bounds[1:]]
        U = best.stages[-1].end
        n = len(cuts)
        moves = [((i,), d) for d in (1, -1, 2, -2, 3, -3) for i in range(n)]
        moves += [((i, j), d) for d in (1, -1) for i in range(n) for j in range(i + 1, n)]
        moves += [((i, j), (d, -d)) for d in (1, -1) for i in range(n) for j in range(i + 1, n)]
        if 2 < n <= 5:
            moves += [(sub, d) for d in (1, -1) for k in range(3, n + 1) for sub in combinations(range(n), k)]
        for which, d in moves:
            new = list(cuts)
            for i, step in zip(which, d if isinstance(d, tuple) else (d,) * len(which)):
                new[i] += step
            edges = [0, *new, U]
            if any(b <= a for a, b in zip(edges, edges[1:])):
                continue
            q = score(list(zip(edges[:-1], edges[1:])), opts)
            if q is not None and objective_s(q) < objective_s(best) * (1 - 1e-12):
                best, improved = q, True
                break
        if improved:
            continue
        for i, o in ((i, o) for i in range(len(opts)) for o in choices if o != opts[i]):
            q = score(best.bounds, opts[:i] + [o] + opts[i + 1 :])
            if q is not None and objective_s(q) < objective_s(best) * (1 - 1e-12):
                best, improved = q, True
                break
    return best
