"""Schedule generators: pure functions of (ranks, stages per rank, microbatches) -> Table.

No torch import, no process groups: the simulator times these tables and the executor
runs the very same ones. Names follow torch (``GPipe``, ``1F1B``, ...), matched
without regard to case.
"""

from __future__ import annotations

from typing import Callable

from .actions import Action, Kind, ScheduleError, Table

__all__ = ["make_schedule", "SCHEDULES", "canonical_name", "stages_per_rank"]


def _gpipe(pp: int, m: int, v: int) -> Table:
    """All forwards, then all backwards, microbatches in order (torch ScheduleGPipe)."""
    return {r: [Action(r, Kind.F, i) for i in range(m)] + [Action(r, Kind.B, i) for i in range(m)]
            for r in range(pp)}


def _one_f_one_b(pp: int, m: int, v: int) -> Table:
    """1F1B: rank r runs p - r forwards, then alternates backward and forward, then drains."""
    table: Table = {}
    for r in range(pp):
        warm = min(m, pp - r)
        acts = [Action(r, Kind.F, i) for i in range(warm)]
        f, b = warm, 0
        while b < m:
            acts.append(Action(r, Kind.B, b))
            b += 1
            if f < m:
                acts.append(Action(r, Kind.F, f))
                f += 1
        table[r] = acts
    return table


def _single_stage_only(fn: Callable[[int, int, int], Table]) -> Callable[[int, int, int], Table]:
    def wrapped(pp: int, m: int, v: int) -> Table:
        if v != 1:
            raise ScheduleError(f"{fn.__name__.strip('_')} runs one stage per rank: use --virtual 1")
        return fn(pp, m, v)

    wrapped.__doc__ = fn.__doc__
    return wrapped


#: canonical name -> (generator, placement). Placement "loop": stage s on rank s % pp.
SCHEDULES: dict[str, tuple[Callable[[int, int, int], Table], str]] = {
    "GPipe": (_single_stage_only(_gpipe), "loop"),
    "1F1B": (_single_stage_only(_one_f_one_b), "loop"),
}


def canonical_name(name: str) -> str:
    for known in SCHEDULES:
        if known.lower() == name.lower():
            return known
    raise ScheduleError(f"unknown schedule {name!r}: choose one of {', '.join(SCHEDULES)}")


def stages_per_rank(name: str, virtual: int) -> int:
    return virtual


def make_schedule(name: str, pp: int, microbatches: int, virtual: int = 1) -> Table:
    """The compute-only table of schedule ``name`` for ``pp`` ranks and ``microbatches``."""
    canon = canonical_name(name)
    if pp < 1 or microbatches < 1 or virtual < 1:
        raise ScheduleError(f"{canon}: --pp, --microbatches and --virtual must be >= 1")
    gen, _ = SCHEDULES[canon]
    return gen(pp, microbatches, virtual)
