"""Analytic profiles: FLOPs and bytes counted on the meta device, turned into times
with a device spec. Nothing runs on the device and no memory is allocated, so
``llama3-70b`` takes seconds.

Assumptions (written into the profile's ``measurement``):
- every operation a unit runs is recorded on meta tensors (``profiles/ops.py``): its FLOPs as
  torch's FlopCounterMode counts them (matrix products and attention), its bytes moved (inputs
  and outputs; pointwise operations as the profile's ``fusion`` runs them: ``default``, each run of
  them fused into one kernel; ``none``, eager, each its own kernel; ``norm``, eager but each norm
  layer one kernel), a GEMM's (m, n, k);
- each operation costs the larger of its FLOP time and its memory time (a roofline per op), and
  a unit's F, I and W are sums of their operations: operations run one after another;
- a GEMM's FLOP rate is the datasheet peak times ``profiles.gemm.matmul_efficiency``: tile and
  wave quantisation on the device's SMs times the published sustainable (else achievable) matmul share;
- memory time is bytes over the datasheet bandwidth times the device's achievable share; the
  unfused (math) attention's s x s kernels at the share standard attention reaches in
  FlashAttention-3's benchmark (``profiles.devices.SCORES_MEMORY_EFFICIENCY``);
- attention runs as the profile's kernel (``attention``): ``math`` decomposes into products and
  a softmax and keeps the s x s scores; ``flash`` and ``efficient`` are one fused kernel that keeps
  no s x s tensor and does half the products when causal, at the device's published fused
  attention efficiency; attention dropout, when the config asks for it, runs (the zoo builds
  models with dropout off; training runs it), and other dropouts are left out;
- of F and I, the operations on the residual stream (``profiles/ops.py``: norms, residual adds,
  hidden dropouts; no FLOPs, a ``tokens × width`` result) are recorded apart (``residual_forward_s``,
  ``residual_backward_s``): tensor parallelism without sequence parallelism runs them whole;
- W is the weight-gradient products (a backward product whose output has a parameter's shape
  and reduces over the tokens) plus adding each gradient into fp32 (read + write); I is the rest
  of the backward; B = I + W;
- fp32 runs without TF32 (PyTorch's default for matmuls); 16-bit runs on tensor cores;
- parameter bytes are the fp32 master weights (mixed precision keeps them), as in
  measured profiles under autocast; saved and output bytes are in the entry's dtype;
- identical blocks cost the same: the model is built on the meta device and one block of
  each kind (class, parameter shapes, full or sliding-window attention) is counted, its cost
  reused;
- mixture-of-experts blocks: FLOPs of the router and of each token's top-k experts (torch's
  grouped matmuls, counted as 2 x rows x the weight each row meets), parameters and memory
  for all experts; the router's auxiliary (load-balancing) loss is left out;
- no communication and no kernel launch overhead.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.fx
from torch import nn

from .contract import UserError
from .devices import DEVICE_SPECS, DeviceSpec
from .gemm import GEMM_DEVICES, GemmDevice, matmul_efficiency
from .measure import TORCH_DTYPES, count_saved_bytes, loss_saved_bytes, tied_record
from .ops import ATTENTION_DROPOUT_KEYS, ATTENTION_KERNELS, FUSIONS, Op, OpRecorder, attention_kernel
from .tp_plans import recorded_tp_plan
from .types import DTYPES, Profile, ProfileEntry, UnitCost, WholeModel
from .zoo import ZooModel, build_model

__all__ = ["DeviceSpec", "DEVICE_SPECS", "device_spec", "analytic_profile", "op_seconds"]


def _measure_cpu() -> DeviceSpec:
    """One CPU thread, measured here: a 512x512 matmul per dtype and a 64 MiB copy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        flops = {}
        for d, n in (("fp32", 512), ("bf16", 256), ("fp16", 256)):
            a = torch.randn(n, n).to(TORCH_DTYPES[d])
            a @ a
            t0 = time.perf_counter()
            reps = 0
            while time.perf_counter() - t0 < 0.1:
                a @ a
                reps += 1
            flops[d] = 2 * n**3 * reps / (time.perf_counter() - t0)
        src = torch.empty(16 * 2**20)
        dst = torch.empty_like(src)
        dst.copy_(src)
        t0 = time.perf_counter()
        for _ in range(5):
            dst.copy_(src)
        bw = 5 * 2 * src.numel() * 4 / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    import os

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return DeviceSpec(
        "this CPU, one thread",
        flops,
        bw,
        mem,
        "measured now: 512x512 fp32 and 256x256 16-bit matmuls, a 64 MiB copy, one thread",
    )


