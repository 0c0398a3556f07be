"""Schedules by name: what each allows, where its stages live, and its table.

No torch import, no process groups: the simulator times these tables and the executor
runs the very same ones. Names follow torch (``GPipe``, ``1F1B``, ...), matched
without regard to case. The generators themselves are in ``generators.py``.

``Custom`` is the one schedule not made from ``(pp, microbatches, virtual)``: its stages
go wherever a placement puts them (``placement.placement_table``), and its placement is
read back from its table (``stage_ranks``), so it is not in ``SCHEDULES`` (what the
search enumerates by name) but ``canonical_name`` and ``schedule_spec`` know it.

The planner asks a :class:`ScheduleSpec` (``schedule_spec(name)``) what virtual-stage
counts a schedule allows, how many stages it makes, where they live, and whether
``(pp, microbatches, virtual)`` is possible (``check`` raises ScheduleError saying why not).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import generators as g
from .actions import ScheduleError, Table

__all__ = ["ScheduleSpec", "SCHEDULES", "CUSTOM", "schedule_spec", "canonical_name", "make_schedule", "stages_per_rank"]


@dataclass(frozen=True)
class ScheduleSpec:
    """What one schedule is and what it allows."""

    name: str  # canonical (torch's) name
    generator: Callable[[int, int, int], Table] | None  # (pp, microbatches, virtual) -> table; None: Custom
    split_backward: bool  # uses I and W (zero-bubble family) rather than one B
    placement: str  # "loop": stage s on rank s % pp; "v": rank r holds stages r and 2pp-1-r; "table": its table's
    min_virtual: int = 1  # stages per rank allowed: min_virtual .. max_virtual (None: no upper bound)
    max_virtual: int | None = 1
    min_microbatches_per_stage: float = 0.0  # microbatches >= this x num_stages (DualPipeV: 1)
    interleaved_rounds: bool = False  # microbatches must split into max(1, m // pp) equal rounds
    summary: str = ""

    @property
    def virtual_text(self) -> str:
        if self.max_virtual == self.min_virtual:
            return f"exactly {self.min_virtual}"
        return f">= {self.min_virtual}" if self.max_virtual is None else f"{self.min_virtual}..{self.max_virtual}"

    def allows_virtual(self, v: int) -> bool:
        return v >= self.min_virtual and (self.max_virtual is None or v <= self.max_virtual)

    def num_stages(self, pp: int, v: int) -> int:
        return pp * v

    def stage_to_rank(self, pp: int, v: int) -> dict[int, int]:
        """Stage -> rank. Loop: s % pp. V: down the ranks, then back up (0..p-1, p-1..0)."""
        if self.placement == "table":
            raise ScheduleError(f"{self.name} has no placement of its own: read it from the table (stage_ranks)")
        if self.placement == "v":
            return {s: (s if s < pp else 2 * pp - 1 - s) for s in range(2 * pp)}
        return {s: s % pp for s in range(pp * v)}

    def check(self, pp: int, m: int, v: int) -> None:
        """Raise ScheduleError naming the setting and the fix when (pp, m, v) is impossible."""
        if pp < 1 or m < 1 or v < 1:
            raise ScheduleError(
                f"{self.name}: --pp, --microbatches and --virtual must be >= 1 "
                f"(got pp={pp}, microbatches={m}, virtual={v})"
            )
        if not self.allows_virtual(v):
            raise ScheduleError(
                f"{self.name} needs {self.virtual_text} stages per rank, got --virtual {v}: "
                f"use --virtual {self.min_virtual}"
            )
        need = int(self.min_microbatches_per_stage * self.num_stages(pp, v))
        if m < need:
            raise ScheduleError(
                f"{self.name} with {pp} ranks x {v} stages needs at least {need} microbatches, "
                f"got {m}: raise --microbatches to {need} or more"
            )
        if self.interleaved_rounds:
            n, _ = g.rounds(pp, m)
            if m % n:
                lo, hi = n * (m // n), n * (m // n + 1)
                raise ScheduleError(
                    f"{self.name} runs microbatches in max(1, m // pp) = {n} equal rounds, and "
                    f"{m} microbatches do not split into {n}: use --microbatches {lo} or {hi}"
                )


_SPECS = [
    ScheduleSpec("GPipe", g.gpipe, False, "loop", summary="all forwards, then all backwards"),
    ScheduleSpec("1F1B", g.one_f_one_b, False, "loop", summary="one forward, one backward in steady state"),
    ScheduleSpec(
        "Interleaved1F1B",
        g.interleaved_1f1b,
        False,
        "loop",
        1,
        None,
        interleaved_rounds=True,
        summary="1F1B over v looped stages per rank, depth first",
    ),
    ScheduleSpec("LoopedBFS", g.looped_bfs, False, "loop", 1, None, summary="v looped stages per rank, breadth first"),
    ScheduleSpec(
        "InterleavedZeroBubble",
        g.interleaved_zero_bubble,
        True,
        "loop",
        1,
        None,
        interleaved_rounds=True,
        summary="ZB-H1: interleaved 1F1B with W delayed to fill bubbles",
    ),
    ScheduleSpec(
        "ZBVZeroBubble", g.zbv_zero_bubble, True, "v", 2, 2, summary="ZB-V: two stages per rank in a V, I/W split"
    ),
    ScheduleSpec(
        "DualPipeV",
        g.dualpipe_v,
        True,
        "v",
        2,
        2,
        min_microbatches_per_stage=1.0,
        summary="DeepSeek DualPipe on a V: paired forward/backward, late I/W split",
    ),
]

#: canonical name -> ScheduleSpec, in torch's order
SCHEDULES: dict[str, ScheduleSpec] = {s.name: s for s in _SPECS}

#: any placement (``--placement``), its table from ``placement.placement_table``
CUSTOM = ScheduleSpec(
    "Custom",
    None,
    False,
    "table",
    1,
    None,
    summary="any stage -> rank placement (--placement), a 1F1B-like list schedule",
)
_ALL = {**SCHEDULES, CUSTOM.name: CUSTOM}


def canonical_name(name: str) -> str:
    for known in _ALL:
        if known.lower() == str(name).lower():
            return known
    raise ScheduleError(f"unknown schedule {name!r}: choose one of {', '.join(_ALL)}")


def schedule_spec(name: str) -> ScheduleSpec:
    return _ALL[canonical_name(name)]


def stages_per_rank(name: str, virtual: int) -> int:
    return virtual


def make_schedule(name: str, pp: int, microbatches: int, virtual: int = 1) -> Table:
    """The compute-only table of schedule ``name`` for ``pp`` ranks and ``microbatches``."""
    spec = schedule_spec(name)
    if spec.generator is None:
        raise ScheduleError(
            f"{spec.name} needs a placement, not --pp/--virtual: give --placement (e.g. --placement 0,1,0)"
        )
    spec.check(pp, microbatches, virtual)
    return spec.generator(pp, microbatches, virtual)
