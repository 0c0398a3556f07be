"""A candidate: what identifies one plan of a job apart from its split and per-stage options.

The search enumerates candidates, and every plan is built from one (``scoring.build_plan``):
the search's screen, MILP answers and refinement, the baselines, a split the user gives
(``given.score_split``) and the executor's validation plans.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.costs import Layout
from simulator.schedules import ScheduleSpec, schedule_spec

from .plan import Plan

__all__ = ["Candidate"]


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """One point of the search space: a schedule at a pipeline degree, layout, microbatching and
    placement. The split and the stages' options go beside it."""

    pp: int
    layout: Layout  # tp, dp, dp mode, sequence parallelism
    m: int  # microbatches per step
    mbs: int  # microbatch size
    spec: ScheduleSpec
    virtual: int
    placement: tuple[int, ...] | None = None  # stage -> rank, for Custom only
    lower_bound: float = 0.0  # no split of it does better, in the units of the job's objective

    @classmethod
    def named(
        cls,
        schedule: str,
        *,
        pp: int,
        m: int,
        mbs: int = 1,
        virtual: int = 1,
        layout: Layout | None = None,
        placement: tuple[int, ...] | None = None,
    ) -> Candidate:
        """A candidate by schedule name (``layout`` default: tp 1, dp 1, ddp)."""
        spec = schedule_spec(schedule)
        return cls(pp=pp, layout=layout or Layout(), m=m, mbs=mbs, spec=spec, virtual=virtual, placement=placement)

    @classmethod
    def of_plan(cls, p: Plan) -> Candidate:
        """The candidate ``p`` was built from (its lower bound unknown: 0)."""
        return cls(
            pp=p.pp,
            layout=p.layout,
            m=p.microbatches,
            mbs=p.microbatch_size,
            spec=schedule_spec(p.schedule),
            virtual=p.virtual,
            placement=p.custom_placement,
        )

    @property
    def schedule(self) -> str:
        return self.spec.name

    @property
    def dp(self) -> int:
        return self.layout.dp

    @property
    def stages(self) -> int:
        if self.placement:
            return len(self.placement)
        return self.spec.num_stages(self.pp, self.virtual)

    @property
    def rank_of(self) -> dict[int, int]:
        if self.placement:
            return dict(enumerate(self.placement))
        return self.spec.stage_to_rank(self.pp, self.virtual)

    def label(self) -> str:
        where = f" placement={','.join(map(str, self.placement))}" if self.placement else ""
        lay = self.layout
        par = f" tp={lay.tp}{'+sp' if lay.sequence_parallel else ''} dp={lay.dp} {lay.dp_mode.value}"
        return f"{self.schedule} pp={self.pp}{par} v={self.virtual}{where} m={self.m}"
