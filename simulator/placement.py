"""Tables for an explicit placement: any stage -> rank map, the ``Custom`` schedule.

``placement_table(placement, m)`` builds a compute-only table (F and full B, no I/W split)
for stages placed anywhere: a rank may hold any number of stages, not necessarily
consecutive ones (e.g. ``[0, 1, 0]``: rank 0 holds the first and the last stage). The
placement is then read back from the table (``stage_ranks``), as for every schedule.

How it is built: a dependency-driven list schedule, 1F1B-like, played out in time. Each
time a rank is free it starts one action that is ready (what it needs has ended): a
backward if one is ready, else a forward, oldest microbatch first; with nothing ready it
waits for the next action to end. A stage ``s`` of ``S`` keeps at most ``S - s``
microbatches in flight (forward started, backward not yet), as 1F1B keeps ``p - s`` on
one stage per rank, so memory stays bounded. Durations are one unit per action unless
given (the planner gives each stage's F and B time, so a rank holding two stages
interleaves them as their times need). On the 1F1B placement with unit durations this
gives exactly 1F1B's table (tests/test_sim_placement.py).

Why it cannot deadlock: the oldest unfinished microbatch always has a ready action or
one running (its forwards run stage by stage, and in-flight caps only count older
microbatches, which are done), so time always moves on to a next start; and each rank's
order follows one global order (start times) in which every action comes after what it
needs, so the executor and the simulator run it to the end whatever the real durations.

Assumed: the durations order the table only; transfers are not in them, and the event
simulator times the table with the plan's own costs and links.
"""

from __future__ import annotations

import heapq
from typing import NamedTuple

from .actions import Action, Kind, ScheduleError, Table

__all__ = ["placement_table", "check_placement", "parse_placement", "most_stages_per_rank"]


def parse_placement(text: str) -> list[int]:
    """``"0,1,0"`` -> ``[0, 1, 0]`` (stage -> rank), checked by ``check_placement``."""
    try:
        placement = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ScheduleError(
            f"--placement {text}: give the rank of each stage, comma-separated, e.g. --placement 0,1,0"
        ) from None
    check_placement(placement)
    return placement


def check_placement(placement: list[int], pp: int | None = None) -> None:
    """Raise ScheduleError naming ``--placement`` and the fix: ranks are 0..p-1, each with a stage."""
    if not placement:
        raise ScheduleError("--placement is empty: give the rank of each stage, e.g. --placement 0,1,0")
    if min(placement) < 0:
        raise ScheduleError(f"--placement {_text(placement)}: ranks are numbered from 0")
    ranks = max(placement) + 1 if pp is None else pp
    used = set(placement)
    # the first idle rank is among the first len + 1 (len stages cannot fill more): the scan stays
    # short whatever number is typed
    idle = [r for r in range(min(ranks, len(placement) + 1)) if r not in used]
    if idle or max(placement) >= ranks:
        why = f"rank {idle[0]} holds no stage" if idle else f"rank {max(placement)} is beyond {ranks} ranks"
        raise ScheduleError(
            f"--placement {_text(placement)}: {why}; every rank 0..{ranks - 1} needs at least "
            f"one stage (give each rank a stage, or lower --pp)"
        )


def most_stages_per_rank(placement: list[int] | tuple[int, ...]) -> int:
    """The most stages any one rank holds (a Custom plan's ``virtual``)."""
    return max(list(placement).count(r) for r in set(placement))


