"""Activation memory as each schedule keeps it, read from the schedule table itself.

The simulator's memory model (``simulator/engine.py``) depends only on the order of a
rank's actions, never on their times: a forward adds its stage's activation bytes when
it starts, a full backward (B) frees them when it ends, an input backward (I) frees all
but ``keep`` of them, and the weight backward (W) frees the rest. So a rank's peak is
reached at the start of one of its forwards, where the bytes held are

    sum over the rank's stages s of  a_s * act_s + k_s * keep_s

with ``a_s = #F - #B - #I`` and ``k_s = #I - #W`` counted over the actions so far.
One such coefficient vector per forward, with the dominated ones dropped, is the
schedule's *memory pattern*: 1F1B gives ``a = p - s`` on stage s, GPipe ``a = m``,
the interleaved, zero-bubble and V schedules their own vectors. The MILP bounds every
vector of every rank by the device memory, so its memory model equals the simulator's
(both read ``StageCost.activation_bytes`` and ``keep_bytes`` from the one cost layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.actions import Kind, Table, flat_actions, stage_ranks
from simulator.costs import CostModel, Option, StageCost

__all__ = ["Pattern", "memory_pattern", "peak_bytes", "static_bytes", "over_cap", "fitting_options"]


@dataclass(frozen=True)
class Pattern:
    """Per rank: the non-dominated vectors ``{stage: (a_s, k_s)}`` at the rank's forward starts."""

    ranks: dict[int, list[dict[int, tuple[int, int]]]]

    def key(self) -> tuple:
        """Hashable form: two schedules with equal keys keep memory alike (the MILP can be reused)."""
        return tuple((r, tuple(tuple(sorted(v.items())) for v in vs)) for r, vs in sorted(self.ranks.items()))

    def max_in_flight(self, stage: int) -> int:
        """Most microbatches of ``stage`` whose full activations are held at once."""
        return max((v.get(stage, (0, 0))[0] for vs in self.ranks.values() for v in vs), default=0)


def memory_pattern(table: Table, forward_only: bool = False) -> Pattern:
    owner = stage_ranks(table)
    out: dict[int, list[dict[int, tuple[int, int]]]] = {}
    for r, acts in table.items():
        mine = sorted(s for s, o in owner.items() if o == r)
        a = {s: 0 for s in mine}
        k = {s: 0 for s in mine}
        vectors: set[tuple[int, ...]] = set()  # flat (a_0, k_0, a_1, k_1, ...) over ``mine``
        rising = False  # forwards since the last action that frees memory
        for act in flat_actions(acts):
            s = act.stage
            if act.kind is Kind.F:
                if not forward_only:
                    a[s] += 1
                    rising = True
                continue
            if rising:  # a run of forwards only adds: its last vector dominates the others
                vectors.add(tuple(x for t in mine for x in (a[t], k[t])))
                rising = False
            if act.kind is Kind.B:
                a[s] -= 1
            elif act.kind is Kind.I:
                a[s] -= 1
                k[s] += 1
            else:
                k[s] -= 1
        if rising:
            vectors.add(tuple(x for t in mine for x in (a[t], k[t])))
        out[r] = [{t: (v[2 * i], v[2 * i + 1]) for i, t in enumerate(mine)} for v in _pareto(vectors)] or [
            {s: (0, 0) for s in mine}
        ]
    return Pattern(out)


