"""Every operation a unit runs, recorded on the meta device with its FLOPs, its memory traffic
and, for a matrix product, its shape: what the analytic profiler prices op by op (a roofline per
op, ``profiles/analytic.py``).

What is recorded (a ``TorchDispatchMode`` sees each aten operation autograd runs):

- FLOPs as torch's own counter counts them (``torch.utils.flop_counter``: matrix products and
  attention kernels; grouped matmuls of routed experts as ``measure.flop_counter`` counts them);
- bytes moved: each input and output tensor's bytes, once per operation; views, detaches and
  allocations move nothing;
- **pointwise operations are fused**: a run of consecutive pointwise operations (torch's
  ``pointwise`` tag) is one kernel that reads the tensors it did not make itself and writes its
  last result, as Megatron's fused bias-GeLU and bias-dropout-add kernels and the compilers'
  fusion do; tensors inside the run are neither written nor read back;
- the shape ``(batch, m, n, k)`` of each ``mm``, ``addmm``, ``bmm`` and ``baddbmm``;
- a backward matrix product whose output has a parameter's shape and whose reduction runs over
  the tokens is a weight gradient (W); every other backward operation belongs to I.

**Attention as the kernel runs it** (:func:`attention_kernel`): ``math`` lets SDPA decompose into
its products and softmax, which keep the ``s × s`` scores (today's counts); ``flash`` and
``efficient`` replace SDPA by one fused operation that keeps only its inputs, its output and the
row log-sum-exp (4 bytes per query row and head), and counts the FLOPs the FlashAttention
benchmarks count (flash-attention ``benchmarks/benchmark_flash_attention.py``): forward
``4·b·s_q·s_k·a·d``, halved when causal, backward 2.5× the forward. A fused call is taken as
causal when SDPA is asked for causality or given a mask (the zoo's decoders pass their causal
mask; an encoder without padding passes none). Sliding windows are not modelled.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch.nn import functional
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from .types import ATTENTION_KERNELS

__all__ = ["ATTENTION_KERNELS", "AttentionKernel", "Op", "OpRecorder", "attention_kernel"]

AttentionKernel = Literal["flash", "efficient", "math"]

_aten = torch.ops.aten
_GEMMS = {_aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default}
_FREE = {
    _aten.detach.default,
    _aten.empty.memory_format,
    _aten.empty_like.default,
    _aten.new_empty.default,
    _aten.empty_strided.default,
    _aten.lift_fresh.default,
    _aten._unsafe_view.default,
    _aten.scalar_tensor.default,
}


@dataclass(frozen=True)
class Op:
    """One kernel: its FLOPs, its bytes moved and, for a GEMM, ``(batch, m, n, k)``."""

    name: str
    flops: float
    bytes: float
    gemm: tuple[int, int, int, int] | None = None
    attention: bool = False  #: a fused attention kernel (priced at the kernel's own efficiency)
    weight_grad: bool = False  #: a weight-gradient product (W)


def _tensors(tree) -> list[torch.Tensor]:
    out = []
    for x in tree if isinstance(tree, (list, tuple)) else [tree]:
        if isinstance(x, torch.Tensor):
            out.append(x)
        elif isinstance(x, (list, tuple)):
            out += _tensors(x)
    return out


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def _gemm_shape(func, args) -> tuple[int, int, int, int]:
    a, b = (args[1], args[2]) if func in (_aten.addmm.default, _aten.baddbmm.default) else (args[0], args[1])
    if a.dim() == 3:
        return a.shape[0], a.shape[1], b.shape[2], a.shape[2]
    return 1, a.shape[0], b.shape[1], a.shape[1]


def _grouped_mm_flops(args, out) -> float:
    """As ``measure._grouped_mm_flop``: each row of ``a`` meets one group's matrix."""
    return 2.0 * args[0].numel() * out.shape[-1]


