"""``torchrun --nproc_per_node 2 -m executor.calibrate OUT``: measure this machine's links.

Rank 0 and rank 1 ping-pong tensors of several sizes over the real backend; the median
one-way time per size is fitted by least squares to ``latency + bytes / bandwidth``.
The result is written as a Cluster spec the planner and simulator read.
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

from planner.cluster import PRESET_CLUSTERS

__all__ = ["main", "fit_link"]

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


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("cluster.json")
    repeats = int(os.environ.get("PIPEPLAN_CALIBRATE_REPEATS", "30"))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    samples = []
    try:
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
        if rank == 0:
            lat, bw = fit_link(samples)
            base = PRESET_CLUSTERS["cpu-local"]
            cluster = replace(base, name="calibrated-local", devices=world, devices_per_node=world,
                              intra_latency_s=lat, intra_bandwidth_Bps=bw, inter_latency_s=lat,
                              inter_bandwidth_Bps=bw)
            cluster.save(out)
            print(f"{'bytes':>10} {'one-way ms':>11}")
            for size, t in samples:
                print(f"{size:>10} {t * 1e3:11.3f}")
            print(f"fit: latency {lat * 1e6:.1f} us, bandwidth {bw / 1e9:.2f} GB/s")
            print(f"wrote {out}")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
