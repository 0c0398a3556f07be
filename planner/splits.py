"""Contiguous splits of a chain of units into stages: the one min-max splitter and the even deal.

The search's screen (work per unit), the DeepSpeed-style baseline (parameters per unit) and
the executor's validation plans (time per unit) all cut with :func:`min_max_split`.
"""

from __future__ import annotations

from collections.abc import Sequence

from profiles.contract import UserError

__all__ = ["even_split", "min_max_split"]


def even_split(num_units: int, p: int) -> list[tuple[int, int]]:
    """Units dealt as evenly as possible, the extra ones to the first stages."""
    if p > num_units:
        raise UserError(f"cannot cut {num_units} units into {p} stages: lower --pp")
    q, r = divmod(num_units, p)
    bounds, first = [], 0
    for s in range(p):
        end = first + q + (1 if s < r else 0)
        bounds.append((first, end))
        first = end
    return bounds


def min_max_split(weights: Sequence[float], S: int) -> list[tuple[int, int]]:
    """The contiguous split into ``S`` non-empty stages whose heaviest stage is lightest.

    Binary search on the largest stage weight with a greedy check: a stage takes units while
    they fit under the cap and enough units are left for the stages after it. (DeepSpeed's
    ``partition_balanced`` solves the same problem for parameter counts.)"""
    U = len(weights)
    if S > U:
        raise UserError(f"cannot cut {U} units into {S} stages: lower --pp or --virtual")

    def cut(cap: float) -> list[int] | None:
        ends, acc = [], 0.0
        for u, w in enumerate(weights):
            if w > cap:
                return None
            stages_left = S - len(ends)  # the current one included
            if u > 0 and len(ends) < S - 1 and (acc + w > cap or U - u == stages_left - 1):
                ends.append(u)
                acc = 0.0
            acc += w
            if acc > cap:
                return None  # the last stage, past the cuts it may make, holds more than the cap
        return ends if len(ends) == S - 1 else None

    lo, hi = max(weights, default=0.0), float(sum(weights))
    for _ in range(60):
        mid = (lo + hi) / 2
        if cut(mid) is None:
            lo = mid
        else:
            hi = mid
    ends = cut(hi) or list(range(1, S))
    edges = [0, *ends, U]
    return list(zip(edges[:-1], edges[1:]))