class OpRecorder(TorchDispatchMode):
    """Records the operations run under it as :class:`Op` values in ``ops``.

    ``weight_shapes``: the shapes of the unit's parameters; ``tokens``: rows of the unit's
    activations; with ``backward`` set, products that make a weight's gradient are marked W."""

    def __init__(self, weight_shapes: set[tuple[int, ...]] = frozenset(), tokens: int = 0) -> None:
        super().__init__()
        self.ops: list[Op] = []
        self.weight_shapes = weight_shapes
        self.tokens = tokens
        self.backward = False
        self._run: dict | None = None  # the pointwise run being fused

    def record(self, op: Op) -> None:
        self.flush()
        self.ops.append(op)

    def flush(self) -> None:
        """Close the pointwise run: one kernel of its outside reads and its last write."""
        run, self._run = self._run, None
        if run is not None:
            self.ops.append(Op("pointwise", run["flops"], run["read"] + run["write"]))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.is_view or func in _FREE:
            return out
        ins, outs = _tensors(list(args) + list(kwargs.values())), _tensors(out)
        packet = func._overloadpacket
        if packet in flop_registry:
            flops = float(flop_registry[packet](*args, **kwargs, out_val=out))
        elif packet is _aten._grouped_mm:
            flops = _grouped_mm_flops(args, out)
        else:
            flops = 0.0
        if torch.Tag.pointwise in func.tags and not flops:
            self._pointwise(ins, outs)
            return out
        moved = float(sum(_nbytes(t) for t in ins) + sum(_nbytes(t) for t in outs))
        gemm = _gemm_shape(func, args) if func in _GEMMS else None
        self.record(Op(str(packet), flops, moved, gemm, weight_grad=self._is_weight_grad(gemm, outs)))
        return out

    def _pointwise(self, ins: list[torch.Tensor], outs: list[torch.Tensor]) -> None:
        run = self._run
        if run is None:
            run = self._run = {"flops": 0.0, "read": 0.0, "write": 0.0, "made": set(), "seen": set()}
        for t in ins:
            k = _key(t)
            if k not in run["made"] and k not in run["seen"]:
                run["seen"].add(k)
                run["read"] += _nbytes(t)
        run["made"].update(_key(t) for t in outs)
        run["write"] = float(sum(_nbytes(t) for t in outs))

    def _is_weight_grad(self, gemm, outs: list[torch.Tensor]) -> bool:
        if not self.backward or not outs:
            return False
        shape = tuple(outs[0].shape)
        if shape not in self.weight_shapes and shape[::-1] not in self.weight_shapes:
            return False
        return gemm is None or not self.tokens or gemm[3] == self.tokens  # W reduces over the tokens


class _FusedAttention(torch.autograd.Function):
    """One fused attention kernel: keeps q, k, v, its output and the row log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, recorder: OpRecorder | None):
        out = torch.empty_like(q)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.recorder = causal, recorder
        if recorder is not None:
            recorder.record(_attention_op(q, k, v, causal, backward=False))
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        if ctx.recorder is not None:
            ctx.recorder.record(_attention_op(q, k, v, ctx.causal, backward=True))
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), None, None


def _attention_op(q, k, v, causal: bool, *, backward: bool) -> Op:
    """FlashAttention's FLOP convention: ``4·b·s_q·s_k·a·d`` forward, halved when causal; the
    backward 2.5× that. Bytes: q, k, v and the output (and their gradients in the backward)."""
    b, a, sq, d = q.shape
    flops = 4.0 * b * a * sq * k.shape[-2] * d * (0.5 if causal else 1.0)
    moved = _nbytes(q) + _nbytes(k) + _nbytes(v) + _nbytes(q)
    if backward:
        return Op("attention backward", 2.5 * flops, 2.0 * moved, attention=True)
    return Op("attention", flops, float(moved), attention=True)


@contextmanager
def attention_kernel(kernel: AttentionKernel, recorder: OpRecorder | None = None) -> Iterator[None]:
    """Within the block, ``scaled_dot_product_attention`` runs as ``kernel`` does (module docstring)."""
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"attention kernel {kernel!r}: choose one of {', '.join(ATTENTION_KERNELS)}")
    if kernel == "math":
        yield
        return
    original = functional.scaled_dot_product_attention

    def fused(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if key.shape[-3] != query.shape[-3] and not enable_gqa:
            raise ValueError("attention: key/value heads differ from query heads without enable_gqa")
        return _FusedAttention.apply(query, key, value, bool(is_causal or attn_mask is not None), recorder)

    functional.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        functional.scaled_dot_product_attention = original
