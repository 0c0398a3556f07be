"""Simulator speed: pipeplan's engine next to torch's ``_simulate_comms_compute`` on the same table.

    python bench/sim_bench.py [--pp 64] [--microbatches 256] [--schedule 1F1B] [--repeats 5]

Ours: ``simulator.simulate`` with per-stage durations, transfer latencies, memory,
critical path and the full Timeline (events, transfers) built. torch's: its dry-run
simulator (``torch.distributed.pipelining.schedules._simulate_comms_compute``), which
steps in unit time slots without durations or memory, run on the comms-lowered table
(``_add_send_recv``, as ``_PipelineScheduleRuntime`` lowers a compute-only schedule).
Both are timed in this process, best of ``--repeats`` runs; actions/s counts compute
actions only (the table's size), for both.
"""

from __future__ import annotations

import argparse
import copy
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator import Links, SimInput, StageCost, make_schedule, simulate  # noqa: E402
from simulator.actions import flat_actions  # noqa: E402
from simulator.schedules import schedule_spec  # noqa: E402


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pp", type=int, default=64)
    ap.add_argument("--microbatches", type=int, default=256)
    ap.add_argument("--schedule", default="1F1B")
    ap.add_argument("--virtual", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-torch", action="store_true")
    args = ap.parse_args(argv)

    spec = schedule_spec(args.schedule)
    table = make_schedule(spec.name, args.pp, args.microbatches, args.virtual)
    n = sum(len(flat_actions(a)) for a in table.values())  # a pair counts as its two actions
    stages = spec.num_stages(args.pp, args.virtual)
    costs = [
        StageCost(
            1e-3 * (1 + s % 3),
            2e-3,
            1e-3,
            1e-3,
            activation_bytes=1 << 20,
            static_bytes=1 << 30,
            output_bytes=1 << 18,
            input_bytes=1 << 18,
            param_bytes=1 << 28,
        )
        for s in range(stages)
    ]
    inp = SimInput(
        table,
        costs,
        Links(latency_s=5e-6, bandwidth_Bps=100e9, inter_latency_s=2e-5, inter_bandwidth_Bps=25e9, devices_per_node=8),
    )
    simulate(inp)  # warm
    ours = best_of(lambda: simulate(inp), args.repeats)
    tl = simulate(inp)
    rows = [("pipeplan simulate (durations, transfers, memory, Timeline)", ours)]

    if not args.skip_torch:
        import torch.distributed.pipelining.schedules as ts

        stage_to_rank = spec.stage_to_rank(args.pp, args.virtual)
        # torch's simulator cannot time an OVERLAP_F_B pair (it looks up the rank of its stage, -1):
        # it gets a pair as its two halves, in order
        compute = {r: [ts._Action.from_str(str(a)) for a in flat_actions(acts)] for r, acts in table.items()}
        t0 = time.perf_counter()
        lowered = ts._add_send_recv(copy.deepcopy(compute), stage_to_rank=stage_to_rank.__getitem__, num_stages=stages)
        lower_s = time.perf_counter() - t0

        def run_torch():
            ts._simulate_comms_compute({r: list(a) for r, a in lowered.items()}, stage_to_rank.__getitem__, stages)

        gc.collect()
        theirs = best_of(run_torch, max(1, min(args.repeats, 3)))
        rows.append(("torch _simulate_comms_compute (unit steps, comms-lowered table)", theirs))
        rows.append(("  (torch _add_send_recv lowering, once, not counted above)", lower_s))

    print(
        f"{spec.name}: {args.pp} ranks x {args.microbatches} microbatches (virtual {args.virtual}), "
        f"{n} compute actions; simulated step {tl.step_s * 1e3:.2f} ms"
    )
    print(f"| {'simulator':<66} | {'seconds':>9} | {'actions/s':>12} |")
    print(f"|{'-' * 68}|{'-' * 11}|{'-' * 14}|")
    for name, sec in rows:
        rate = f"{n / sec:,.0f}" if not name.startswith("  (") else ""
        print(f"| {name:<66} | {sec:9.4f} | {rate:>12} |")
    if len(rows) > 1:
        print(f"ours / torch speed: {rows[1][1] / rows[0][1]:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
