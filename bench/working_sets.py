"""Does what a CPU rank ran just before, or what its neighbour runs beside it, change a unit's
speed? The two candidates of issue 17 that a per-rank working-set term would model, measured on
single units under control before anything is modelled.

    python bench/working_sets.py [--models bert-small,llama-small] [--rounds 3] [--samples 15]

For the first, a middle and the last unit of each model (bert-small's first and last units hold
its 31 MB vocabulary), forward and backward (F, B: the last unit's with its loss) are timed with
the profiler's clock (this thread's CPU time, one thread) in four conditions:

- alone: the unit again and again, nothing beside it (its weights stay in the caches);
- cold: before each sample, twice the last-level cache is written, as a rank switching to another
  stage's weights and activations would evict them;
- beside a block: another process trains one middle block (F + B) in a loop on the other core;
- beside the last unit: another process trains the last unit (a vocabulary-wide head) in a loop.

The conditions take turns within each round, and the neighbours stay started between rounds, so
a phase of the host's own speed lands on every condition alike. Printed: each condition's median
of the round medians against alone's, with the lowest and highest round's ratio, so the host's
noise is on the same line as the effect.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

CONDITIONS = ("alone", "cold", "beside a block", "beside the last unit")


def _last_level_cache_bytes() -> int:
    """The largest CPU cache this machine reports (Linux sysfs), 32 MiB when it says nothing."""
    best = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        best = max(best, int(text.rstrip("KMG")) * scale)
    return best or 32 << 20


class _Unit:
    """One unit of a model with its input (a detached leaf, as at a stage boundary)."""

    def __init__(self, name: str, idx: int):
        import torch

        from profiles.tuning import keep_freed_memory
        from profiles.zoo import build_model

        torch.set_num_threads(1)
        keep_freed_memory()  # as the profiler and the executor run
        self.model = build_model(name, None, seed=1, attention="sdpa")
        x, self.target = self.model.make_batch(1, 128, 1)
        self.last = len(self.model.units) - 1
        self.idx = idx if idx >= 0 else self.last
        with torch.no_grad():
            for u in self.model.units[: self.idx]:
                x = u(x)
        self.x = x

    def step(self) -> tuple[float, float]:
        """F and B of the unit, seconds of this thread's CPU time."""
        import torch

        x = self.x.detach()
        if x.is_floating_point():
            x.requires_grad_(True)
        unit = self.model.units[self.idx]
        t0 = time.thread_time()
        out = unit(x)
        if self.idx == self.last:
            out = self.model.loss_fn(out, self.target)
        t1 = time.thread_time()
        out.backward(None if out.dim() == 0 else torch.ones_like(out))
        t2 = time.thread_time()
        for p in unit.parameters():
            p.grad = None
        return t1 - t0, t2 - t1


def _neighbour(name: str, idx: int, go, ready, stop) -> None:
    """Train one unit in a loop while ``go`` is set, until ``stop``."""
    unit = _Unit(name, idx)
    unit.step()
    ready.set()
    while not stop.is_set():
        if go.wait(0.05):
            unit.step()


def _measure(name: str, units: list[int], rounds: int, samples: int) -> list[tuple]:
    import torch

    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    gos = {c: ctx.Event() for c in CONDITIONS[2:]}
    procs = []
    for cond, idx in zip(CONDITIONS[2:], (1, -1)):
        ready = ctx.Event()
        p = ctx.Process(target=_neighbour, args=(name, idx, gos[cond], ready, stop), daemon=True)
        p.start()
        procs.append((p, ready))
    for p, ready in procs:
        if not ready.wait(120):
            raise SystemExit(f"a neighbour training {name} did not start (exit code {p.exitcode})")
    evict = torch.empty(2 * _last_level_cache_bytes() // 4)
    rows = []
    try:
        for idx in units:
            unit = _Unit(name, idx)
            for _ in range(3):
                unit.step()
            medians = {c: ([], []) for c in CONDITIONS}  # per round: F, B
            for _ in range(rounds):
                for cond in CONDITIONS:
                    if cond in gos:
                        gos[cond].set()
                        time.sleep(0.2)  # the neighbour is in its loop
                    f, b = [], []
                    for _ in range(samples):
                        if cond == "cold":
                            evict.fill_(1.0)
                        tf, tb = unit.step()
                        f.append(tf)
                        b.append(tb)
                    if cond in gos:
                        gos[cond].clear()
                    medians[cond][0].append(statistics.median(f))
                    medians[cond][1].append(statistics.median(b))
            for k, kind in enumerate("FB"):
                alone = medians["alone"][k]
                ratios = []
                for cond in CONDITIONS[1:]:
                    per_round = [m / a for m, a in zip(medians[cond][k], alone)]
                    ratios.append((statistics.median(per_round), min(per_round), max(per_round)))
                rows.append((name, unit.idx, kind, statistics.median(alone), ratios))
    finally:
        stop.set()
        for p, _ in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="bert-small,llama-small")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=15, help="timed samples per condition and round")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from profiles.zoo import build_model

    t0 = time.perf_counter()
    print(f"last-level cache {_last_level_cache_bytes() >> 20} MiB, {os.cpu_count()} cores; load {os.getloadavg()}")
    print(
        f"\n{'model':<12} {'unit':>4} {'pass':>4} {'alone ms':>8}  "
        + "  ".join(f"{c + ' x':>24}" for c in CONDITIONS[1:])
    )
    for name in args.models.split(","):
        n = len(build_model(name, None, seed=1, attention="sdpa").units)
        for row in _measure(name, [0, n // 2, n - 1], args.rounds, args.samples):
            model, idx, kind, alone, ratios = row
            cells = "  ".join(f"{m:6.2f} ({lo:.2f}-{hi:.2f})".rjust(24) for m, lo, hi in ratios)
            print(f"{model:<12} {idx:>4} {kind:>4} {alone * 1e3:8.2f}  {cells}")
    print(
        f"\nx: the condition's time over alone's, median of {args.rounds} rounds (lowest-highest round); "
        f"{time.perf_counter() - t0:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