def device_spec(name: str) -> DeviceSpec:
    key = name.lower()
    if key == "cpu":
        return _measure_cpu()
    if key not in DEVICE_SPECS:
        raise UserError(f"--device-spec {name!r}: choose one of {', '.join([*DEVICE_SPECS, 'cpu'])}")
    return DEVICE_SPECS[key]


@dataclass(frozen=True)
class _Counted:
    """One unit counted on meta: its output, its operations and its memory."""

    out: torch.Tensor
    forward: tuple[Op, ...]
    backward: tuple[Op, ...]
    saved: int  #: bytes saved for backward
    params: int
    has_input_grad: bool  #: False for the first unit (token ids in): its backward is all W
    active: int  #: parameters a token uses
    loss_saved: int  #: bytes the loss alone saves (freed with I in a pipeline runtime)


def _count_unit(
    model: ZooModel, idx: int, x: torch.Tensor, target: torch.Tensor, *, dtype: str, kernel: str, fusion: str
) -> _Counted:
    """Forward and backward of unit ``idx`` on meta, every operation recorded, pointwise ones as
    ``fusion`` runs them."""
    unit = copy.deepcopy(model.units[idx]).to(TORCH_DTYPES[dtype])
    params = [p for p in unit.parameters()]
    last = idx == len(model.units) - 1
    x_in = x.detach()
    if x_in.is_floating_point():
        x_in = x_in.to(TORCH_DTYPES[dtype]).requires_grad_(True)
    tokens = x.numel() // x.shape[-1] if x.is_floating_point() and x.dim() > 1 else x.numel()  # activation rows
    width = x.shape[-1] if x.is_floating_point() and x.dim() > 1 else 0  # the residual stream's
    rec = OpRecorder({tuple(p.shape) for p in params if p.dim() >= 2}, tokens, width, fusion)
    dropout = any(model.config.get(k) for k in ATTENTION_DROPOUT_KEYS)  # as training runs it (the zoo's is off)
    with (
        count_saved_bytes(exclude=params) as saved,
        attention_kernel(kernel, rec, dropout=dropout),
        rec.fusing_norms(unit),
        rec,
    ):
        out = unit(x_in)
        loss = model.loss_fn(out, target) if last else None
    rec.flush()
    forward, rec.ops, rec.backward = tuple(rec.ops), [], True
    grad = None if last else torch.ones_like(out)  # what the next unit hands back: not this unit's work
    with rec:
        if last:
            loss.backward()
        else:
            out.backward(grad)
    rec.flush()
    return _Counted(
        out=out.detach(),
        forward=forward,
        backward=tuple(rec.ops),
        saved=int(saved[0]),
        params=sum(p.numel() for p in params),
        has_input_grad=x_in.requires_grad,
        active=model.active_params(idx),
        loss_saved=loss_saved_bytes(model.loss_fn, out, target) if last else 0,
    )


def op_seconds(op: Op, spec: DeviceSpec, dtype: str, gemm: GemmDevice | None) -> float:
    """One operation's roofline: the larger of its FLOP time and its memory time (an unfused
    attention kernel's ``s × s`` traffic at the share of the bandwidth standard attention reaches)."""
    memory = op.bytes / (spec.scores_bandwidth if op.scores else spec.bandwidth * spec.memory_efficiency)
    if not op.flops:
        return memory
    if op.attention:
        rate = spec.flops[dtype] * spec.attention_efficiency
    elif op.gemm is not None:
        batch, m, n, _ = op.gemm
        rate = spec.flops[dtype] * matmul_efficiency(m, n, gemm, batch)
    else:  # other counted products (grouped matmuls): the device's achievable share
        rate = spec.flops[dtype] * (gemm.achievable if gemm is not None else 1.0)
    return max(op.flops / rate, memory)


