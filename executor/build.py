"""What each rank runs, built from a Plan: stage modules (precision and recompute per stage),
``PipelineStage`` objects, the schedule (the plan's own table, or one of torch's classes by
name) and per-action timing.

Everything here is checked before any compute: a plan that does not fit the launch fails
with a ``UserError`` on every rank (all ranks read the same plan, so all fail alike).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining import schedules as torch_schedules
from torch.distributed.pipelining.schedules import _Action, _ComputationType, _PipelineScheduleRuntime
from torch.utils.checkpoint import checkpoint

from planner.plan import Plan
from profiles.contract import UserError
from profiles.types import DTYPE_TABLE
from simulator.actions import Action, Overlap, Table
from simulator.costs import Recompute
from simulator.schedules import SCHEDULES, schedule_spec

__all__ = [
    "TORCH_SCHEDULES",
    "FP16_LOSS_SCALE",
    "Recorder",
    "StageModule",
    "build_stages",
    "build_schedule",
    "torch_actions",
    "lower_table",
    "receives_first",
    "StepClock",
]

#: torch's schedule classes by the names the plan uses (``--torch-schedule``).
TORCH_SCHEDULES = {name: spec.torch_class for name, spec in SCHEDULES.items() if spec.torch_class}
_AUTOCAST = {name: getattr(torch, d.torch_name) for name, d in DTYPE_TABLE.items() if d.sixteen_bit}
#: fp16 stages: the loss is multiplied by this before backward and gradients divided after
#: (static loss scaling; a step whose gradients are not finite is skipped).
FP16_LOSS_SCALE = 1024.0


def _torch_action(a: Action | Overlap) -> _Action:
    if isinstance(a, Overlap):  # torch's container action: no stage or microbatch of its own
        return _Action(-1, _ComputationType.OVERLAP_F_B, None, (_torch_action(a.forward), _torch_action(a.backward)))
    return _Action(a.stage, _ComputationType(a.kind.value), a.microbatch)


def torch_actions(table: Table) -> dict[int, list[_Action]]:
    """Our compute-only table in torch's ``_Action`` form (an Overlap becomes an OVERLAP_F_B pair)."""
    return {r: [_torch_action(a) for a in acts] for r, acts in table.items()}


class _Checkpointed(nn.Module):
    """One unit under activation checkpointing: keeps its input, recomputes in backward."""

    def __init__(self, unit: nn.Module):
        super().__init__()
        self.unit = unit

    def forward(self, x):
        return checkpoint(self.unit, x, use_reentrant=False)


class StageModule(nn.Module):
    """The units of one stage, run in order, under autocast for 16-bit stages."""

    def __init__(self, units: list[nn.Module], dtype: str = "fp32", recompute: bool = False):
        super().__init__()
        self.units = nn.ModuleList(_Checkpointed(u) if recompute else u for u in units)
        self.dtype = dtype

    def forward(self, x):
        cast = _AUTOCAST.get(self.dtype)
        device = x.device.type if torch.is_tensor(x) else "cpu"
        with torch.autocast(device, dtype=cast) if cast is not None else _nothing():
            for u in self.units:
                x = u(x)
        return x


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def stage_modules(plan: Plan, units: list[nn.Module]) -> list[StageModule]:
    """Every stage's module (for the single-process reference too)."""
    # selective recompute (the attention core) runs as full checkpointing of each unit: the same numbers
    return [StageModule(units[s.first : s.end], s.dtype, s.recompute is not Recompute.NONE) for s in plan.stages]


def build_stages(
    plan: Plan,
    units: list[nn.Module],
    pp_rank: int,
    device: torch.device,
    group,
) -> tuple[list[PipelineStage], list[StageModule]]:
    mods = stage_modules(plan, units)
    stages, mine = [], []
    for s, mod in zip(plan.stages, mods):
        if s.rank != pp_rank:
            continue
        mod.to(device)
        mine.append(mod)
        stages.append(PipelineStage(mod, s.index, len(plan.stages), device, group=group))
    return stages, mine