def _pareto(vectors: set[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The vectors no other one dominates (>= in every entry), largest first. The vectors are
    distinct, so ``w >= v`` entrywise with ``w`` another vector is dominance; all pairs at once
    (n x n x entries booleans: n is at most a rank's forwards, a few thousand entries each)."""
    order = sorted(vectors, reverse=True)
    if len(order) < 2:
        return order
    arr = np.array(order, dtype=np.int64)
    covers = (arr[:, None, :] >= arr[None, :, :]).all(axis=2)  # covers[w, v]: w >= v in every entry
    np.fill_diagonal(covers, False)
    dominated = covers.any(axis=0)
    return [v for v, d in zip(order, dominated) if not d]


def static_bytes(
    rank_of: dict[int, int], costs: list[StageCost], forward_only: bool = False, *, per_rank: int = 0
) -> dict[int, int]:
    """Bytes per rank before any activation: weights, gradients and optimizer state (weights
    only when serving). A lower bound on the peak that needs no schedule table. ``per_rank``:
    bytes every training rank holds once besides its stages' (``CostModel.per_rank_bytes``)."""
    out: dict[int, int] = {}
    for s, r in rank_of.items():
        held = costs[s].param_bytes if forward_only else costs[s].static_bytes
        out[r] = out.get(r, 0 if forward_only else per_rank) + held
    return out


def peak_bytes(
    pattern: Pattern, costs: list[StageCost], forward_only: bool = False, *, per_rank: int = 0
) -> dict[int, int]:
    """Peak bytes per rank by the pattern (what the MILP bounds), to compare with ``simulate``."""
    rank_of = {s: r for r, vectors in pattern.ranks.items() for s in vectors[0]}
    static = static_bytes(rank_of, costs, forward_only, per_rank=per_rank)
    out = {}
    for r, vectors in pattern.ranks.items():
        acts = (
            0
            if forward_only
            else max(
                sum(a * costs[s].activation_bytes + k * costs[s].keep_bytes for s, (a, k) in v.items()) for v in vectors
            )
        )
        out[r] = static[r] + acts
    return out


def over_cap(
    pattern: Pattern, costs: list[StageCost], cap: float, forward_only: bool = False, *, per_rank: int = 0
) -> set[int]:
    """The ranks whose static bytes, or whose peak by the schedule's memory pattern, exceed ``cap``."""
    rank_of = {s: r for r, vectors in pattern.ranks.items() for s in vectors[0]}
    over = {r for r, b in static_bytes(rank_of, costs, forward_only, per_rank=per_rank).items() if b > cap}
    if over:  # the weights alone overflow: the activations need not be counted
        return over
    return {r for r, b in peak_bytes(pattern, costs, forward_only, per_rank=per_rank).items() if b > cap}


def fitting_options(
    model: CostModel,
    bounds: list[tuple[int, int]],
    pattern: Pattern,
    cap: float,
    forward_only: bool = False,
    allowed: list[list[Option]] | None = None,
) -> list[Option] | None:
    """Per-stage options under which the split ``bounds`` fits ``cap`` on every rank, or None.

    ``allowed``: each stage's choices (default: every option of ``model``). The first option
    allowed on every stage that fits them all; else, from each stage's fastest option, the stages
    of every rank over the cap move to their fastest option that holds less, until each rank fits.
    """
    n, per_rank = len(bounds), model.per_rank_bytes
    allowed = allowed or [model.options] * n
    for option in model.options:
        if all(option in a for a in allowed) and not over_cap(
            pattern, model.stage_costs(bounds, [option] * n), cap, forward_only, per_rank=per_rank
        ):
            return [option] * n
    priced = {o: model.stage_costs(bounds, [o] * n) for o in model.options}
    order = {o: i for i, o in enumerate(model.options)}
    rank_of = {s: r for r, vectors in pattern.ranks.items() for s in vectors[0]}

    def time_s(o: Option, st: int) -> float:
        c = priced[o][st]
        return c.forward_s + (0.0 if forward_only else c.backward_s)

    def held(o: Option, st: int) -> int:
        return priced[o][st].static_bytes + priced[o][st].activation_bytes

    choice = [min(allowed[st], key=lambda o: (time_s(o, st), order[o])) for st in range(n)]
    while True:
        over = over_cap(pattern, [priced[o][st] for st, o in enumerate(choice)], cap, forward_only, per_rank=per_rank)
        if not over:
            return choice
        moved = False
        for st in range(n):
            lighter = [o for o in allowed[st] if rank_of[st] in over and held(o, st) < held(choice[st], st)]
            if lighter:
                choice[st] = min(lighter, key=lambda o: (time_s(o, st), order[o]))
                moved = True
        if not moved:
            return None
