"""Every operation a unit runs, recorded on the meta device with its FLOPs, its memory traffic
and, for a matrix product, its shape: what the analytic profiler prices op by op (a roofline per
op, ``profiles/analytic.py``).

What is recorded (a ``TorchDispatchMode`` sees each aten operation autograd runs):

- FLOPs as torch's own counter counts them (``torch.utils.flop_counter``: matrix products and
  attention kernels; grouped matmuls of routed experts as ``measure.flop_counter`` counts them);
- bytes moved: each input and output tensor's bytes, once per operation; views, detaches and
  allocations move nothing;
- **pointwise operations as the run fuses them** (``fusion``, :data:`FUSIONS`): ``default``, a run of
  consecutive pointwise operations (torch's ``pointwise`` tag) is one kernel that reads the tensors
  it did not make itself and writes its last result, as Megatron's fused bias-GeLU and
  bias-dropout-add kernels and the compilers' fusion do; tensors inside the run are neither
  written nor read back. ``none``, eager PyTorch without a compiler: every operation is its own
  kernel that reads its inputs and writes its output. ``norm``, as ``none`` but each normalisation
  layer (a module whose class name ends in ``Norm``) is one kernel, forward and backward, that
  reads what it did not make and writes its last result (a hand-written fused norm kernel such as
  Apex's or torchtitan's ``fused_rmsnorm``);
- the shape ``(batch, m, n, k)`` of each ``mm``, ``addmm``, ``bmm`` and ``baddbmm``;
- a backward matrix product whose output has a parameter's shape and whose reduction runs over
  the tokens is a weight gradient (W); every other backward operation belongs to I;
- an operation without FLOPs whose result is the unit's residual stream (``tokens × width``, the
  width of the unit's input: layer norms, residual adds, hidden dropouts) is marked ``residual``:
  Megatron's tensor parallelism runs these whole on every rank unless sequence parallel
  (Korthikanti et al. 2022, §4.2.2), where the products and the attention are split.

**Attention as the kernel runs it** (:func:`attention_kernel`): SDPA is replaced by one operation
of the kernel's own accounting. ``math`` is two batched GEMMs in the compute dtype (``QKᵀ`` and
the probabilities times ``V``, full ``s × s`` products) and one softmax kernel that reads the
scores and writes the probabilities (scale and mask fused into it, as Megatron's
``FusedScaleMaskSoftmax``); it keeps the ``s × s`` probabilities in the compute dtype for the
backward, which runs four GEMMs and a softmax backward (reads the probabilities and their
gradient, writes the scores' gradient); these kernels' ``s × s`` traffic is marked (``Op.scores``)
and priced at the bandwidth standard attention reaches (``profiles.devices``). ``flash`` and
``efficient`` are one fused kernel that keeps only its inputs, its output and the row
log-sum-exp (4 bytes per query row and head), and counts the FLOPs the FlashAttention benchmarks count (flash-attention
``benchmarks/benchmark_flash_attention.py``): forward ``4·b·s_q·s_k·a·d``, halved when causal,
backward 2.5× the forward. A fused call is taken as causal when SDPA is asked for causality or
given a mask (the zoo's decoders pass their causal mask; an encoder without padding passes
none). Attention dropout, when the model's config asks for it (``ATTENTION_DROPOUT_KEYS``), is its
own kernel on the math path (reads the probabilities, writes a 1-byte mask and the dropped
probabilities, both kept for the backward, as Korthikanti et al. 2022, §4.1, count them; its
backward reads the gradient and the mask and writes the gradient) and costs nothing extra inside
a fused kernel. Sliding windows are not modelled.
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

__all__ = [
    "ATTENTION_DROPOUT_KEYS",
    "ATTENTION_KERNELS",
    "AttentionKernel",
    "FUSIONS",
    "Fusion",
    "Op",
    "OpRecorder",
    "attention_kernel",
]

AttentionKernel = Literal["flash", "efficient", "math"]
Fusion = Literal["default", "none", "norm"]
#: how pointwise operations run (module docstring): runs fused, each its own kernel, or each its
#: own kernel but the normalisation layers fused
FUSIONS: tuple[str, ...] = ("default", "none", "norm")
#: config keys of attention-probability dropout (GPT-2, Llama-style, BERT)
ATTENTION_DROPOUT_KEYS = ("attn_pdrop", "attention_dropout", "attention_probs_dropout_prob")

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
    residual: bool = False  #: no FLOPs, its result the residual stream (``tokens × width``)
    scores: bool = False  #: an unfused attention kernel reading or writing the ``s × s`` scores


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
    activations; ``width``: their columns (0: none, nothing is marked ``residual``); with
    ``backward`` set, products that make a weight's gradient are marked W; ``fusion``: how pointwise
    operations run (:data:`FUSIONS`; with ``norm``, the unit's norm layers are fused only within
    :meth:`fusing_norms`)."""

    def __init__(
        self,
        weight_shapes: set[tuple[int, ...]] = frozenset(),
        tokens: int = 0,
        width: int = 0,
        fusion: Fusion = "default",
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion {fusion!r}: choose one of {', '.join(FUSIONS)}")
        self.ops: list[Op] = []
        self.weight_shapes = weight_shapes
        self.tokens = tokens
        self.width = width
        self.fusion = fusion
        self.backward = False
        self._run: dict | None = None  # the pointwise run (or norm layer) being fused
        self._norm_depth = 0  # > 0: inside a fused norm layer's forward
        self._norm_nodes: set = set()  # the autograd nodes of fused norm layers: their backward is fused too
        self._norm_inputs: set = set()  # the nodes that made the input of the norm layer being run

    def record(self, op: Op) -> None:
        self.flush()
        self.ops.append(op)

    def flush(self) -> None:
        """Close the pointwise run: one kernel of its outside reads and its last write."""
        run, self._run = self._run, None
        if run is not None:
            name = "fused norm" if self.fusion == "norm" else "pointwise"
            self.ops.append(Op(name, run["flops"], run["read"] + run["write"], residual=run["residual"]))

    @contextmanager
    def fusing_norms(self, unit: torch.nn.Module) -> Iterator[None]:
        """Within the block, with ``fusion`` ``norm``, each norm layer of ``unit`` (a module whose class
        name ends in ``Norm``) runs as one kernel in the forward and one in the backward."""
        if self.fusion != "norm":
            yield
            return
        handles = []
        for m in unit.modules():
            if type(m).__name__.endswith("Norm"):
                handles.append(m.register_forward_pre_hook(self._enter_norm))
                handles.append(m.register_forward_hook(self._leave_norm))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _enter_norm(self, module, inputs) -> None:
        self.flush()
        self._norm_depth += 1
        self._norm_inputs = {t.grad_fn for t in _tensors(inputs) if t.grad_fn is not None}

    def _leave_norm(self, module, inputs, output) -> None:
        self.flush()
        self._norm_depth -= 1
        # the layer's autograd nodes: from its output back to the nodes that made its input
        todo = [t.grad_fn for t in _tensors(output)]
        while todo:
            node = todo.pop()
            if node is None or node in self._norm_nodes or node in self._norm_inputs:
                continue
            self._norm_nodes.add(node)
            todo += [n for n, _ in node.next_functions]

    def _in_norm(self) -> bool:
        if self._norm_depth:
            return True
        return self.backward and bool(self._norm_nodes) and torch._C._current_autograd_node() in self._norm_nodes

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
        pointwise = torch.Tag.pointwise in func.tags and not flops
        if (pointwise and self.fusion == "default") or (self.fusion == "norm" and self._in_norm()):
            self._pointwise(ins, outs, flops)
            return out
        moved = float(sum(_nbytes(t) for t in ins) + sum(_nbytes(t) for t in outs))
        gemm = _gemm_shape(func, args) if func in _GEMMS else None
        residual = not flops and bool(outs) and self._is_residual(outs[0])
        weight_grad = self._is_weight_grad(gemm, outs)
        self.record(Op(str(packet), flops, moved, gemm, weight_grad=weight_grad, residual=residual))
        return out

    def _is_residual(self, t: torch.Tensor) -> bool:
        """``t`` is the residual stream: ``tokens × width``."""
        return bool(self.width) and t.dim() > 1 and t.shape[-1] == self.width and t.numel() == self.tokens * self.width

    def _pointwise(self, ins: list[torch.Tensor], outs: list[torch.Tensor], flops: float = 0.0) -> None:
        """Add an operation to the fused run: a pointwise run, or the norm layer being run."""
        run = self._run
        if run is None:
            run = self._run = {"flops": 0.0, "read": 0.0, "write": 0.0, "made": set(), "seen": set(), "residual": True}
        run["flops"] += flops
        for t in ins:
            k = _key(t)
            if k not in run["made"] and k not in run["seen"]:
                run["seen"].add(k)
                run["read"] += _nbytes(t)
        run["made"].update(_key(t) for t in outs)
        run["write"] = float(sum(_nbytes(t) for t in outs))
        run["residual"] = bool(outs) and all(self._is_residual(t) for t in outs)  # the run's last write

    def _is_weight_grad(self, gemm, outs: list[torch.Tensor]) -> bool:
        if not self.backward or not outs:
            return False
        shape = tuple(outs[0].shape)
        if shape not in self.weight_shapes and shape[::-1] not in self.weight_shapes:
            return False
        return gemm is None or not self.tokens or gemm[3] == self.tokens  # W reduces over the tokens


@dataclass(frozen=True)
class _Call:
    """How one attention call runs and where its operations go: a single argument of
    ``_Attention.apply``, which takes no keywords."""

    causal: bool
    kernel: str
    dropout: bool
    recorder: OpRecorder | None


class _Attention(torch.autograd.Function):
    """SDPA as one operation of ``kernel``'s accounting (module docstring)."""

    @staticmethod
    def forward(ctx, q, k, v, call: _Call):
        causal, kernel, dropout, recorder = call.causal, call.kernel, call.dropout, call.recorder
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        if kernel == "math":
            kept = [q.new_empty((*q.shape[:-1], k.shape[-2]))]  # the probabilities, s_q × s_k per head
            if dropout:  # its mask and the dropped probabilities
                kept += [q.new_empty(kept[0].shape, dtype=torch.bool), q.new_empty(kept[0].shape)]
        else:
            kept = [q.new_empty(q.shape[:-1], dtype=torch.float32)]  # the row log-sum-exp
        ctx.save_for_backward(q, k, v, out, *kept)
        ctx.causal, ctx.kernel, ctx.dropout, ctx.recorder = causal, kernel, dropout, recorder
        if recorder is not None:
            for op in _attention_ops(q, k, v, causal, kernel, dropout, backward=False):
                recorder.record(op)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v = ctx.saved_tensors[:3]
        if ctx.recorder is not None:
            for op in _attention_ops(q, k, v, ctx.causal, ctx.kernel, ctx.dropout, backward=True):
                ctx.recorder.record(op)
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), None