def check_torch_schedule(plan: Plan, name: str) -> str:
    """The canonical torch schedule name, or a UserError when the plan's placement is not the one
    torch's class assumes (checked before any process group work)."""
    if schedule_spec(plan.schedule).custom:
        raise UserError(
            f"--torch-schedule {name}: this plan's placement is Custom (ranks "
            f"{[s.rank for s in plan.stages]}), which no torch schedule class runs: leave out "
            f"--torch-schedule to run the plan's own table"
        )
    canon = {k.lower(): k for k in TORCH_SCHEDULES}.get(name.lower())
    if canon is None:
        raise UserError(f"--torch-schedule {name}: unknown; one of {', '.join(TORCH_SCHEDULES)}")
    spec = SCHEDULES[canon]
    p, S = plan.pp, len(plan.stages)
    v = S // p
    # torch's multi-stage classes take two or more stages per rank
    fits = S % p == 0 and spec.allows_virtual(v) and (spec.single_stage or v > 1)
    want = [spec.stage_to_rank(p, v)[i] for i in range(S)] if fits else None
    have = [s.rank for s in plan.stages]
    if want != have:
        raise UserError(
            f"--torch-schedule {canon}: the plan places stages on ranks {have}, but torch's "
            f"{TORCH_SCHEDULES[canon]} needs {want or 'another number of stages'}: re-plan with "
            f"--schedules {canon}, or run the plan's own table (leave out --torch-schedule)"
        )
    return canon


class _StageMappingOnly(torch_schedules.PipelineScheduleMulti):
    def _validate_and_set_stage_mapping(self, actions) -> None:
        self.stage_index_to_group_rank = {a.stage_index: r for r, acts in actions.items() for a in acts if a}
        for stage in self._stages:
            stage.stage_index_to_group_rank = self.stage_index_to_group_rank


class _ForwardOnlyRuntime(_PipelineScheduleRuntime, _StageMappingOnly):
    """torch's runtime for a forward-only table: torch's table check insists on a backward per
    forward, so only the stage->rank map is taken here (the table itself was checked when the
    plan was loaded, ``validate_table(forward_only=True)``)."""


def build_schedule(plan: Plan, stages: list[PipelineStage], loss_fn, torch_schedule: str | None = None):
    """The plan's own table through ``_PipelineScheduleRuntime`` (default), or torch's class by name."""
    m = plan.microbatches
    if torch_schedule:
        cls = getattr(torch_schedules, TORCH_SCHEDULES[torch_schedule])
        return cls(stages[0] if SCHEDULES[torch_schedule].single_stage else stages, m, loss_fn=loss_fn)
    cls = _ForwardOnlyRuntime if plan.job.forward_only else _PipelineScheduleRuntime
    schedule = cls(stages, m, loss_fn=loss_fn)
    lower_table(schedule, plan.table, stages[0].group)
    return schedule


def lower_table(schedule: _PipelineScheduleRuntime, table: Table, group=None) -> None:
    """Give ``schedule`` the compute-only ``table``, lowered to sends and receives by torch
    (``_prepare_schedule_with_comms``). On gloo every receive is then posted at the start of
    the step (``receives_first``), so data moves while the receiver computes, as the simulator
    assumes. Why: gloo's point-to-point is a rendezvous (the sender's payload goes out only once
    the receiver has posted its receive), and torch's lowering posts a receive just before the
    action that needs it, so a transfer whose data was ready long before still costs a round
    trip through both ranks' gloo threads on the critical path (the figures measured are in
    ``executor/README.md``). NCCL keeps torch's placement: its receives wait in stream order,
    where posting early can block a later send."""
    schedule._prepare_schedule_with_comms(torch_actions(table))
    if dist.get_backend(group) == "gloo":
        schedule.pipeline_order_with_comms = receives_first(schedule.pipeline_order_with_comms)


_RECV = (_ComputationType.RECV_F, _ComputationType.RECV_B)


def receives_first(order: dict[int, list[_Action]]) -> dict[int, list[_Action]]:
    """A lowered table with each rank's receives moved to the front, in their own order (so the
    k-th receive from a peer still meets that peer's k-th send); everything else keeps its order.
    Every receive has its own buffer (one per stage and microbatch), so none is overwritten."""
    return {rank: sorted(acts, key=lambda a: a.computation_type not in _RECV) for rank, acts in order.items()}


