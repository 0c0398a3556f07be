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
(``keep = act * w_keep_fraction``; the simulator rounds keep down to whole bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.actions import Kind, Table, stage_ranks
from simulator.costs import StageCost

__all__ = ["Pattern", "memory_pattern", "peak_bytes"]


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
        vectors: set[tuple[tuple[int, int], ...]] = set()
        for act in acts:
            s = act.stage
            if act.kind is Kind.F:
                if forward_only:
                    continue
                a[s] += 1
                vectors.add(tuple((a[t], k[t]) for t in mine))
            elif act.kind is Kind.B:
                a[s] -= 1
            elif act.kind is Kind.I:
                a[s] -= 1
                k[s] += 1
            else:
                k[s] -= 1
        out[r] = [dict(zip(mine, v)) for v in _pareto(vectors)] or [{s: (0, 0) for s in mine}]
    return Pattern(out)


def _pareto(vectors) -> list[tuple]:
    """The vectors no other one dominates, largest first. A vector's dominators sort before it
    (descending), and a dominated dominator's own dominator is kept, so checking each vector
    against the kept ones only is enough: O(n * kept) instead of O(n^2)."""
    kept: list[tuple] = []
    for v in sorted(vectors, reverse=True):
        if not any(_dominates(w, v) for w in kept):
            kept.append(v)
    return kept


def _dominates(w, v) -> bool:
    return all(wa >= va and wk >= vk for (wa, wk), (va, vk) in zip(w, v))


def peak_bytes(pattern: Pattern, costs: list[StageCost], forward_only: bool = False) -> dict[int, int]:
    """Peak bytes per rank by the pattern (what the MILP bounds), to compare with ``simulate``."""
    out = {}
    for r, vectors in pattern.ranks.items():
        stages = list(vectors[0])
        static = sum(costs[s].param_bytes if forward_only else costs[s].static_bytes for s in stages)
        acts = 0 if forward_only else max(
            sum(a * costs[s].activation_bytes + k * int(costs[s].activation_bytes * costs[s].w_keep_fraction)
                for s, (a, k) in v.items()) for v in vectors)
        out[r] = static + acts
    return out
