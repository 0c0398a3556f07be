"""How long profiling takes, per model: measured (CPU, fp32) and analytic (meta device).

    python bench/profile_bench.py [--quick]

Prints one row per model: method, units, the wall time of profile_model /
analytic_profile in this process (imports excluded) and the consistency ratios of
measured profiles. Timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MEASURED = [
    ("gpt2-tiny", 64),
    ("llama-tiny", 64),
    ("bert-tiny", 64),
    ("llama-small", 128),
    ("bert-small", 128),
    ("gpt2-demo", 128),
]
ANALYTIC = [("gpt2", 1024), ("bert-base", 512), ("llama-1b", 4096), ("llama3-8b", 4096), ("llama3-70b", 4096)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny models only")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from profiles.analytic import analytic_profile
    from profiles.measure import profile_model

    measured = MEASURED[:3] if args.quick else MEASURED
    analytic = ANALYTIC[:2] if args.quick else ANALYTIC
    rows = []
    for name, seq in measured:
        t0 = time.perf_counter()
        p = profile_model(name, seq_len=seq, repeats=args.repeats, warmup=1)
        dt = time.perf_counter() - t0
        e = p.entries[0]
        b = sum(u.backward_s for u in e.units)
        iw = sum(u.backward_input_s + u.backward_weight_s for u in e.units) / b
        c = e.consistency
        rows.append(
            (
                name,
                "measured cpu fp32",
                p.num_units,
                seq,
                dt,
                f"F {c['forward']:.3f}  (I+W)/B {iw:.3f}  saved {c['saved_bytes']:.3f}",
            )
        )
    for name, seq in analytic:
        t0 = time.perf_counter()
        p = analytic_profile(name, device_spec_name="h100", dtypes=("bf16",), seq_len=seq)
        dt = time.perf_counter() - t0
        w = p.entries[0].whole_model
        rows.append(
            (
                name,
                "analytic h100 bf16",
                p.num_units,
                seq,
                dt,
                f"step F+B {1e3 * (w.forward_s + w.backward_s):.1f} ms/sample",
            )
        )
    print(f"{'model':<12} {'method':<19} {'units':>5} {'seq':>5} {'time s':>7}  notes")
    for name, method, n, seq, dt, note in rows:
        print(f"{name:<12} {method:<19} {n:>5} {seq:>5} {dt:7.2f}  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