def placement_table(
    placement: list[int], microbatches: int, durations: list[tuple[float, float]] | None = None
) -> Table:
    """The Custom table of ``placement`` (stage -> rank) for ``microbatches`` microbatches.

    ``durations``: per stage (forward, backward) times that order the list schedule (default:
    one unit each); the table holds the order only, the simulator times it with its own costs."""
    check_placement(placement)
    if microbatches < 1:
        raise ScheduleError(f"--microbatches must be >= 1 (got {microbatches})")
    S, m = len(placement), microbatches
    if durations is not None and len(durations) != S:
        raise ValueError(f"durations: one (forward, backward) pair per stage, {S} stages, got {len(durations)}")
    tiny = 1e-12  # every action takes some time, so waiting on one always moves the clock
    dur = [(max(f, tiny), max(b, tiny)) for f, b in durations] if durations else [(1.0, 1.0)] * S
    ranks = max(placement) + 1
    mine = {r: [s for s in range(S) if placement[s] == r] for r in range(ranks)}
    f_end: list[list[float | None]] = [[None] * m for _ in range(S)]  # when each F / B ends
    b_end: list[list[float | None]] = [[None] * m for _ in range(S)]
    next_f = [0] * S  # per stage: next microbatch to forward (in order)
    in_flight = [0] * S
    cap = [S - s for s in range(S)]
    free = [0.0] * ranks  # when each rank can start its next action
    ends: list[float] = []  # heap: end times of the actions started so far
    table: Table = {r: [] for r in range(ranks)}
    left = {r: 2 * m * len(mine[r]) for r in range(ranks)}
    progress = _Progress(f_end, b_end, next_f, in_flight, cap, m)  # the same lists, for _pick
    while any(left.values()):
        t = min(free[r] for r in range(ranks) if left[r])
        waiting = []
        for r in range(ranks):
            if not left[r] or free[r] > t:
                continue
            a = _pick(mine[r], t, progress)
            if a is None:
                waiting.append(r)
                continue
            table[r].append(a)
            f, b = dur[a.stage]
            free[r] = t + (f if a.kind is Kind.F else b)
            heapq.heappush(ends, free[r])
            left[r] -= 1
            if a.kind is Kind.F:
                f_end[a.stage][a.microbatch] = free[r]
                next_f[a.stage] += 1
                in_flight[a.stage] += 1
            else:
                b_end[a.stage][a.microbatch] = free[r]
                in_flight[a.stage] -= 1
        if waiting:  # idle until the next action ends anywhere
            while ends and ends[0] <= t:
                heapq.heappop(ends)
            if not ends:  # cannot happen (see the module docstring)
                raise ScheduleError(f"placement {_text(placement)}: nothing can run at time {t}")
            for r in waiting:
                free[r] = ends[0]
    return table


class _Progress(NamedTuple):
    """How far the list schedule has got, per stage (``placement_table``'s lists)."""

    f_end: list[list[float | None]]  # when each F ends (None: not run yet)
    b_end: list[list[float | None]]  # when each B ends
    next_f: list[int]  # the next microbatch to forward (in order)
    in_flight: list[int]  # microbatches forwarded and not yet backward
    cap: list[int]  # the most microbatches in flight
    microbatches: int


def _pick(stages: list[int], t: float, progress: _Progress) -> Action | None:
    """The rank's action at time ``t``: the oldest ready backward, else the oldest ready forward."""
    f_end, b_end, next_f, in_flight, cap, m = progress
    S = len(f_end)

    def done(x) -> bool:
        return x is not None and x <= t

    best_b = None
    for s in stages:
        i = next_f[s] - in_flight[s]  # backwards of a stage run in microbatch order: the oldest in flight
        if in_flight[s] and done(f_end[s][i]) and (s == S - 1 or done(b_end[s + 1][i])):
            if best_b is None or (i, -s) < (best_b.microbatch, -best_b.stage):
                best_b = Action(s, Kind.B, i)
    if best_b is not None:
        return best_b
    best_f = None
    for s in stages:
        i = next_f[s]
        if i < m and in_flight[s] < cap[s] and (s == 0 or done(f_end[s - 1][i])):
            if best_f is None or (i, -s) < (best_f.microbatch, -best_f.stage):
                best_f = Action(s, Kind.F, i)
    return best_f


def _text(placement: list[int]) -> str:
    text = ",".join(str(r) if r < 10**12 else "<huge>" for r in placement)
    return text if len(text) <= 60 else text[:57] + "..."