class StepClock:
    """Starts every rank's step at one instant and times it on one clock.

    A barrier alone lets ranks leave it up to a few milliseconds apart on gloo (see
    ``executor/README.md``), and that offset would count in the measured step and shift one rank's events against
    the other's. Ranks on one host share ``time.perf_counter`` (CLOCK_MONOTONIC), so rank 0
    names a start instant ``AHEAD_S`` ahead, every rank spins until then, and all events are
    times since that instant. Across hosts the clocks differ: each rank starts when it leaves
    the barrier (the offset then stays in the measurement)."""

    AHEAD_S = 0.01

    def __init__(self, group=None):
        hosts = [None] * dist.get_world_size(group)
        dist.all_gather_object(hosts, socket.gethostname(), group=group)
        self.group = group
        self.shared = len(set(hosts)) == 1

    def start(self) -> float:
        """Wait for every rank, then return the common start instant (``perf_counter`` seconds)."""
        dist.barrier(group=self.group)
        if not self.shared:
            return time.perf_counter()
        at = torch.tensor([time.perf_counter() + self.AHEAD_S], dtype=torch.float64)
        dist.broadcast(at, src=dist.get_global_rank(self.group, 0) if self.group else 0, group=self.group)
        t0 = at.item()
        while time.perf_counter() < t0:
            pass
        return t0


@dataclass
class Recorder:
    """Wraps a stage's compute entry points and records (stage, kind, microbatch, start, end);
    remembers the action in progress (with its input shapes) for the failure log."""

    t0: float = 0.0
    events: list[tuple[int, str, int, float, float]] = field(default_factory=list)
    current: str = ""
    fail_at: tuple[int, int] | None = None  # (step, rank): raise inside the first action there (tests)
    step: int = 0
    rank: int = 0
    #: wall minus this thread's CPU time inside the actions: time the rank was ready to compute
    #: but not running (another process or thread had its core), summed since the last reset
    off_cpu_s: float = 0.0
    #: (stage, kind, microbatch) of the action running now, None between actions (``CommMeter``
    #: attributes each collective to it)
    action: tuple[int, str, int] | None = None

    def _enter(self, stage: PipelineStage, kind: str, mb: int) -> float:
        idx = stage.stage_index
        meta = getattr(stage, "_stage_meta", None)
        field_ = "inputs" if kind == "F" else "output_grads"  # what the action consumes
        shapes = [tuple(t.shape) for t in (getattr(meta, field_, None) or ()) if t is not None and hasattr(t, "shape")]
        what = "input" if kind == "F" else "output-gradient"
        self.current = f"stage {idx} action {idx}{kind}{mb} ({what} shapes {shapes or 'not known yet'})"
        if self.fail_at == (self.step, self.rank):
            raise RuntimeError(f"injected failure (--fail-at-step {self.step}) in {self.current}")
        return time.perf_counter()

    def wrap(self, stage: PipelineStage) -> None:
        def full_or_input(a: tuple, k: dict) -> str:
            return "B" if k.get("full_backward", a[1] if len(a) > 1 else True) else "I"

        stage.forward_one_chunk = self._timed(
            stage, stage.forward_one_chunk, lambda a, k: "F", " (a send, receive or loss)"
        )
        stage.backward_one_chunk = self._timed(stage, stage.backward_one_chunk, full_or_input, " (a send or receive)")
        stage.backward_weight_one_chunk = self._timed(stage, stage.backward_weight_one_chunk, lambda a, k: "W", "")

    def _timed(self, stage: PipelineStage, call, kind_of, after: str):
        """``call`` wrapped to record (stage, kind, microbatch, start, end) and what runs next."""
        idx = stage.stage_index

        def timed(mb, *a, **k):
            kind = kind_of(a, k)
            t = self._enter(stage, kind, mb)
            cpu = time.thread_time()
            self.action = (idx, kind, mb)
            try:
                out = call(mb, *a, **k)
            finally:
                self.action = None
            end = time.perf_counter()
            self.off_cpu_s += max(0.0, (end - t) - (time.thread_time() - cpu))
            self.events.append((idx, kind, mb, t - self.t0, end - self.t0))
            self.current = f"the schedule after {idx}{kind}{mb}{after}"
            return out

        return timed

    def wrap_loss(self, schedule) -> None:
        """The runtime computes the loss after ``forward_one_chunk``; the profile counts it in the
        last unit's forward, so the last stage's F event is stretched to cover it."""
        compute = schedule._maybe_compute_loss

        def _maybe_compute_loss(stage, output, target_mbs, mb_index, *a, **k):
            self.action = (stage.stage_index, "F", mb_index)  # the loss counts in the last F
            try:
                out = compute(stage, output, target_mbs, mb_index, *a, **k)
            finally:
                self.action = None
            if stage.is_last and self.events:
                idx, kind, mb, start, _ = self.events[-1]
                if (idx, kind, mb) == (stage.stage_index, "F", mb_index):
                    self.events[-1] = (idx, kind, mb, start, time.perf_counter() - self.t0)
            return out

        schedule._maybe_compute_loss = _maybe_compute_loss
