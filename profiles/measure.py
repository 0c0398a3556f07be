"""Measure each unit of a model: forward (F), full backward (B), input-gradient (I)
and weight-gradient (W) time, saved-activation bytes, output bytes, parameters, FLOPs.

Each profile records how it was measured in ``measurement``, including ``ASSUMPTIONS``
(below): the conditions its numbers hold under, for a reader comparing them with a run.
"""

from __future__ import annotations

import importlib.util
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .contract import UserError
from .neighbour import check_count, neighbours
from .presets import PRESETS, family_of, layer_key
from .tp_plans import recorded_tp_plan
from .tuning import gc_paused, keep_freed_memory
from .types import DTYPE_TABLE, DTYPES, Profile, ProfileEntry, TiedParams, UnitCost, WholeModel
from .zoo import ZooModel, build_model

__all__ = [
    "profile_model",
    "flop_counter",
    "count_saved_bytes",
    "loss_saved_bytes",
    "TORCH_DTYPES",
    "attention_impl",
    "ASSUMPTIONS",
]

#: torch dtypes by the names profiles use (a view of ``profiles.types.DTYPE_TABLE``)
TORCH_DTYPES = {name: getattr(torch, d.torch_name) for name, d in DTYPE_TABLE.items()}
TIMES = ("forward_s", "backward_s", "backward_input_s", "backward_weight_s")

#: How a measured profile's numbers were taken, written into every profile's ``measurement``.
ASSUMPTIONS: tuple[str, ...] = (
    "units are timed in the context they run in: one repeat runs the whole chain of units forward then backward "
    "(each unit's input a detached leaf, as at a stage boundary), with a clock mark between units, so caches are "
    "as warm or cold as in a real step;",
    "F comes from two chained forwards per repeat; B from a backward unit by unit, last first, each unit receiving "
    "the input gradient the next unit produced;",
    "I then W are timed on one graph the way zero-bubble runtimes run them (torch.distributed.pipelining "
    "stage_backward_input / stage_backward_weight): I is autograd.grad for the unit's input with the graph retained "
    "and hooks keeping the gradients at the nodes that lead to weights; W then starts from those gradients, after "
    "all units' I. The graph analysis that finds those nodes (torch's construct_reverse_graph and get_param_groups) "
    "is timed in I, since stage_backward_input runs it there;",
    "the last unit's forward includes the loss and its backward starts from the loss;",
    "unit chains and whole-model runs are interleaved repeat by repeat, so drift hits both;",
    "parameter gradients stay allocated between passes and every timed backward adds into them, as microbatches "
    "after the first of a step do (no first-touch page faults timed);",
    "on CPU (glibc) freed memory is kept for reuse (mallopt: no mmap for large blocks, no trim), as CUDA's caching "
    "allocator does, so big tensors do not pay first-touch page faults anew every pass; this setting stays for the "
    "rest of the process;",
    "Python's garbage collector runs once before the repeats and is off while they run;",
    "with ``side_by_side`` N (CPU), N processes train the same model (fp32, one thread each) beside the profiler "
    "while it times, as the other ranks of a host compute beside each rank;",
    "CPU timing runs with one thread, as each executor rank does, and reads that thread's CPU time, so time the "
    "thread was ready but off its core (other load) is left out; CUDA timing uses events, and each unit's peak "
    "memory (max_memory_allocated over its F + B) is recorded;",
    "16-bit dtypes run under torch.autocast with fp32 weights (mixed precision training);",
    "saved bytes are counted with saved-tensor hooks, each storage once, parameters excluded.",
)


