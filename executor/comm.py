"""Time in tensor-parallel and sharded data-parallel collectives, per action.

``CommMeter`` is a ``TorchDispatchMode`` (the mechanism torch's own ``CommDebugMode`` counts
collectives with): every op of the ``c10d`` and ``_c10d_functional`` namespaces passes through
it, and one issued on a group it was told about (the mesh's ``tp`` or ``dp`` group) is timed
from its issue to its completion:

- a functional collective (DTensor's, for tensor parallelism) returns a tensor whose work is
  waited on by the op that first reads it; the meter waits on it right away
  (``_c10d_functional.wait_tensor``) so the wait is seen. On CPU that changes nothing, the next
  op would block on it at once; on CUDA the wait only orders streams, so the span is the host's
  issue time, not the transfer (a limit: use ``--torch-profiler`` for device times there);
- a ``c10d`` collective (FSDP2's all-gather and reduce-scatter, asynchronous) returns its
  ``Work``. On CPU the meter waits on it right away: a completion callback would need the GIL,
  which the rank holds while it computes, so its time would be late by up to the interpreter's
  switch interval; and gloo's reduce-scatter has no future in torch 2.13. The cost: on CPU an
  all-gather FSDP issued early (prefetched) no longer overlaps the compute before its use (on a
  CPU rank that shares its core with gloo's thread, little did). On an accelerator the span
  ends when the work's future completes, and nothing waits.

Each span is attributed to the action that issued it (``Recorder.action``), or to the step's
tail when no action was running (stage -1, kind ``tail``). Point-to-point sends and receives
and collectives on other groups (tied embeddings, the clock) are not timed: the simulator
prices those elsewhere. The mode sees every op, so it costs a Python call per op: the runtime
enters it only for plans with tensor or data parallelism (ddp's all-reduce of the flattened
gradients, after the step's last action, is a tail span), and only on steps of its own after the
timed ones (``runtime.METERED_STEPS``), so the step times it sits beside are not its.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch.distributed.distributed_c10d import _resolve_process_group as _resolve
from torch.utils._python_dispatch import TorchDispatchMode

from .report import TAIL, CommSpan

__all__ = ["CommMeter", "CommSpan", "TAIL"]

_NAMESPACES = frozenset({"c10d", "_c10d_functional"})
_WAIT = "wait_tensor"


class CommMeter(TorchDispatchMode):
    """Records a ``CommSpan`` for each collective issued on ``groups`` (a group's ranks -> its
    mesh dimension) while the mode is entered. ``action()`` gives the (stage, kind, microbatch) now
    running, or None; times are ``perf_counter`` seconds since ``t0`` (set per step)."""

    def __init__(
        self, rank: int, groups: dict[tuple[int, ...], str], action: Callable[[], tuple[int, str, int] | None]
    ):
        super().__init__()
        self.rank = rank
        self.groups = groups
        self._names: dict[str, str | None] = {}  # group name -> dimension, as resolved
        self.action = action
        self.t0 = 0.0
        self.spans: list[CommSpan] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace not in _NAMESPACES or func._opname == _WAIT:
            return func(*args, **kwargs)
        group = self._group_of(args)
        if group is None or _on_meta(args):  # torch's shape inference runs the stage on meta tensors
            return func(*args, **kwargs)
        stage, kind, mb = self.action() or (-1, TAIL, -1)
        start = time.perf_counter()
        out = func(*args, **kwargs)
        record = lambda end: self.spans.append(  # noqa: E731
            CommSpan(self.rank, stage, kind, mb, group, func._opname, start - self.t0, end - self.t0)
        )
        work = _work_of(out)
        if work is None:  # functional: wait here, as the op reading the result would
            torch.ops._c10d_functional.wait_tensor(out[0] if isinstance(out, (list, tuple)) else out)
        elif _on_device(args):  # c10d on an accelerator: ends when its future completes
            work.get_future().then(lambda _: record(time.perf_counter()))
            return out
        else:  # c10d on CPU: wait here (a later wait() returns at once)
            work.wait()
        record(time.perf_counter())
        return out

    def _group_of(self, args) -> str | None:
        for a in args:
            if isinstance(a, str):  # a functional collective's group name (or its reduce op)
                dim = self._dim(a, lambda: _resolve(a))
                if dim is not None:
                    return dim
            if isinstance(a, torch.ScriptObject):
                try:
                    pg = dist.ProcessGroup.unbox(a)
                except RuntimeError:  # another script object (a reduce op, a work)
                    continue
                return self._dim(pg.group_name, lambda: pg)
        return None

    def _dim(self, name: str, group) -> str | None:
        """The mesh dimension of the group named ``name``, by its ranks (DTensor may run a
        collective on an equal group made for an earlier mesh: the same ranks, another name)."""
        if name not in self._names:
            try:
                self._names[name] = self.groups.get(tuple(dist.get_process_group_ranks(group())))
            except (RuntimeError, ValueError, KeyError):
                self._names[name] = None
        return self._names[name]

    def take(self) -> list[CommSpan]:
        """The spans recorded since the last ``take`` (the step's), sorted by start."""
        out, self.spans = sorted(self.spans, key=lambda s: s.start_s), []
        return out


def _on_device(args) -> bool:
    return any(isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args)


def _on_meta(args) -> bool:
    return any(isinstance(a, torch.Tensor) and a.is_meta for a in args)


def _work_of(out):
    if isinstance(out, tuple) and out and isinstance(out[-1], torch.ScriptObject):
        try:
            return dist.distributed_c10d.Work.unbox(out[-1])
        except RuntimeError:
            return None
    return None
