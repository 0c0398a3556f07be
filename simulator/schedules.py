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
from enum import Enum

from . import generators as g
from .actions import ScheduleError, Table

__all__ = [
    "Placement",
    "SteadyState",
    "ScheduleSpec",
    "SCHEDULES",
    "CUSTOM",
    "schedule_spec",
    "canonical_name",
    "make_schedule",
]


class Placement(str, Enum):
    """Where a schedule's stages live."""

    LOOP = "loop"  # stage s on rank s % pp
    V = "v"  # rank r holds stages r and 2pp-1-r: down the ranks, then back up
    CUSTOM = "custom"  # wherever a placement puts them; read back from the table (``stage_ranks``)


class SteadyState(str, Enum):
    """How the MILP models a schedule's steady state (``planner/milp.py``)."""

    #: forwards and backwards interleave: a rank's work per microbatch is F + B
    INTERLEAVED = "interleaved"
    #: all forwards, then all backwards: the forward and backward loads are bounded apart
    PHASED = "phased"


@dataclass(frozen=True, kw_only=True)
class ScheduleSpec:
    """What one schedule is and what it allows. Every schedule property used anywhere lives
    here; code asks the spec and never compares names."""

    name: str  # canonical (torch's) name
    generator: Callable[[int, int, int], Table] | None  # (pp, microbatches, virtual) -> table; None: Custom
    placement: Placement
    torch_class: str | None  # torch.distributed.pipelining class name (None: runs through the runtime only)
    split_backward: bool = False  # uses I and W (zero-bubble family) rather than one B
    steady_state: SteadyState = SteadyState.INTERLEAVED
    min_virtual: int = 1  # stages per rank allowed: min_virtual .. max_virtual (None: no upper bound)
    max_virtual: int | None = 1
    min_microbatches_per_stage: float = 0.0  # microbatches >= this x num_stages (DualPipeV: 1)
    interleaved_rounds: bool = False  # microbatches must split into max(1, m // pp) equal rounds
    #: every microbatch's activations are held before the first backward (GPipe-like memory)
    holds_all_microbatches: bool = False
    #: with one stage per rank, the step is at least the fill-drain bound (m - 1) max(work) + work
    fill_drain_bound: bool = False
    summary: str = ""

    @property
    def single_stage(self) -> bool:
        """torch runs it with one stage object per rank (``PipelineScheduleSingle``)."""
        return self.placement is Placement.LOOP and self.max_virtual == 1

    @property
    def custom(self) -> bool:
        """Stages go where a placement puts them (``--placement``), not where (pp, v) says."""
        return self.placement is Placement.CUSTOM

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
        if self.placement is Placement.CUSTOM:
            raise ScheduleError(f"{self.name} has no placement of its own: read it from the table (stage_ranks)")
        if self.placement is Placement.V:
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
    ScheduleSpec(
        name="GPipe",
        generator=g.gpipe,
        placement=Placement.LOOP,
        torch_class="ScheduleGPipe",
        steady_state=SteadyState.PHASED,
        holds_all_microbatches=True,
        fill_drain_bound=True,
        # not dominated by 1F1B: with transfers that are slow beside compute, all forwards back
        # to back hide their sends, where 1F1B waits on each gradient (the exhaustive test found
        # GPipe 12% faster on the same split)
        summary="all forwards, then all backwards",
    ),
    ScheduleSpec(
        name="1F1B",
        generator=g.one_f_one_b,
        placement=Placement.LOOP,
        torch_class="Schedule1F1B",
        fill_drain_bound=True,
        summary="one forward, one backward in steady state",
    ),
    ScheduleSpec(
        name="Interleaved1F1B",
        generator=g.interleaved_1f1b,
        placement=Placement.LOOP,
        torch_class="ScheduleInterleaved1F1B",
        max_virtual=None,
        interleaved_rounds=True,
        summary="1F1B over v looped stages per rank, depth first",
    ),
    ScheduleSpec(
        name="LoopedBFS",
        generator=g.looped_bfs,
        placement=Placement.LOOP,
        torch_class="ScheduleLoopedBFS",
        steady_state=SteadyState.PHASED,
        max_virtual=None,
        holds_all_microbatches=True,
        summary="v looped stages per rank, breadth first",
    ),
    ScheduleSpec(
        name="InterleavedZeroBubble",
        generator=g.interleaved_zero_bubble,
        placement=Placement.LOOP,
        torch_class="ScheduleInterleavedZeroBubble",
        split_backward=True,
        max_virtual=None,
        interleaved_rounds=True,
        summary="ZB-H1: interleaved 1F1B with W delayed to fill bubbles",
    ),
    ScheduleSpec(
        name="ZBVZeroBubble",
        generator=g.zbv_zero_bubble,
        placement=Placement.V,
        torch_class="ScheduleZBVZeroBubble",
        split_backward=True,
        min_virtual=2,
        max_virtual=2,
        summary="ZB-V: two stages per rank in a V, I/W split",
    ),
    ScheduleSpec(
        name="DualPipeV",
        generator=g.dualpipe_v,
        placement=Placement.V,
        torch_class="ScheduleDualPipeV",
        split_backward=True,
        min_virtual=2,
        max_virtual=2,
        min_microbatches_per_stage=1.0,
        summary="DeepSeek DualPipe on a V: paired forward/backward, late I/W split",
    ),
]

#: canonical name -> ScheduleSpec, in torch's order
SCHEDULES: dict[str, ScheduleSpec] = {s.name: s for s in _SPECS}

#: any placement (``--placement``), its table from ``placement.placement_table``
CUSTOM = ScheduleSpec(
    name="Custom",
    generator=None,
    placement=Placement.CUSTOM,
    torch_class=None,
    max_virtual=None,
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


def make_schedule(name: str, pp: int, microbatches: int, virtual: int = 1) -> Table:
    """The compute-only table of schedule ``name`` for ``pp`` ranks and ``microbatches``."""
    spec = schedule_spec(name)
    if spec.generator is None:
        raise ScheduleError(
            f"{spec.name} needs a placement, not --pp/--virtual: give --placement (e.g. --placement 0,1,0)"
        )
    spec.check(pp, microbatches, virtual)
    return spec.generator(pp, microbatches, virtual)