def _grouped_mm_flop(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """A grouped matmul (mixture-of-experts layers): each row of ``a`` meets one group's matrix,
    so 2 x a's elements x the output width (forward, and both backward products alike)."""
    n = 1
    for d in a_shape:
        n *= d
    return 2 * n * out_shape[-1]


def flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode, also counting the grouped matmuls of routed experts."""
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten._grouped_mm: _grouped_mm_flop})


def storage_key(t: torch.Tensor) -> int:
    """Identity of a tensor's storage, shared by its views (also on the meta device)."""
    return t.untyped_storage()._cdata


@contextmanager
def count_saved_bytes(exclude: list[torch.Tensor] | tuple = ()) -> Iterator[list[int]]:
    """Count bytes autograd saves for backward, each storage once, ``exclude`` (parameters) not.

    Yields a one-element list holding the running total. Works on the meta device.
    """
    skip = {storage_key(t) for t in exclude}
    seen: set[int] = set()
    total = [0]

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        key = st._cdata
        if key not in skip and key not in seen and st.nbytes() > 0:
            seen.add(key)
            total[0] += st.nbytes()
        return t.detach()  # not ``t``: a node's own saved output would make a cycle that is never freed

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total


def attention_impl(device: str, dtypes: tuple[str, ...]) -> tuple[str, str]:
    """The attention implementation to build with, and why."""
    if device != "cuda":
        return "sdpa", "PyTorch SDPA (FlashAttention is CUDA only)"
    if importlib.util.find_spec("flash_attn") is None:
        return "sdpa", "PyTorch SDPA (flash_attn is not installed)"
    if any(d == "fp32" for d in dtypes):
        return "sdpa", "PyTorch SDPA (FlashAttention has no fp32 kernel and fp32 was asked for)"
    return "flash_attention_2", "FlashAttention-2 (flash_attn installed)"


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


class _Clock:
    """Marks on a timeline: this thread's CPU time on CPU, CUDA events (read after one sync) on CUDA.

    Why CPU time: each CPU rank runs one thread on a core of its own, where a unit's wall time is
    its CPU time; other work on the host that takes the profiler's core for a while (the
    ``off_cpu_fraction`` of the measurement) would otherwise land in the profile and in every
    prediction made from it. Sharing caches and memory bandwidth with neighbours slows the
    thread itself and so still counts."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.thread_time()

    def between(self, marks: list) -> list[float]:
        """Seconds between consecutive marks."""
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(marks, marks[1:])]
        return [b - a for a, b in zip(marks, marks[1:])]


def _median_spread(xs: list[float]) -> tuple[float, float]:
    """Median and relative spread: median absolute deviation / median of the repeats."""
    med = statistics.median(xs)
    if len(xs) < 2 or med <= 0:
        return med, 0.0
    return med, statistics.median(abs(x - med) for x in xs) / med


def _leaf(x: torch.Tensor) -> torch.Tensor:
    x = x.detach()
    if x.is_floating_point():
        x.requires_grad_(True)
    return x


class _Runner:
    """Runs one model's chain of units for one (dtype, microbatch size) and times it."""

    def __init__(self, model: ZooModel, dtype: str, inputs: torch.Tensor, target: torch.Tensor, device: str):
        self.model, self.inputs, self.target = model, inputs, target
        self.clock = _Clock(device)
        self.autocast = (
            torch.autocast(device_type=device, dtype=TORCH_DTYPES[dtype]) if dtype != "fp32" else nullcontext()
        )
        self.params = [[p for p in u.parameters() if p.requires_grad] for u in model.units]
        # a tied parameter (one embedding for input and output) is held by two units: once here
        self.all_params = list({id(p): p for ps in self.params for p in ps}.values())
        self.last = len(model.units) - 1

    def unit_forward(self, idx: int, x: torch.Tensor) -> torch.Tensor:
        with self.autocast:
            out = self.model.units[idx](x)
            return self.model.loss_fn(out, self.target) if idx == self.last else out

    def clear_grads(self) -> None:
        for p in self.all_params:
            p.grad = None

    def chain_forward(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[float]]:
        """Forward through all units; returns unit inputs (leaves), outputs and F times."""
        xs, outs, marks = [], [], []
        x = self.inputs
        for idx in range(len(self.model.units)):
            x_in = _leaf(x)
            m0 = self.clock.mark()
            out = self.unit_forward(idx, x_in)
            marks.append((m0, self.clock.mark()))
            xs.append(x_in)
            outs.append(out)
            x = out
        return xs, outs, [self.clock.between(list(pair))[0] for pair in marks]

    def chain_full_backward(self, xs, outs) -> list[float]:
        """B per unit, last unit first; each unit gets the input gradient of the next."""
        grad = None
        times = [0.0] * len(xs)
        for idx in range(self.last, -1, -1):
            x_in, out = xs[idx], outs[idx]
            targets = self.params[idx] + ([x_in] if x_in.requires_grad else [])
            m0 = self.clock.mark()
            torch.autograd.backward(out, grad, inputs=targets)
            m1 = self.clock.mark()
            times[idx] = self.clock.between([m0, m1])[0]
            grad = x_in.grad
        return times

    def chain_split_backward(self, xs, outs) -> tuple[list[float], list[float]]:
        """I for every unit (last first), then W for every unit, as a zero-bubble runtime does."""
        from torch.distributed.pipelining._backward import stage_backward_weight

        n = len(xs)
        t_i, t_w = [0.0] * n, [0.0] * n
        groups: list = [None] * n
        grad = None
        for idx in range(self.last, -1, -1):
            x_in, out, params = xs[idx], outs[idx], self.params[idx]
            if not x_in.requires_grad:  # the first unit's input is token ids: its backward is all W
                m0 = self.clock.mark()
                torch.autograd.backward(out, grad, inputs=params)
                t_w[idx] = self.clock.between([m0, self.clock.mark()])[0]
                continue
            m0 = self.clock.mark()  # the graph analysis is part of I, as stage_backward_input runs it
            groups[idx], handles = _param_groups(out, x_in, params)
            (dx,) = torch.autograd.grad(out, x_in, grad, retain_graph=bool(params))
            t_i[idx] = self.clock.between([m0, self.clock.mark()])[0]
            for h in handles:
                h.remove()
            grad = dx
        for idx in range(n):
            if groups[idx] is None or not self.params[idx]:
                continue
            m0 = self.clock.mark()
            stage_backward_weight(iter(self.params[idx]), groups[idx])
            t_w[idx] = self.clock.between([m0, self.clock.mark()])[0]
        return t_i, t_w

    def whole(self) -> tuple[float, float]:
        """The model run plainly (one graph), forward and backward times."""
        m0 = self.clock.mark()
        with self.autocast:
            loss = self.model.loss_fn(self.model.forward(self.inputs), self.target)
        m1 = self.clock.mark()
        torch.autograd.backward(loss, inputs=self.all_params)
        m2 = self.clock.mark()
        f, b = self.clock.between([m0, m1, m2])
        return f, b


def _param_groups(out: torch.Tensor, x_in: torch.Tensor, params: list[nn.Parameter]):
    """Torch pipelining's preparation for I/W: find the nodes W starts from, hook their grads."""
    from torch.distributed.pipelining._backward import (
        _get_grad_fn_or_grad_acc,
        construct_reverse_graph,
        get_param_groups,
    )

    groups = get_param_groups(
        [_get_grad_fn_or_grad_acc(x_in)],
        [_get_grad_fn_or_grad_acc(p) for p in params],
        construct_reverse_graph([out.grad_fn]),
    )
    handles = []
    for group in groups:
        group["intermediates"] = list(group["intermediates"])
        for i, node in enumerate(group["intermediates"]):

            def hook(grad_inputs, group=group, i=i):
                if group.get("grads") is None:
                    group["grads"] = [None] * len(group["intermediates"])
                group["grads"][i] = grad_inputs

            handles.append(node.register_prehook(hook))
    return groups, handles


def loss_saved_bytes(loss_fn: Callable, out: torch.Tensor, target: torch.Tensor) -> int:
    """Bytes the loss alone saves for backward, from the last unit's output ``out`` (also on meta)."""
    with count_saved_bytes() as saved:
        loss_fn(_leaf(out), target)
    return int(saved[0])


def _repeat(run: _Runner, keep: bool, samples: dict, whole_f: list, whole_b: list) -> None:
    """One repeat: chain F + B, chain F + I + W, whole model F + B."""
    xs, outs, f1 = run.chain_forward()
    b = run.chain_full_backward(xs, outs)
    xs, outs, f2 = run.chain_forward()
    i, w = run.chain_split_backward(xs, outs)
    del xs, outs
    wf, wb = run.whole()
    if keep:
        for idx in range(len(f1)):
            samples["forward_s"][idx] += [f1[idx], f2[idx]]
            samples["backward_s"][idx].append(b[idx])
            samples["backward_input_s"][idx].append(i[idx])
            samples["backward_weight_s"][idx].append(w[idx])
        whole_f.append(wf)
        whole_b.append(wb)


def _peak_bytes(run: _Runner, idx: int, x_in: torch.Tensor) -> int:
    """CUDA: the most memory the unit's forward + backward allocates above what was there."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = run.unit_forward(idx, x_in)
    targets = run.params[idx] + ([x_in] if x_in.requires_grad else [])
    torch.autograd.backward(out, None if idx == run.last else torch.ones_like(out), inputs=targets)
    torch.cuda.synchronize()
    del out
    return max(0, torch.cuda.max_memory_allocated() - base)


@dataclass(frozen=True, kw_only=True)
class _Settings:
    """How every entry of one profile is measured, and where each entry's facts are tallied."""

    device: str
    seq_len: int
    repeats: int
    warmup: int
    budget_s: float | None
    done: dict[str, int]  # timed repeats each entry got, by "dtype/mbN"
    off_cpu: dict[str, float]  # per entry: share of the timing loop the thread was off the CPU


def _profile_entry(model: ZooModel, dtype: str, mb: int, how: _Settings, tick: Callable[[], None]) -> ProfileEntry:
    """Time, then measure, the units of ``model`` for one (dtype, microbatch size); ``tick`` after each repeat."""
    inputs, target = model.make_batch(mb, how.seq_len, 0)
    run = _Runner(model, dtype, inputs.to(how.device), target.to(how.device), how.device)
    samples, whole_f, whole_b = _time_repeats(run, f"{dtype}/mb{mb}", how, tick)
    units: list[UnitCost] = []
    x = run.inputs
    for idx in range(len(model.units)):
        unit, x = _unit_cost(run, idx, x, samples, how.device)
        units.append(unit)
    with count_saved_bytes(exclude=run.all_params) as saved:
        with run.autocast:
            loss = model.loss_fn(model.forward(run.inputs), run.target)
    del loss
    run.clear_grads()
    how.done[f"{dtype}/mb{mb}"] = len(whole_f)
    return ProfileEntry(
        dtype, mb, tuple(units), WholeModel(statistics.median(whole_f), statistics.median(whole_b), int(saved[0]))
    )


def _time_repeats(
    run: _Runner, key: str, how: _Settings, tick: Callable[[], None]
) -> tuple[dict, list[float], list[float]]:
    """The warm-up and timed repeats: per unit the samples of each time, and the whole model's F and B."""
    n = len(run.model.units)
    samples = {k: [[] for _ in range(n)] for k in TIMES}
    whole_f, whole_b = [], []
    t0, cpu0 = time.perf_counter(), time.thread_time()
    with gc_paused():  # no collection between repeats either: it would cool the caches
        for r in range(how.warmup + how.repeats):
            _repeat(run, r >= how.warmup, samples, whole_f, whole_b)
            tick()
            # a slow case (bf16 on a CPU without bf16 units) stops early, after 2 timed repeats
            if how.budget_s is not None and len(whole_f) >= 2 and time.perf_counter() - t0 > how.budget_s:
                break
    if how.device == "cpu":  # on CUDA the thread also sleeps in synchronisations, so this says nothing there
        wall = time.perf_counter() - t0
        how.off_cpu[key] = round(max(0.0, 1 - (time.thread_time() - cpu0) / wall), 4) if wall else 0.0
    return samples, whole_f, whole_b


def _unit_cost(run: _Runner, idx: int, x: torch.Tensor, samples: dict, device: str) -> tuple[UnitCost, torch.Tensor]:
    """Unit ``idx``'s record from its timing samples and one more pass on input ``x``, and its output."""
    model, unit = run.model, run.model.units[idx]
    x_in = _leaf(x)
    with count_saved_bytes(exclude=run.params[idx]) as saved:
        out = run.unit_forward(idx, x_in)
    del out
    with flop_counter() as fc:
        run.unit_forward(idx, x_in)
    peak = _peak_bytes(run, idx, x_in) if device == "cuda" else 0
    with torch.no_grad(), run.autocast:
        y = unit(x_in)
    with run.autocast:
        loss_saved = loss_saved_bytes(run.model.loss_fn, y, run.target) if idx == run.last else 0
    med = {k: _median_spread(samples[k][idx]) for k in TIMES}
    cost = UnitCost(
        name=model.unit_names[idx],
        kind=model.unit_kinds[idx],
        forward_s=med["forward_s"][0],
        backward_s=med["backward_s"][0],
        backward_input_s=med["backward_input_s"][0],
        backward_weight_s=med["backward_weight_s"][0],
        params=sum(p.numel() for p in unit.parameters()),
        active_params=model.active_params(idx),
        param_bytes=sum(p.numel() * p.element_size() for p in unit.parameters()),
        saved_bytes=int(saved[0]),
        output_bytes=0 if idx == run.last else y.numel() * y.element_size(),
        forward_flops=float(fc.get_total_flops()),
        spread={k: round(v[1], 4) for k, v in med.items()},
        peak_bytes=peak,
        loss_saved_bytes=loss_saved,
    )
    return cost, y.detach()


def profile_model(
    name: str,
    *,
    device: str = "cpu",
    dtypes: tuple[str, ...] = ("fp32",),
    microbatch_sizes: tuple[int, ...] = (1,),
    seq_len: int = 128,
    overrides: dict | None = None,
    repeats: int = 5,
    warmup: int = 2,
    progress: bool = False,
    seed: int = 0,
    budget_s: float | None = 60.0,
    side_by_side: int = 0,
) -> Profile:
    """Build model ``name`` (a preset or ``module:function``) and measure every unit on ``device``.

    ``budget_s`` caps the seconds spent on one (dtype, microbatch size): past it, timing
    stops once 2 repeats are in; ``measurement.repeats_done`` says how many each got.
    ``side_by_side``: CPU only, this many processes train the same model beside the profiler
    while it times (``neighbour.neighbours``), as the other ranks of a host do in a pipeline.
    """
    how = _Settings(
        device=device, seq_len=seq_len, repeats=repeats, warmup=warmup, budget_s=budget_s, done={}, off_cpu={}
    )
    _check_request(how, dtypes, microbatch_sizes, side_by_side)
    attention, attention_why = attention_impl(device, dtypes)
    check_fits_here(name, overrides, attention, device)
    model = build_model(name, overrides, seed=seed, attention=attention)
    threads = torch.get_num_threads()
    kept = False
    if device == "cpu":
        torch.set_num_threads(1)
        kept = keep_freed_memory()
    for u in model.units:
        u.to(device)
    total = len(dtypes) * len(microbatch_sizes) * (warmup + repeats)
    bar = _progress(total, f"profiling {name}") if progress else None
    tick = bar.update if bar is not None else (lambda *a: None)
    t0 = time.perf_counter()
    beside = (
        neighbours(side_by_side, name, overrides, seq_len, min(microbatch_sizes), attention)
        if side_by_side
        else nullcontext()
    )
    try:
        with beside:
            entries = tuple(
                _profile_entry(model, d, mb, how, tick) for d in dtypes for mb in sorted(set(microbatch_sizes))
            )
    finally:
        if bar is not None:
            bar.close()
        torch.set_num_threads(threads)
    return Profile(
        model_name=name,
        model_config=model.config,
        tp_plan=recorded_tp_plan(model.config.get("model_type")),
        tied=tied_record(model),
        device_name=_device_name(device),
        device_kind=device,
        seq_len=seq_len,
        method="measured",
        entries=entries,
        measurement=_measurement(
            how,
            threads=1 if device == "cpu" else threads,
            side_by_side=side_by_side,
            attention=attention,
            attention_reason=attention_why,
            kept=kept,
            seed=seed,
            seconds=time.perf_counter() - t0,
        ),
    )


def _measurement(
    how: _Settings,
    *,
    threads: int,
    side_by_side: int,
    attention: str,
    attention_reason: str,
    kept: bool,
    seed: int,
    seconds: float,
) -> dict:
    """The profile's ``measurement``: how its numbers were taken, for a reader comparing them with a run."""
    return {
        "repeats": how.repeats,
        "repeats_done": how.done,
        "budget_s_per_entry": how.budget_s,
        "warmup": how.warmup,
        "threads": threads,
        # processes training the model beside the profiler (the other ranks of a host)
        "side_by_side": side_by_side,
        # per entry: share of the timing loop the thread was ready but off the CPU (other load)
        "off_cpu_fraction": how.off_cpu,
        "statistic": "median",
        "spread": "median absolute deviation / median over the repeats",
        "attention": attention,
        "cpu_allocator_keeps_freed_memory": kept,
        "attention_reason": attention_reason,
        "seed": seed,
        "torch": torch.__version__,
        "profiling_s": round(seconds, 3),
        "assumptions": list(ASSUMPTIONS),
    }


def _check_request(
    how: _Settings, dtypes: tuple[str, ...], microbatch_sizes: tuple[int, ...], side_by_side: int
) -> None:
    """Refuse, with the flag to change, a request this host cannot measure."""
    for d in dtypes:
        if d not in DTYPES:
            raise UserError(f"--dtypes: unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
    if not dtypes or not microbatch_sizes:
        raise UserError("--dtypes and --microbatch-sizes must name at least one value")
    device = how.device
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible here; use --device cpu or --analytic")
    if device == "cuda" and "bf16" in dtypes and not torch.cuda.is_bf16_supported():
        raise UserError("--dtypes bf16: this GPU has no bf16 support; use fp16 or fp32")
    if any(m < 1 for m in microbatch_sizes) or how.seq_len < 1 or how.repeats < 1 or how.warmup < 0:
        raise UserError("--microbatch-sizes, --seq-len and --repeats must be positive, --warmup not negative")
    if side_by_side and device != "cpu":
        raise UserError(
            f"--side-by-side {side_by_side}: for CPU ranks sharing a host; leave it out with "
            f"--device {device} (each rank has a device of its own)"
        )
    check_count(side_by_side)


#: bytes per parameter the profiler holds at once on CPU: fp32 weights and gradients, and
#: one cast copy of each for a 16-bit entry
_BYTES_PER_PARAM = 12


def tied_record(model: ZooModel) -> tuple[TiedParams, ...]:
    """The profile's record of parameters shared by several units (tied embeddings)."""
    return tuple(
        TiedParams(units=tuple(model.unit_names[i] for i in units), params=p.numel()) for units, p in model.tied()
    )


def _memory_here() -> int | None:
    """Bytes this process may still allocate: the machine's available memory, and what is left
    under an address-space limit (``ulimit -v``); None when neither is known."""
    import resource

    free: list[int] = []
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                free.append(int(line.split()[1]) * 1024)
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            for line in open("/proc/self/status"):
                if line.startswith("VmSize:"):
                    free.append(soft - int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    return min(free) if free else None


def check_fits_here(name: str, overrides: dict | None, attention: str, device: str) -> None:
    """Refuse, before a byte of weights exists, a model whose parameters alone outgrow this
    machine's CPU memory: counted from the model built on the meta device with one and with
    two blocks (the blocks of a preset are alike)."""
    family = family_of(name)
    if device != "cpu" or family in (None, "user"):
        return  # presets only: a model type or config.json is sized by its own build
    key = layer_key(family)
    layers = {**PRESETS[name][1], **(overrides or {})}.get(key, 1)

    def count(n: int) -> int:  # parameters with n blocks (a model of thousands takes minutes to build)
        meta = build_model(name, {**(overrides or {}), key: n}, attention=attention, device="meta")
        return sum(p.numel() for u in meta.units for p in u.parameters())

    try:
        one = count(1)
        params = one + (layers - 1) * (count(2) - one) if layers > 1 else one
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta is checked by its real build
        return
    need, have = params * _BYTES_PER_PARAM, _memory_here()
    if have is not None and need > have:
        raise UserError(
            f"{name}: {params / 1e9:.2f} B parameters need about {need / 2**30:.1f} GiB to profile here, "
            f"more than the {max(have, 0) / 2**30:.1f} GiB free: make it smaller with --set, or use --analytic"
        )


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="repeat", leave=False)
