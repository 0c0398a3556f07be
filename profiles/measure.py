"""Measure each unit of a zoo model: forward, backward (B), input-gradient (I) and
weight-gradient (W) time, saved-activation bytes, output bytes, parameters and FLOPs.

Assumptions (written into the profile's ``measurement``):
- each unit is timed alone, on the output the previous unit really produced;
- the last unit's forward includes the loss and its backward starts from the loss;
- CPU timing runs with one thread, as each executor rank does;
- I and W are timed as two separate autograd calls on one graph, B as one call.
"""

from __future__ import annotations

import platform
import statistics
import time
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode
from torch import nn

from .contract import UserError
from .types import DTYPES, Profile, ProfileEntry, UnitCost, WholeModel
from .zoo import ZooModel, build_model

__all__ = ["profile_model", "count_saved_bytes", "TORCH_DTYPES"]

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@contextmanager
def count_saved_bytes(exclude: list[torch.Tensor] | tuple = ()) -> Iterator[list[int]]:
    """Count bytes autograd saves for backward, each storage once, parameters excluded.

    Yields a one-element list holding the running total.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: set[int] = set()
    total = [0]

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in skip and ptr not in seen and st.nbytes() > 0:
            seen.add(ptr)
            total[0] += st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


class _Timer:
    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def _median_spread(xs: list[float]) -> tuple[float, float]:
    med = statistics.median(xs)
    if len(xs) < 4 or med <= 0:
        return med, 0.0
    q = statistics.quantiles(xs, n=4)
    return med, (q[2] - q[0]) / med


def _grad_inputs(x: torch.Tensor) -> torch.Tensor:
    x = x.detach()
    if x.is_floating_point():
        x.requires_grad_(True)
    return x


def _profile_entry(model: ZooModel, dtype: str, mb: int, seq_len: int, device: str,
                   repeats: int, warmup: int, tick: Callable[[], None]) -> ProfileEntry:
    tdtype = TORCH_DTYPES[dtype]
    timer = _Timer(device)
    autocast = (torch.autocast(device_type=device, dtype=tdtype) if dtype != "fp32" else nullcontext())
    inputs, target = model.make_batch(mb, seq_len, 0)
    inputs, target = inputs.to(device), target.to(device)
    units: list[UnitCost] = []
    x = inputs
    last = len(model.units) - 1
    for idx, unit in enumerate(model.units):
        params = [p for p in unit.parameters() if p.requires_grad]
        x_in = _grad_inputs(x)

        def fwd() -> torch.Tensor:
            with autocast:
                out = unit(x_in)
                return model.loss_fn(out, target) if idx == last else out

        samples: dict[str, list[float]] = {"forward_s": [], "backward_s": [], "backward_input_s": [],
                                           "backward_weight_s": []}
        for r in range(warmup + repeats):
            keep = r >= warmup
            t = timer(fwd)
            if keep:
                samples["forward_s"].append(t)
            out = fwd()
            grad = torch.ones_like(out) if idx == last else torch.randn_like(out)
            t = timer(lambda: torch.autograd.backward(out, grad, inputs=[*params] + ([x_in] if x_in.requires_grad else [])))
            if keep:
                samples["backward_s"].append(t)
            out = fwd()
            if x_in.requires_grad:
                t_i = timer(lambda: torch.autograd.grad(out, x_in, grad, retain_graph=True))
            else:
                t_i = 0.0
            t_w = timer(lambda: torch.autograd.grad(out, params, grad)) if params else 0.0
            if keep:
                samples["backward_input_s"].append(t_i)
                samples["backward_weight_s"].append(t_w)
            tick()
        med = {k: _median_spread(v) for k, v in samples.items()}
        with count_saved_bytes(exclude=params) as saved:
            out = fwd()
        with FlopCounterMode(display=False) as fc:
            fwd()
        with torch.no_grad(), autocast:
            y = unit(x_in)
        n_params = sum(p.numel() for p in unit.parameters())
        units.append(UnitCost(
            name=model.unit_names[idx], kind=model.unit_kinds[idx],
            forward_s=med["forward_s"][0], backward_s=med["backward_s"][0],
            backward_input_s=med["backward_input_s"][0], backward_weight_s=med["backward_weight_s"][0],
            params=n_params, param_bytes=sum(p.numel() * p.element_size() for p in unit.parameters()),
            saved_bytes=int(saved[0]), output_bytes=0 if idx == last else y.numel() * y.element_size(),
            forward_flops=float(fc.get_total_flops()),
            spread={k: round(v[1], 4) for k, v in med.items()},
        ))
        del out
        x = y.detach()

    # Whole model, for the consistency check.
    all_params = [p for u in model.units for p in u.parameters()]

    def whole() -> torch.Tensor:
        with autocast:
            return model.loss_fn(model.forward(inputs), target)

    fw, bw = [], []
    for r in range(warmup + repeats):
        t = timer(whole)
        loss = whole()
        tb = timer(lambda: torch.autograd.backward(loss, inputs=all_params))
        if r >= warmup:
            fw.append(t)
            bw.append(tb)
        tick()
    with count_saved_bytes(exclude=all_params) as saved:
        loss = whole()
    del loss
    for p in all_params:
        p.grad = None
    return ProfileEntry(dtype, mb, tuple(units),
                        WholeModel(statistics.median(fw), statistics.median(bw), int(saved[0])))


def profile_model(name: str, *, device: str = "cpu", dtypes: tuple[str, ...] = ("fp32",),
                  microbatch_sizes: tuple[int, ...] = (1,), seq_len: int = 128,
                  overrides: dict | None = None, repeats: int = 5, warmup: int = 2,
                  progress: bool = False) -> Profile:
    """Build zoo model ``name`` and measure every unit on ``device``; return a Profile."""
    for d in dtypes:
        if d not in DTYPES:
            raise UserError(f"--dtypes: unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible here; use --device cpu or --analytic")
    if any(m < 1 for m in microbatch_sizes) or seq_len < 1 or repeats < 1:
        raise UserError("--microbatch-sizes, --seq-len and repeats must be positive")
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    model = build_model(name, overrides)
    for u in model.units:
        u.to(device)
    total = len(dtypes) * len(microbatch_sizes) * (len(model.units) + 1) * (warmup + repeats)
    bar = _progress(total, f"profiling {name}") if progress else None
    tick = bar.update if bar is not None else (lambda *a: None)
    try:
        entries = tuple(_profile_entry(model, d, mb, seq_len, device, repeats, warmup, tick)
                        for d in dtypes for mb in microbatch_sizes)
    finally:
        if bar is not None:
            bar.close()
        torch.set_num_threads(threads)
    return Profile(
        model_name=name, model_config=model.config, device_name=_device_name(device), device_kind=device,
        seq_len=seq_len, method="measured", entries=entries,
        measurement={"repeats": repeats, "warmup": warmup, "threads": 1 if device == "cpu" else threads,
                     "statistic": "median", "spread": "interquartile range / median",
                     "attention": "sdpa", "torch": torch.__version__,
                     "assumptions": __doc__.split("Assumptions (written into the profile's ``measurement``):")[1].strip()},
    )


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="run", leave=False)
