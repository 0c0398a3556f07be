"""``torchrun --nproc_per_node 2 -m executor.calibrate OUT``: measure this machine for the cost model.

Three figures, each measured with what the executor really runs:

- links: rank 0 and rank 1 ping-pong tensors of several sizes over the real backend; the
  median one-way time per size is fitted by least squares to ``latency + bytes / bandwidth``;
- ``action_overhead_s``: the real ``_PipelineScheduleRuntime`` runs a 1F1B table on tiny
  stages; per rank, step time minus compute time (wrapped ``*_one_chunk``) minus time spent
  waiting for receives, divided by the compute actions: what the runtime itself costs per
  action (posting sends and receives, bookkeeping);
- ``optimizer_s_per_param``: gradient scaling plus ``torch.optim.AdamW.step`` on a few
  million parameters (past the caches), run on every rank at once as at the end of a real step.

The result is written as a Cluster spec that ``pipeplan plan --cluster`` reads.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from planner.cluster import PRESET_CLUSTERS

__all__ = ["main", "fit_link", "measure_action_overhead", "measure_optimizer"]

SIZES = (1 << 10, 32 << 10, 256 << 10, 1 << 20, 4 << 20)


def fit_link(samples: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares fit of one-way time = latency + bytes / bandwidth; returns (latency_s, bandwidth_Bps)."""
    n = len(samples)
    mx = sum(b for b, _ in samples) / n
    my = sum(t for _, t in samples) / n
    sxx = sum((b - mx) ** 2 for b, _ in samples)
    slope = sum((b - mx) * (t - my) for b, t in samples) / sxx if sxx else 0.0
    slope = max(slope, 1e-15)
    return max(my - slope * mx, 0.0), 1.0 / slope


def _links(rank: int, repeats: int) -> list[tuple[int, float]]:
    samples = []
    for size in SIZES:
        buf = torch.zeros(size // 4, dtype=torch.float32)
        times = []
        for i in range(repeats + 3):
            dist.barrier()
            t0 = time.perf_counter()
            if rank == 0:
                dist.send(buf, 1)
                dist.recv(buf, 1)
            elif rank == 1:
                dist.recv(buf, 0)
                dist.send(buf, 0)
            if i >= 3:
                times.append((time.perf_counter() - t0) / 2)
        samples.append((size, statistics.median(times)))
    return samples


def measure_action_overhead(repeats: int, microbatches: int = 8, width: int = 64) -> float:
    """Median over steps of (step - compute - receive waits) / compute actions, on this rank."""
    from torch.distributed.pipelining import PipelineStage
    from torch.distributed.pipelining import schedules as torch_schedules

    from simulator.schedules import make_schedule

    from .build import Recorder as _Recorder, torch_actions

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(rank)
    stage = PipelineStage(nn.Linear(width, width), rank, world, torch.device("cpu"))
    recorder = _Recorder()
    recorder.wrap(stage)
    table = make_schedule("1F1B", world, microbatches)
    sched = torch_schedules._PipelineScheduleRuntime([stage], microbatches,
                                                      loss_fn=lambda out, y: ((out - y) ** 2).mean())
    sched._prepare_schedule_with_comms(torch_actions(table))
    waited = [0.0]
    wait = torch_schedules._wait_batch_p2p

    def timed_wait(work):
        t = time.perf_counter()
        wait(work)
        waited[0] += time.perf_counter() - t

    torch_schedules._wait_batch_p2p = timed_wait
    x, y = torch.randn(microbatches, width), torch.randn(microbatches, width)
    per_action = []
    try:
        for i in range(repeats + 3):
            recorder.events, waited[0] = [], 0.0
            dist.barrier()
            recorder.t0 = t0 = time.perf_counter()
            if rank == 0:
                sched.step(x)
            elif rank == world - 1:
                sched.step(target=y)
            else:
                sched.step()
            step = time.perf_counter() - t0
            compute = sum(b - a for _, _, _, a, b in recorder.events)
            if i >= 3:
                per_action.append(max(0.0, step - compute - waited[0]) / len(recorder.events))
    finally:
        torch_schedules._wait_batch_p2p = wait
    return statistics.median(per_action)


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
        t0 = time.perf_counter()
        for p in ps:
            p.grad.div_(2.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) / n


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("cluster.json")
    repeats = int(os.environ.get("PIPEPLAN_CALIBRATE_REPEATS", "30"))
    torch.set_num_threads(1)
    from .build import keep_freed_memory

    keep_freed_memory()  # as the executor runs
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        samples = _links(rank, repeats)
        overhead = measure_action_overhead(repeats)
        opt = measure_optimizer(max(5, repeats // 5))
        figures = [None] * world
        dist.all_gather_object(figures, (overhead, opt))
        if rank == 0:
            lat, bw = fit_link(samples)
            overhead = statistics.median(f[0] for f in figures)
            opt = max(f[1] for f in figures)
            base = PRESET_CLUSTERS["cpu-local"]
            cluster = replace(base, name="calibrated-local", devices=world, devices_per_node=world,
                              intra_latency_s=lat, intra_bandwidth_Bps=bw, inter_latency_s=lat,
                              inter_bandwidth_Bps=bw, action_overhead_s=overhead, optimizer_s_per_param=opt)
            cluster.save(out)
            print(f"{'bytes':>10} {'one-way ms':>11}")
            for size, t in samples:
                print(f"{size:>10} {t * 1e3:11.3f}")
            print(f"fit: latency {lat * 1e6:.1f} us, bandwidth {bw / 1e9:.2f} GB/s")
            print(f"runtime overhead per compute action: {overhead * 1e6:.1f} us")
            print(f"gradient scaling + AdamW step: {opt * 1e9:.2f} ns per parameter")
            print(f"wrote {out}")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
