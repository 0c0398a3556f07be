"""``torchrun --nproc_per_node 2 -m executor.calibrate OUT``: measure this machine for the cost model.

Eight figures, each measured with what the executor really runs:

- ``action_overhead_s``: the real ``_PipelineScheduleRuntime`` runs a 1F1B table on MLP
  stages that send 128 KiB activations; per rank, step time minus compute time (wrapped
  ``*_one_chunk``) minus time spent waiting for receives, divided by the compute actions:
  what the runtime itself costs between actions (posting sends and receives, bookkeeping),
  plus what it costs inside each action around the math a profile times (the wrapped action
  less the block's forward or torch's ``stage_backward*`` function in it: retrieving inputs,
  checks, detaching outputs), both counted in this thread's CPU time, so that other load on
  the host, which keeps a rank off its core, does not pass for runtime overhead;
- link latency: in that same run, every dependency that crosses ranks while the consumer
  waits for it (F of stage 1 after F of stage 0, B of stage 0 after B of stage 1) costs the
  gap from the producer's compute end to the consumer's compute start. The simulator puts the
  per-action overhead inside each action and adds bytes / bandwidth to each transfer, so the
  link latency is that gap less the overhead between actions and the bytes / bandwidth.
  Medians are taken per direction and averaged, which cancels any offset between the two
  ranks' clocks. (A bare send/recv ping-pong does not
  see what the runtime pays, and on a loaded machine its small-message medians swing
  widely.) A receiver that waited longer pays more to wake up; the model leaves that out,
  as it is small next to a step (executor/README.md gives the figures);
- bandwidth: rank 0 and rank 1 ping-pong tensors of 256 KiB to 4 MiB over the real backend,
  the sizes interleaved round by round so a burst of outside load hits all of them; the
  slope of the median one-way time over the size is 1 / bandwidth;
- ``optimizer_s_per_param``: gradient scaling plus ``torch.optim.AdamW.step`` on a few
  million parameters (past the caches), run on every rank at once as at the end of a real step,
  in the rank's CPU time (one thread: on a quiet host the same as wall time);
- ``collective_call_s`` and ``ring_Bps``: gloo's all-reduce over every rank, 4 KiB to 32 MiB
  (``fit_collectives``);
- ``scatter_gather_Bps``: gloo's reduce-scatter and all-gather over every rank, 1 to 32 MiB
  buffers: the bandwidth of their ring steps, which gloo runs apart from its all-reduce and
  slower (``fit_scatter_gather``);
- ``tp_layer_s`` and ``tp_layer_backward_s``: the runtime's own time per tensor-parallel layer
  in a forward and in a backward (DTensor's dispatch, redistributions and hooks around the
  math): a column- then a row-parallel linear of width 16 over every rank, as the executor
  splits a block's layers, less the same math without DTensor at one rank's share, and less
  the forward's one all-reduce, priced as just calibrated (the backward takes no input
  gradient, so it runs none) (``measure_tp_layer``);
- ``fsdp_unit_s`` and ``fsdp_unit_backward_s``: the runtime's own time per unit FSDP2 shards, in
  a forward and in a backward (its hooks, its parameters' views, copy-in and copy-out): two
  small linears, each its own ``fully_shard`` group over every rank, as the executor shards a
  stage's units, less the same math unsharded, less each unit's all-gather in the forward and
  its reduce-scatter in the backward, priced as calibrated (``measure_fsdp_unit``).

The result is written as a Cluster spec that ``pipeplan plan --cluster`` reads.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from planner.cluster import PRESET_CLUSTERS
from profiles.tuning import gc_paused, keep_freed_memory

__all__ = [
    "main",
    "fit_bandwidth",
    "fit_collectives",
    "crossing_gaps",
    "measure_runtime",
    "measure_optimizer",
    "measure_all_reduce",
    "measure_tp_layer",
    "measure_fsdp_unit",
]

SIZES = (256 << 10, 1 << 20, 2 << 20, 4 << 20)
#: all-reduce sizes: a few KiB (the fixed cost of a call), then 1 to 32 MiB (the ring's
#: bandwidth, up to a small model's gradients, which leave the caches)
ALL_REDUCE_SIZES = (4 << 10, 256 << 10, 1 << 20, 8 << 20, 32 << 20)
_SMALL = 1 << 20  #: sizes up to this give the call's time, from it on the ring's bandwidth


def _line(samples: list[tuple[int, float]]) -> tuple[float, float]:
    """``(intercept, slope)`` of the least-squares line of time over size."""
    n = len(samples)
    mx = sum(b for b, _ in samples) / n
    my = sum(t for _, t in samples) / n
    sxx = sum((b - mx) ** 2 for b, _ in samples)
    slope = sum((b - mx) * (t - my) for b, t in samples) / sxx if sxx else 0.0
    return my - slope * mx, slope


def fit_bandwidth(samples: list[tuple[int, float]]) -> float:
    """Bytes per second: 1 / the least-squares slope of one-way time over message size (the
    intercept is not the link latency the runtime pays; ``measure_runtime`` measures that)."""
    return 1.0 / max(_line(samples)[1], 1e-15)


def fit_collectives(samples: list[tuple[int, float]], n: int, latency_s: float) -> tuple[float, float]:
    """``(call_s, ring_Bps)`` of a ring all-reduce over ``n`` ranks from its median times by size,
    as ``collectives.ring_all_reduce_s`` prices it: ``call + 2(n-1)α + 2(n-1)/n · M/ring_Bps``,
    ``α`` the link latency already calibrated. The bandwidth is the least-squares slope over the
    sizes from 1 MiB (where bytes dominate), the call the intercept of the line over the sizes up
    to 1 MiB less the ring's latencies."""
    k = 2 * (n - 1)
    per_byte = max(_line([s for s in samples if s[0] >= _SMALL])[1], 1e-15)
    intercept = _line([s for s in samples if s[0] <= _SMALL])[0]
    return max(0.0, intercept - k * latency_s), k / n / per_byte