def _cost(name: str, kind: str, c: _Counted, output_bytes: int, seconds: Callable[[Op], float]) -> UnitCost:
    """Unit ``name``'s record from its counted operations, each priced by ``seconds`` (``op_seconds``
    on one device and dtype)."""
    fwd = sum(seconds(op) for op in c.forward)
    # the first unit (token ids in) has no input gradient: its whole backward is W
    is_w = [op.weight_grad or not c.has_input_grad for op in c.backward]
    i_t = sum(seconds(op) for op, w in zip(c.backward, is_w) if not w)
    w_t = sum(seconds(op) for op, w in zip(c.backward, is_w) if w)
    w_t += seconds(Op("grad accumulate", 0.0, 2 * 4 * c.params))  # into fp32: read + write
    residual_i = sum(seconds(op) for op, w in zip(c.backward, is_w) if not w and op.residual)
    return UnitCost(
        name=name,
        kind=kind,
        forward_s=fwd,
        backward_s=i_t + w_t,
        backward_input_s=i_t,
        backward_weight_s=w_t,
        params=c.params,
        active_params=c.active,
        param_bytes=4 * c.params,
        saved_bytes=c.saved,
        output_bytes=output_bytes,
        forward_flops=sum(op.flops for op in c.forward),
        loss_saved_bytes=c.loss_saved,
        residual_forward_s=sum(seconds(op) for op in c.forward if op.residual),
        residual_backward_s=residual_i,
    )


