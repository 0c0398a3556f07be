"""Analytic profiles: FLOPs and bytes counted on the meta device, turned into times
with a device spec. Nothing runs on the device and no memory is allocated, so
``llama3-70b`` takes seconds.

Assumptions (written into the profile's ``measurement``):
- FLOPs are counted by torch's FlopCounterMode on meta tensors: matrix products and
  attention only (norms, activations, softmax and the loss count no FLOPs);
- W FLOPs are the weight-gradient products, 2 x tokens x each weight matrix a token meets; I
  FLOPs are the rest of the counted backward FLOPs; B = I + W;
- bytes moved: forward reads the weights (in the entry's dtype) and writes the saved
  activations and the output; I reads the weights, the saved activations and the output
  gradient; W reads the saved activations and adds into fp32 gradients (read + write);
- time = FLOPs / (peak x matmul efficiency) + bytes / (bandwidth x memory efficiency):
  compute and memory traffic do not overlap within a unit (a pessimistic sum, not a max);
- fp32 runs without TF32 (PyTorch's default for matmuls); 16-bit runs on tensor cores;
- parameter bytes are the fp32 master weights (mixed precision keeps them), as in
  measured profiles under autocast; saved and output bytes are in the entry's dtype;
- identical blocks cost the same: the model is built on the meta device and one block of
  each kind (class, parameter shapes, full or sliding-window attention) is counted, its cost
  reused;
- mixture-of-experts blocks: FLOPs of the router and of each token's top-k experts (torch's
  grouped matmuls, counted as 2 x rows x the weight each row meets), parameters and memory
  for all experts; the router's auxiliary (load-balancing) loss is left out;
- no communication, no kernel launch overhead, no FlashAttention recompute savings.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn

from .contract import UserError
from .measure import TORCH_DTYPES, count_saved_bytes, flop_counter, loss_saved_bytes, tied_record
from .types import DTYPES, Profile, ProfileEntry, UnitCost, WholeModel
from .zoo import ZooModel, build_model

__all__ = ["DeviceSpec", "DEVICE_SPECS", "device_spec", "analytic_profile"]

MATMUL_EFFICIENCY = 0.6  # share of peak FLOP/s a large training GEMM reaches (typical 50-70%)
MEMORY_EFFICIENCY = 0.8  # share of peak bandwidth a streaming kernel reaches


@dataclass(frozen=True)
class DeviceSpec:
    """Peak dense FLOP/s per dtype, memory bandwidth (bytes/s) and memory size of one device."""

    name: str
    flops: dict[str, float]
    bandwidth: float
    memory_bytes: int
    source: str


DEVICE_SPECS: dict[str, DeviceSpec] = {
    "h100": DeviceSpec(
        "NVIDIA H100 SXM5 80GB",
        {"fp32": 66.9e12, "bf16": 989.4e12, "fp16": 989.4e12},
        3.35e12,
        80 * 2**30,
        "NVIDIA H100 Tensor Core GPU datasheet (dense, no sparsity)",
    ),
    "h200": DeviceSpec(
        "NVIDIA H200 SXM 141GB",
        {"fp32": 66.9e12, "bf16": 989.4e12, "fp16": 989.4e12},
        4.8e12,
        141 * 10**9,
        "NVIDIA H200 Tensor Core GPU datasheet (dense, no sparsity)",
    ),
    "a100": DeviceSpec(
        "NVIDIA A100 SXM4 80GB",
        {"fp32": 19.5e12, "bf16": 312e12, "fp16": 312e12},
        2.039e12,
        80 * 2**30,
        "NVIDIA A100 Tensor Core GPU datasheet (dense, no sparsity)",
    ),
}


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


def _weight_grad_flops(unit: nn.Module, tokens: int, moe: tuple[int, int] | None) -> float:
    """2 x tokens x each matrix a token meets (every weight of 2+ dimensions but an embedding's;
    of a routed expert's 3-D weight, the share of experts a token visits)."""
    lookup = {id(p) for m in unit.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    total = 0
    for p in unit.parameters():
        if p.dim() < 2 or id(p) in lookup:
            continue
        n = p.numel()
        if moe is not None and p.dim() == 3 and p.shape[0] == moe[0]:
            n = n * moe[1] // moe[0]
        total += 2 * tokens * n
    return float(total)


def _count_unit(model: ZooModel, idx: int, x: torch.Tensor, target: torch.Tensor, dtype: str, tokens: int):
    """Forward on meta: (output, forward flops, backward flops, W flops, saved bytes, parameters,
    whether the input takes a gradient, active parameters, bytes the loss alone saves)."""
    unit = copy.deepcopy(model.units[idx]).to(TORCH_DTYPES[dtype])
    params = [p for p in unit.parameters()]
    last = idx == len(model.units) - 1
    x_in = x.detach()
    if x_in.is_floating_point():
        x_in = x_in.to(TORCH_DTYPES[dtype]).requires_grad_(True)
    with count_saved_bytes(exclude=params) as saved, flop_counter() as fwd:
        out = unit(x_in)
        loss = model.loss_fn(out, target) if last else None
    with flop_counter() as bwd:
        if last:
            loss.backward()
        else:
            out.backward(torch.ones_like(out))
    return (
        out.detach(),
        float(fwd.get_total_flops()),
        float(bwd.get_total_flops()),
        _weight_grad_flops(unit, tokens, model.moe),
        int(saved[0]),
        sum(p.numel() for p in params),
        x_in.requires_grad,
        model.active_params(idx),
        loss_saved_bytes(model.loss_fn, out, target) if last else 0,  # freed with I in a pipeline runtime
    )


def _cost(name: str, kind: str, spec: DeviceSpec, dtype: str, counted, output_bytes: int) -> UnitCost:
    _, f_flops, b_flops, w_flops, saved, params, has_input_grad, active, loss_saved = counted
    w_flops = min(w_flops, b_flops)
    i_flops = b_flops - w_flops
    elem = torch.empty(0, dtype=TORCH_DTYPES[dtype]).element_size()
    weights = params * elem
    peak = spec.flops[dtype] * MATMUL_EFFICIENCY
    bw = spec.bandwidth * MEMORY_EFFICIENCY
    fwd = f_flops / peak + (weights + saved + output_bytes) / bw
    # the first unit's input is token ids: no input gradient, its backward is all W
    i_t = i_flops / peak + (weights + saved + output_bytes) / bw if has_input_grad else 0.0
    w_t = w_flops / peak + (saved + 2 * 4 * params) / bw
    return UnitCost(
        name=name,
        kind=kind,
        forward_s=fwd,
        backward_s=i_t + w_t,
        backward_input_s=i_t,
        backward_weight_s=w_t,
        params=params,
        active_params=active,
        param_bytes=4 * params,
        saved_bytes=saved,
        output_bytes=output_bytes,
        forward_flops=f_flops,
        loss_saved_bytes=loss_saved,
    )


def analytic_profile(
    name: str,
    *,
    device_spec_name: str = "h100",
    dtypes: tuple[str, ...] = ("bf16",),
    microbatch_sizes: tuple[int, ...] = (1,),
    seq_len: int = 2048,
    overrides: dict | None = None,
) -> Profile:
    """Profile model ``name`` analytically for the device ``device_spec_name``."""
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
    entries = _entries(model, signatures, spec, dtypes, microbatch_sizes, seq_len)
    return Profile(
        model_name=name,
        model_config=model.config,
        tied=tied_record(model),
        device_name=spec.name,
        device_kind=device_spec_name.lower(),
        seq_len=seq_len,
        method="analytic",
        entries=tuple(entries),
        measurement={
            "device_spec": {
                "name": spec.name,
                "flops": spec.flops,
                "bandwidth": spec.bandwidth,
                "memory_bytes": spec.memory_bytes,
                "source": spec.source,
            },
            "matmul_efficiency": MATMUL_EFFICIENCY,
            "memory_efficiency": MEMORY_EFFICIENCY,
            "attention": "sdpa (counted as full s x s products, no causal saving)",
            "units_counted": len(set(signatures)),
            "torch": torch.__version__,
            "profiling_s": round(time.perf_counter() - t0, 3),
            "assumptions": _assumptions(),
        },
    )


def _entries(model: ZooModel, signatures: list, spec: DeviceSpec, dtypes, microbatch_sizes, seq_len: int) -> list:
    entries = []
    for dtype in dtypes:
        for mb in sorted(set(microbatch_sizes)):
            inputs, target = model.make_batch(mb, seq_len, 0)
            x, tokens = inputs.to("meta"), mb * seq_len
            target = target.to("meta")
            counted: dict = {}
            units = []
            for idx, (uname, kind) in enumerate(zip(model.unit_names, model.unit_kinds)):
                # identical units (same class, parameter shapes and attention type) are counted once
                c = counted.get(signatures[idx])
                if c is None:
                    c = counted[signatures[idx]] = _count_unit(model, idx, x, target, dtype, tokens)
                x = c[0]
                out_bytes = 0 if idx == len(model.units) - 1 else c[0].numel() * c[0].element_size()
                units.append(_cost(uname, kind, spec, dtype, c, out_bytes))
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