def measure_all_reduce(repeats: int) -> list[tuple[int, float]]:
    """Median time of one all-reduce over every rank (gloo's own, as DDP's and DTensor's), per
    size, the ranks lined up by a barrier before each; the sizes take turns, round by round."""
    bufs = {size: torch.zeros(size // 4, dtype=torch.float32) for size in ALL_REDUCE_SIZES}
    return _timed_collective(lambda size: dist.all_reduce(bufs[size]), ALL_REDUCE_SIZES, repeats)


def measure_scatter_gather(repeats: int) -> list[tuple[int, float]]:
    """Median time of one reduce-scatter and of one all-gather (the ops FSDP2 and ZeRO run) over
    every rank, per size of the whole buffer from 1 MiB, as ``measure_all_reduce`` times them."""
    n = dist.get_world_size()
    sizes = tuple(s for s in ALL_REDUCE_SIZES if s >= _SMALL)
    whole = {size: torch.zeros(size // 4 // n * n, dtype=torch.float32) for size in sizes}
    part = {size: torch.zeros(size // 4 // n, dtype=torch.float32) for size in sizes}
    scatter = _timed_collective(lambda s: dist.reduce_scatter_tensor(part[s], whole[s]), sizes, repeats)
    gather = _timed_collective(lambda s: dist.all_gather_into_tensor(whole[s], part[s]), sizes, repeats)
    return scatter + gather


def _timed_collective(run: Callable[[int], None], sizes: tuple[int, ...], repeats: int) -> list[tuple[int, float]]:
    """``run(size)`` timed per size (median), each timed call after an untimed one of its size."""
    times: dict[int, list[float]] = {size: [] for size in sizes}
    for i in range(repeats + 2):
        for size in sizes:
            run(size)  # untimed: the size's buffers warm, whatever size ran before
            dist.barrier()
            t0 = time.perf_counter()
            run(size)
            if i >= 2:
                times[size].append(time.perf_counter() - t0)
    return [(size, statistics.median(ts)) for size, ts in times.items()]


def fit_scatter_gather(samples: list[tuple[int, float]], n: int) -> float:
    """The ring-step bandwidth of reduce-scatters and all-gathers from their median times by size
    of the whole buffer, as ``collectives.reduce_scatter_s`` prices them: ``(n-1)/n · M/β`` per
    byte (the least-squares slope; the fixed part is the all-reduce's call)."""
    return (n - 1) / n / max(_line(samples)[1], 1e-15)


def _all_reduce_s(n: int, nbytes: float, call: float, ring: float, *, half_Bps: float = 0.0) -> float:
    """An all-reduce (given ``half_Bps``, the bandwidth of reduce-scatter's and all-gather's ring
    steps: an all-gather) as the cost layer prices it with these figures (no link latency: it is in
    ``call``, as fitted here)."""
    from simulator.collectives import Link, all_gather_s, ring_all_reduce_s

    link = Link(0.0, ring, call_s=call, ring_Bps=ring, scatter_gather_Bps=half_Bps)
    return (all_gather_s if half_Bps else ring_all_reduce_s)(n, nbytes, link)


def _timed_passes(model: nn.Module, shape: tuple[int, int], repeats: int) -> tuple[float, float]:
    """Median seconds of ``model``'s forward and of its backward on an input of ``shape`` (no
    input gradient), every rank lined up by a barrier before each pair, after 3 untimed."""
    f, b = [], []
    for i in range(repeats + 3):
        x = torch.randn(*shape)
        dist.barrier()
        t0 = time.perf_counter()
        y = model(x)
        t1 = time.perf_counter()
        y.sum().backward()
        t2 = time.perf_counter()
        if i >= 3:
            f.append(t1 - t0)
            b.append(t2 - t1)
    return statistics.median(f), statistics.median(b)


def measure_tp_layer(repeats: int, all_reduce_s) -> tuple[float, float]:
    """Seconds per tensor-parallel layer the runtime adds to a forward and to a backward (module
    docstring); ``all_reduce_s(nbytes)``: one all-reduce over every rank, as calibrated."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    world, width, tokens = dist.get_world_size(), 16, 128
    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    split = parallelize_module(
        nn.Sequential(nn.Linear(width, 4 * width), nn.Linear(4 * width, width)),
        mesh,
        {"0": ColwiseParallel(), "1": RowwiseParallel()},
    )
    share = nn.Sequential(nn.Linear(width, 4 * width // world), nn.Linear(4 * width // world, width))
    # no input gradient: the backward then runs no collective, and is the layers' alone
    (tf, tb), (pf, pb) = (_timed_passes(m, (tokens, width), repeats) for m in (split, share))
    reduce = all_reduce_s(tokens * width * 4)  # the row-parallel layer's output
    return max(0.0, (tf - pf - reduce) / 2), max(0.0, (tb - pb) / 2)


def measure_fsdp_unit(repeats: int, gather_s) -> tuple[float, float]:
    """Seconds per ``fully_shard`` unit the runtime adds to a forward and to a backward (module
    docstring); ``gather_s(nbytes)``: one all-gather (or reduce-scatter) of ``nbytes`` over every
    rank, as calibrated."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    world, width, tokens, units = dist.get_world_size(), 16, 128, 2

    def model() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(*(nn.Linear(width, width) for _ in range(units)))

    sharded, plain = model(), model()
    mesh = init_device_mesh("cpu", (world,))
    for unit in sharded:
        fully_shard(unit, mesh=mesh, reshard_after_forward=True)
        unit.set_force_sum_reduction_for_comms(True)
    fully_shard(sharded, mesh=mesh, reshard_after_forward=True)
    sharded.set_force_sum_reduction_for_comms(True)

    (sf, sb), (pf, pb) = (_timed_passes(m, (tokens, width), repeats) for m in (sharded, plain))
    comm = gather_s((width * width + width) * 4)  # one unit's weights, its gradients
    return max(0.0, (sf - pf) / units - comm), max(0.0, (sb - pb) / units - comm)


def _links(rank: int, repeats: int) -> list[tuple[int, float]]:
    """Median one-way time per size; the sizes take turns, round by round."""
    bufs = {size: torch.zeros(size // 4, dtype=torch.float32) for size in SIZES}
    times: dict[int, list[float]] = {size: [] for size in SIZES}
    for i in range(repeats + 2):
        for size, buf in bufs.items():
            dist.barrier()
            t0 = time.perf_counter()
            if rank == 0:
                dist.send(buf, 1)
                dist.recv(buf, 1)
            elif rank == 1:
                dist.recv(buf, 0)
                dist.send(buf, 0)
            if i >= 2:
                times[size].append((time.perf_counter() - t0) / 2)
    return [(size, statistics.median(ts)) for size, ts in times.items()]


def crossing_gaps(
    events: list[tuple[int, int, str, int, float, float]], owner: dict[int, int]
) -> dict[tuple[int, int], list[float]]:
    """Gaps from a producer's end to its consumer's start, for every dependency that crosses
    ranks while the consumer's rank waits for it, keyed by (producer rank, consumer rank).
    ``events``: (rank, stage, kind, microbatch, start, end) on one clock; F of stage s needs F
    of s-1, and a backward (B or I) of stage s needs the backward of s+1."""
    end = {(s, "B" if k == "I" else k, mb): b for _, s, k, mb, _, b in events}
    gaps: dict[tuple[int, int], list[float]] = {}
    free: dict[int, float] = {}
    for rank, s, kind, mb, a, b in sorted(events, key=lambda e: e[4]):
        dep = (s - 1, "F", mb) if kind == "F" else (s + 1, "B", mb) if kind in ("B", "I") else None
        done = end.get(dep) if dep else None
        if done is not None and owner[dep[0]] != rank and done >= free.get(rank, 0.0):
            gaps.setdefault((owner[dep[0]], rank), []).append(a - done)
        free[rank] = b
    return gaps


def measure_runtime(
    repeats: int,
    microbatches: int = 8,
    seq: int = 128,
    width: int = 256,
    schedule: str = "1F1B",
    virtual: int = 1,
) -> tuple[float, float, float, int]:
    """(overhead between actions, overhead inside them, crossing gap, bytes sent per crossing) of
    the real runtime on a 1F1B table, per compute action. Each stage is an MLP block on
    ``seq x width`` activations (128 KiB in fp32, as the zoo's small models at sequence length 128
    send), a few milliseconds per action, as real stages take. Between: median over steps of
    (step - compute actions - receive waits) / compute actions, on this rank. Inside: median over
    steps of (compute actions - the math in them) / compute actions, where the math is the
    block's forward and torch's backward functions (``stage_backward``, ``stage_backward_input``,
    ``stage_backward_weight``), what a profile times; the rest of an action is the runtime's own
    (its inputs, checks, outputs). Gap: the mean over the two directions of the median
    producer-end to consumer-start time of waited-for crossings (``crossing_gaps``), the same on
    every rank."""
    import torch.distributed.pipelining.stage as torch_stage
    from torch.distributed.pipelining import PipelineStage
    from torch.distributed.pipelining import schedules as torch_schedules

    from simulator.actions import stage_ranks
    from simulator.schedules import make_schedule

    from .build import Recorder as _Recorder
    from .build import lower_table

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(rank)
    table = make_schedule(schedule, world, microbatches, virtual)
    owner = stage_ranks(table)
    recorder = _Recorder()
    math = [0.0]  # this thread's CPU time in the math inside the compute actions, this step

    def timed_math(fn):
        def run(*a, **k):
            t = time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                math[0] += time.thread_time() - t

        return run

    stages = []
    for s in sorted(i for i, r in owner.items() if r == rank):
        stages.append(PipelineStage(_Block(width, timed_math), s, len(owner), torch.device("cpu")))
        recorder.wrap(stages[-1])
    backward_fns = {
        n: getattr(torch_stage, n) for n in ("stage_backward", "stage_backward_input", "stage_backward_weight")
    }
    cls = torch_schedules._PipelineScheduleRuntime
    sched = cls(stages, microbatches, loss_fn=lambda out, y: ((out - y) ** 2).mean())
    lower_table(sched, table)  # as the executor lowers it
    waited = [0.0, 0.0]  # wall and this thread's CPU time spent waiting for receives
    wait = torch_schedules._wait_batch_p2p

    def timed_wait(work):
        t, cpu = time.perf_counter(), time.thread_time()
        wait(work)
        waited[0] += time.perf_counter() - t
        waited[1] += time.thread_time() - cpu

    torch_schedules._wait_batch_p2p = timed_wait
    for n, fn in backward_fns.items():
        setattr(torch_stage, n, timed_math(fn))
    x, y = torch.randn(microbatches, seq, width), torch.randn(microbatches, seq, width)
    try:
        per_action, inside, gaps = _time_steps(
            sched, recorder, owner=owner, data=(x, y), waited=waited, math=math, repeats=repeats
        )
    finally:
        torch_schedules._wait_batch_p2p = wait
        for n, fn in backward_fns.items():
            setattr(torch_stage, n, fn)
    gap = statistics.mean(statistics.median(gs) for gs in gaps.values()) if gaps else 0.0
    return statistics.median(per_action), statistics.median(inside), gap, seq * width * x.element_size()


class _Block(nn.Module):
    """An MLP with a residual (its output is not a view, which torch's I detaches in place), its
    math run through ``timed`` (the caller's CPU-time counter)."""

    def __init__(self, width: int, timed):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.math = timed(lambda x: self.mlp(x) + x)

    def forward(self, x):
        return self.math(x)


def _time_steps(sched, recorder, *, owner: dict, data: tuple, waited: list, math: list, repeats: int):
    """Step ``sched`` ``repeats`` times after 3 untimed steps; per step: the runtime's work between
    actions and inside them, per compute action, and every rank's crossing gaps (``crossing_gaps``).
    ``waited`` and ``math`` are the counters the caller's wrapped receive wait and math fill."""
    from .build import StepClock

    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = data
    first, last = owner[0], owner[len(owner) - 1]
    clock = StepClock()
    per_action, inside, gaps = [], [], {}
    for i in range(repeats + 3):
        recorder.events, waited[:], recorder.off_cpu_s, math[0] = [], [0.0, 0.0], 0.0, 0.0
        recorder.t0 = t0 = clock.start()
        cpu0 = time.thread_time()
        if rank == first == last:
            sched.step(x, target=y)
        elif rank == first:
            sched.step(x)
        elif rank == last:
            sched.step(target=y)
        else:
            sched.step()
        step, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
        compute = sum(b - a for _, _, _, a, b in recorder.events)
        if i >= 3:
            # in CPU time: the runtime's own work, without the time other load kept the rank off
            # its core (on a quiet host the same as step - compute - waits in wall time)
            runtime_cpu = cpu - (compute - recorder.off_cpu_s) - waited[1]
            per_action.append(max(0.0, min(runtime_cpu, step - compute - waited[0])) / len(recorder.events))
            inside.append(max(0.0, compute - recorder.off_cpu_s - math[0]) / len(recorder.events))
            everyone = [None] * world
            dist.all_gather_object(everyone, [(rank, *e) for e in recorder.events])
            for key, gs in crossing_gaps([e for evs in everyone for e in evs], owner).items():
                gaps.setdefault(key, []).extend(gs)
    return per_action, inside, gaps


def measure_optimizer(repeats: int, params: int = 16_000_000) -> float:
    """Seconds per parameter of what a rank does with its gradients after its last backward:
    ``grad.div_`` (the runtime's gradient scaling), ``AdamW.step`` and ``zero_grad``. Sized well
    past the caches (16M parameters), as the models worth pipelining are."""
    ps = [nn.Parameter(torch.randn(params // 4 // 1024, 1024)) for _ in range(4)]
    opt = torch.optim.AdamW(ps, lr=1e-4)
    n = sum(p.numel() for p in ps)
    times = []
    for i in range(repeats + 2):
        for p in ps:
            p.grad = torch.randn_like(p)
        dist.barrier()
        t0 = time.thread_time()  # CPU time: other load on the host does not count (see measure_runtime)
        for p in ps:
            p.grad.div_(2.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.thread_time() - t0)
    return statistics.median(times) / n


@dataclass(kw_only=True)
class _Measured:
    """What one rank measured (``samples``, the runtime's ``gap`` and ``sent`` are rank 0's use)."""

    samples: list[tuple[int, float]]
    between: float
    inside: float
    gap: float
    sent: int
    opt: float
    reduce: list[tuple[int, float]]
    halves: list[tuple[int, float]]  #: reduce-scatters' and all-gathers' (size of the whole buffer, seconds)
    tp_layer: tuple[float, float]
    fsdp_unit: tuple[float, float]


def _measure(rank: int, world: int, repeats: int) -> _Measured:
    """Every measurement of the module docstring on this rank, in turn, under a progress bar."""
    from profiles.clikit import progress_bar

    bar = progress_bar(7, "calibrating", enabled=rank == 0)
    with gc_paused():  # as the executor runs its steps
        bar.set_postfix_str("links")
        samples = _links(rank, repeats)
        bar.update()
        bar.set_postfix_str("runtime overhead")
        between, inside, gap, sent = measure_runtime(repeats)
        bar.update()
        bar.set_postfix_str("optimizer step")
        opt = measure_optimizer(max(5, repeats // 5))
        bar.update()
        bar.set_postfix_str("collectives")
        reduce = measure_all_reduce(repeats)
        bar.update()
        bar.set_postfix_str("reduce-scatters and all-gathers")
        halves = measure_scatter_gather(repeats)
        bar.update()
        bar.set_postfix_str("tensor-parallel layers")
        fit = fit_collectives(reduce, world, 0.0)  # every rank's own, for the subtractions below
        tp_layer = measure_tp_layer(repeats, lambda m: _all_reduce_s(world, m, *fit))
        bar.update()
        bar.set_postfix_str("sharded units")
        half = fit_scatter_gather(halves, world)
        fsdp_unit = measure_fsdp_unit(repeats, lambda m: _all_reduce_s(world, m, *fit, half_Bps=half))
        bar.update()
    bar.close()
    return _Measured(
        samples=samples,
        between=between,
        inside=inside,
        gap=gap,
        sent=sent,
        opt=opt,
        reduce=reduce,
        halves=halves,
        tp_layer=tp_layer,
        fsdp_unit=fsdp_unit,
    )


def _cluster(mine: _Measured, ranks: list[_Measured], world: int):
    """The Cluster spec of rank 0's measurements and every rank's (medians; the optimizer's
    slowest), and the figures it printed beside them."""
    bw = fit_bandwidth(mine.samples)
    between = statistics.median(m.between for m in ranks)
    inside = statistics.median(m.inside for m in ranks)
    # the gap runs from one action's end to the next one's start: it holds the runtime's work
    # between actions, not inside them (the simulator adds both overheads inside the action)
    lat = max(0.0, mine.gap - between - mine.sent / bw)
    call, ring = fit_collectives(mine.reduce, world, lat)
    tp = [statistics.median(m.tp_layer[k] for m in ranks) for k in (0, 1)]
    fsdp = [statistics.median(m.fsdp_unit[k] for m in ranks) for k in (0, 1)]
    cluster = replace(
        PRESET_CLUSTERS["cpu-local"],
        name="calibrated-local",
        devices=world,
        devices_per_node=world,
        intra_latency_s=lat,
        intra_bandwidth_Bps=bw,
        inter_latency_s=lat,
        inter_bandwidth_Bps=bw,
        action_overhead_s=between + inside,
        optimizer_s_per_param=max(m.opt for m in ranks),
        collective_call_s=call,
        ring_Bps=ring,
        scatter_gather_Bps=fit_scatter_gather(mine.halves, world),
        tp_layer_s=tp[0],
        tp_layer_backward_s=tp[1],
        fsdp_unit_s=fsdp[0],
        fsdp_unit_backward_s=fsdp[1],
    )
    return cluster, between, inside


def _print(cluster, mine: _Measured, between: float, inside: float, world: int) -> None:
    c = cluster
    print(f"{'bytes':>10} {'one-way ms':>11}")
    for size, t in mine.samples:
        print(f"{size:>10} {t * 1e3:11.3f}")
    print(f"bandwidth (slope of the one-way times): {c.intra_bandwidth_Bps / 1e9:.2f} GB/s")
    print(
        f"runtime overhead per compute action: {c.action_overhead_s * 1e6:.1f} us ({between * 1e6:.1f} between "
        f"actions, {inside * 1e6:.1f} inside them around the math)"
    )
    kib = mine.sent >> 10
    print(
        f"cross-rank dependency in the runtime ({kib} KiB): {mine.gap * 1e6:.1f} us from producer end to "
        f"consumer start = overhead between actions + {kib} KiB / bandwidth + link latency "
        f"{c.intra_latency_s * 1e6:.1f} us"
    )
    print(f"gradient scaling + AdamW step: {c.optimizer_s_per_param * 1e9:.2f} ns per parameter")
    sizes = ", ".join(f"{s >> 10} KiB {t * 1e3:.3f} ms" for s, t in mine.reduce)
    print(
        f"all-reduce over {world} ranks ({sizes}): {c.collective_call_s * 1e6:.0f} us per call + its ring steps "
        f"at {c.ring_Bps / 1e9:.2f} GB/s"
    )
    halves = ", ".join(f"{s >> 10} KiB {t * 1e3:.3f} ms" for s, t in mine.halves)
    print(f"reduce-scatters, then all-gathers ({halves}): ring steps at {c.scatter_gather_Bps / 1e9:.2f} GB/s")
    print(
        f"runtime time per tensor-parallel layer (DTensor, beside the math and the all-reduce): forward "
        f"{c.tp_layer_s * 1e6:.0f} us, backward {c.tp_layer_backward_s * 1e6:.0f} us"
    )
    print(
        f"runtime time per FSDP-sharded unit (beside the math and its gather or reduce-scatter): forward "
        f"{c.fsdp_unit_s * 1e6:.0f} us, backward {c.fsdp_unit_backward_s * 1e6:.0f} us"
    )


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("cluster.json")
    repeats = int(os.environ.get("PIPEPLAN_CALIBRATE_REPEATS", "30"))
    torch.set_num_threads(1)
    keep_freed_memory()  # as the executor runs
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        mine = _measure(rank, world, repeats)
        ranks = [None] * world
        dist.all_gather_object(ranks, mine)
        if rank == 0:
            cluster, between, inside = _cluster(mine, ranks, world)
            cluster.save(out)
            _print(cluster, mine, between, inside, world)
            print(f"wrote {out}")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