def analytic_profile(
    name: str,
    *,
    device_spec_name: str = "h100",
    dtypes: tuple[str, ...] = ("bf16",),
    microbatch_sizes: tuple[int, ...] = (1,),
    seq_len: int = 2048,
    overrides: dict | None = None,
    attention: str = "math",
    fusion: str = "default",
) -> Profile:
    """Profile model ``name`` analytically for the device ``device_spec_name``, its attention run
    by the ``attention`` kernel (``flash``, ``efficient`` or ``math``) and its pointwise operations
    as ``fusion`` says (``default``: runs of them fused; ``none``: eager, each its own kernel;
    ``norm``: eager, but each norm layer one kernel)."""
    if attention not in ATTENTION_KERNELS:
        raise UserError(f"--attention {attention!r}: choose one of {', '.join(ATTENTION_KERNELS)}")
    if fusion not in FUSIONS:
        raise UserError(f"--fusion {fusion!r}: choose one of {', '.join(FUSIONS)}")
    for d in dtypes:
        if d not in DTYPES:
            raise UserError(f"--dtypes: unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
    if not dtypes or not microbatch_sizes or any(m < 1 for m in microbatch_sizes) or seq_len < 1:
        raise UserError("--dtypes, --microbatch-sizes and --seq-len must be given and positive")
    t0 = time.perf_counter()
    spec = device_spec(device_spec_name)
    model = build_model(name, overrides, device="meta")
    if model.moe is not None and "fp32" in dtypes:
        raise UserError(
            "--dtypes fp32: analytic mixture-of-experts profiles count torch's grouped matmuls, which run in "
            "16 bits: use --dtypes bf16"
        )
    signatures = [_signature(model, i) for i in range(len(model.units))]
    gemm = GEMM_DEVICES.get(device_spec_name.lower())
    entries = _entries(
        model,
        signatures,
        spec=spec,
        gemm=gemm,
        dtypes=dtypes,
        microbatch_sizes=microbatch_sizes,
        seq_len=seq_len,
        kernel=attention,
        fusion=fusion,
    )
    return Profile(
        model_name=name,
        model_config=model.config,
        tp_plan=recorded_tp_plan(model.config.get("model_type")),
        tied=tied_record(model),
        device_name=spec.name,
        device_kind=device_spec_name.lower(),
        seq_len=seq_len,
        method="analytic",
        entries=tuple(entries),
        attention=attention,
        measurement={
            "device_spec": {
                "name": spec.name,
                "flops": spec.flops,
                "bandwidth": spec.bandwidth,
                "memory_bytes": spec.memory_bytes,
                "source": spec.source,
            },
            "matmul_achievable": gemm.achievable if gemm is not None else 1.0,
            "matmul_source": gemm.source if gemm is not None else "measured here",
            "memory_efficiency": spec.memory_efficiency,
            "attention_efficiency": spec.attention_efficiency,
            "scores_memory_efficiency": spec.scores_bandwidth / spec.bandwidth,
            "efficiency_source": spec.efficiency_source,
            "attention_kernel": attention,  # the Profile field; "attention" names an HF implementation
            "fusion": fusion,
            "units_counted": len(set(signatures)),
            "torch": torch.__version__,
            "profiling_s": round(time.perf_counter() - t0, 3),
            "assumptions": _assumptions(),
        },
    )


def _entries(
    model: ZooModel,
    signatures: list,
    *,
    spec: DeviceSpec,
    gemm: GemmDevice | None,
    dtypes: tuple[str, ...],
    microbatch_sizes: tuple[int, ...],
    seq_len: int,
    kernel: str,
    fusion: str,
) -> list:
    """One entry per (dtype, microbatch size): every unit counted on the meta device, priced on ``spec``."""
    entries = []
    for dtype in dtypes:
        seconds = partial(op_seconds, spec=spec, dtype=dtype, gemm=gemm)
        for mb in sorted(set(microbatch_sizes)):
            inputs, target = model.make_batch(mb, seq_len, 0)
            x = inputs.to("meta")
            target = target.to("meta")
            counted: dict = {}
            units = []
            for idx, (uname, kind) in enumerate(zip(model.unit_names, model.unit_kinds)):
                # identical units (same class, parameter shapes and attention type) are counted once
                c = counted.get(signatures[idx])
                if c is None:
                    c = counted[signatures[idx]] = _count_unit(
                        model, idx, x, target, dtype=dtype, kernel=kernel, fusion=fusion
                    )
                x = c.out
                out_bytes = 0 if idx == len(model.units) - 1 else c.out.numel() * c.out.element_size()
                units.append(_cost(uname, kind, c, out_bytes, seconds))
            whole = WholeModel(
                sum(u.forward_s for u in units), sum(u.backward_s for u in units), sum(u.saved_bytes for u in units)
            )
            entries.append(ProfileEntry(dtype, mb, tuple(units), whole))
    return entries


def _signature(model: ZooModel, idx: int) -> tuple:
    """What makes two units cost the same: class, module tree, parameter shapes, and the
    attention type a decoder layer's config gives it (full or sliding window)."""
    unit = model.units[idx]
    layer_types = model.config.get("layer_types")
    index = getattr(unit, "index", None)
    attn = layer_types[index] if isinstance(layer_types, list) and isinstance(index, int) else None
    if idx in (0, len(model.units) - 1):
        return (idx,)
    shapes = tuple(tuple(p.shape) for p in unit.parameters())
    return (type(unit).__name__, _structure(unit), shapes, attn)


def _structure(unit: nn.Module):
    """The module tree, or for a traced unit its graph's operations, names left out: blocks with
    equal shapes but other operations do not count as one."""
    if isinstance(unit, torch.fx.GraphModule):
        return tuple(
            repr(unit.get_submodule(n.target)) if n.op == "call_module" else (n.op, str(n.target))
            for n in unit.graph.nodes
            if n.op not in ("get_attr", "placeholder", "output")
        )
    return repr(getattr(unit, "layer", unit))


def _assumptions() -> list[str]:
    text = __doc__.split("Assumptions (written into the profile's ``measurement``):")[1]
    return [" ".join(item.split()).removeprefix("- ") for item in text.strip().split("\n- ") if item.strip()]
