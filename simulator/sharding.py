"""Data-parallel training state: bytes per rank and communication time for ``ddp``, ``zero1``,
``zero2`` and ``fsdp`` over ``d`` data-parallel ranks.

Static state per parameter, as the cost layer counts it today: weights and gradients in the
stage's dtype (``w`` bytes each), an fp32 master copy when the dtype is 16-bit (``m = 4``), and
optimizer state (``o``, 8 for AdamW's two fp32 moments). Sharding divides parts of it by ``d``
(Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models",
SC'20, §5: stages P_os, P_os+g, P_os+g+p):

======  ===========================  =================================
mode    bytes per parameter per rank  bf16 AdamW (w=2, m=4, o=8)
======  ===========================  =================================
ddp     ``w + w + m + o``            16
zero1   ``w + w + (m + o)/d``        4 + 12/d
zero2   ``w + (w + m + o)/d``        2 + 14/d
fsdp    ``(w + w + m + o)/d``        16/d
======  ===========================  =================================

FSDP also holds gathered (unsharded) parameters while it computes. With
``reshard_after_forward`` (torch's ``fully_shard`` default without pipelining) each unit group
is gathered before its F and again before its B and freed after; at the peak a rank holds the
largest group's weights, the next group's prefetched weights and the current group's unsharded
gradient. torchtitan turns ``reshard_after_forward`` off under pipeline parallelism ("to avoid
per-microbatch all-gathers", ``torchtitan/distributed/fsdp.py``), and the pipelining runtime
syncs gradients on the last microbatch only, so the stage's weights and gradients stay
unsharded for the whole step: one all-gather per step before the first F and one reduce-scatter
after the last backward.

The optimizer step runs on ``1/d`` of the parameters in every sharded mode. What each mode
communicates is priced once, by the cost layer (``simulator.costs.DPComm``), from
:mod:`simulator.collectives`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DPMode",
    "DP_MODES",
    "StateBytes",
    "state_bytes_per_param",
    "fsdp_gathered_bytes",
    "optimizer_step_s",
]

DPMode = Literal["ddp", "zero1", "zero2", "fsdp"]
DP_MODES: tuple[str, ...] = ("ddp", "zero1", "zero2", "fsdp")


def _check(mode: str, d: int) -> None:
    if mode not in DP_MODES:
        raise ValueError(f"data-parallel mode {mode!r}: choose ddp, zero1, zero2 or fsdp")
    if d < 1:
        raise ValueError(f"data-parallel degree must be >= 1, got {d}")


@dataclass(frozen=True)
class StateBytes:
    """Bytes per parameter each rank holds, by part (already divided by ``d`` where sharded)."""

    weights: float
    grads: float
    master: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.master + self.optimizer


def state_bytes_per_param(
    mode: DPMode, d: int, *, dtype_bytes: int, optimizer_bytes_per_param: float = 8.0
) -> StateBytes:
    """Static bytes per parameter per rank for ``mode`` over ``d`` data-parallel ranks."""
    _check(mode, d)
    w = float(dtype_bytes)
    m = 4.0 if dtype_bytes < 4 else 0.0
    o = float(optimizer_bytes_per_param)
    shard_w = d if mode == "fsdp" else 1
    shard_g = d if mode in ("zero2", "fsdp") else 1
    shard_mo = 1 if mode == "ddp" else d
    return StateBytes(weights=w / shard_w, grads=w / shard_g, master=m / shard_mo, optimizer=o / shard_mo)


def fsdp_gathered_bytes(
    group_params: Sequence[int],
    *,
    dtype_bytes: int,
    grad_bytes: int | None = None,
    prefetch: int = 1,
    reshard_after_forward: bool = True,
) -> float:
    """Peak bytes of unsharded FSDP state on a rank holding unit groups of ``group_params`` parameters.

    ``reshard_after_forward``: the largest group's weights plus ``prefetch`` more groups' (the
    largest again, a bound) and the current group's unsharded gradient. Otherwise (torchtitan
    under pipelining): every group's weights and gradients, for the whole step. ``grad_bytes``:
    bytes of an unsharded gradient element (default: the weights' dtype; torchtitan accumulates
    in its fp32 ``reduce_dtype`` when it defers the gradient sync)."""
    if not group_params:
        return 0.0
    if prefetch < 0:
        raise ValueError(f"prefetch must be >= 0, got {prefetch}")
    g = dtype_bytes if grad_bytes is None else grad_bytes
    if not reshard_after_forward:
        return float(sum(group_params) * (dtype_bytes + g))
    largest = max(group_params)
    return float((1 + prefetch) * largest * dtype_bytes + largest * g)


def optimizer_step_s(mode: DPMode, params: int, d: int, seconds_per_param: float) -> float:
    """The optimizer step's time: every parameter under ddp, ``1/d`` of them when sharded."""
    _check(mode, d)
    return params * seconds_per_param / (1 if mode == "ddp" else d)