def _attention_ops(q, k, v, causal: bool, kernel: str, dropout: bool, *, backward: bool) -> list[Op]:
    """The operations of one attention call (module docstring)."""
    b, a, sq, d = q.shape
    sk, dv, elem = k.shape[-2], v.shape[-1], q.element_size()
    qb, ob = float(_nbytes(q)), float(b * a * sq * dv * elem)
    qkvo = qb + _nbytes(k) + _nbytes(v) + ob
    if kernel != "math":  # 4·b·s_q·s_k·a·d with d the mean of the query-key and value widths
        flops = 2.0 * b * a * sq * sk * (d + dv) * (0.5 if causal else 1.0)
        if backward:
            return [Op("attention backward", 2.5 * flops, 2.0 * qkvo, attention=True)]
        return [Op("attention", flops, qkvo, attention=True)]
    bh, scores = b * a, float(b * a * sq * sk * elem)
    kb, vb = float(bh * sk * d * elem), float(bh * sk * dv * elem)  # k and v as every query head reads them

    def gemm(name, m, n, k_, ins):
        return Op(name, 2.0 * bh * m * n * k_, ins + bh * m * n * elem, gemm=(bh, m, n, k_), scores=True)

    mask = scores / elem  # one byte per probability
    if not backward:
        return [
            gemm("attention QK^T", sq, sk, d, qb + kb),
            Op("attention softmax", 0.0, 2 * scores, scores=True),
            *([Op("attention dropout", 0.0, 2 * scores + mask, scores=True)] if dropout else []),
            gemm("attention PV", sq, dv, sk, scores + vb),
        ]
    return [
        gemm("attention dV = P^T dO", sk, dv, sq, scores + ob),
        gemm("attention dP = dO V^T", sq, sk, dv, ob + vb),
        *([Op("attention dropout backward", 0.0, 2 * scores + mask, scores=True)] if dropout else []),
        Op("attention softmax backward", 0.0, 3 * scores, scores=True),
        gemm("attention dQ = dS K", sq, d, sk, scores + kb),
        gemm("attention dK = dS^T Q", sk, d, sq, scores + qb),
    ]


@contextmanager
def attention_kernel(
    kernel: AttentionKernel, recorder: OpRecorder | None = None, *, dropout: bool = False
) -> Iterator[None]:
    """Within the block, ``scaled_dot_product_attention`` runs as ``kernel`` does, with attention
    dropout when ``dropout`` (module docstring)."""
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"attention kernel {kernel!r}: choose one of {', '.join(ATTENTION_KERNELS)}")
    original = functional.scaled_dot_product_attention

    # torch's own signature: ``scale`` and ``enable_gqa`` are keyword-only there too
    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None, enable_gqa=False):
        if key.shape[-3] != query.shape[-3] and not enable_gqa:
            raise ValueError("attention: key/value heads differ from query heads without enable_gqa")
        causal = bool(is_causal or attn_mask is not None)
        return _Attention.apply(query, key, value, _Call(causal, kernel, dropout, recorder))

    functional.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        functional.scaled_dot_product_attention = original
