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
from simulator.costs import StageCost

__all__ = ["Pattern", "memory_pattern", "peak_bytes", "static_bytes"]


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


def static_bytes(rank_of: dict[int, int], costs: list[StageCost], forward_only: bool = False) -> dict[int, int]:
    """Bytes per rank before any activation: weights, gradients and optimizer state (weights
    only when serving). A lower bound on the peak that needs no schedule table."""
    out: dict[int, int] = {}
    for s, r in rank_of.items():
        out[r] = out.get(r, 0) + (costs[s].param_bytes if forward_only else costs[s].static_bytes)
    return out


def peak_bytes(pattern: Pattern, costs: list[StageCost], forward_only: bool = False) -> dict[int, int]:
    """Peak bytes per rank by the pattern (what the MILP bounds), to compare with ``simulate``."""
    static = static_bytes({s: r for r, vectors in pattern.ranks.items() for s in vectors[0]}, costs, forward_only)
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
