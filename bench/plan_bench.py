"""Plan a 128-unit llama-style model for 1024 devices over every schedule, m up to 256.

The profile is analytic and built here (embedding, 126 identical decoder blocks, head;
bf16, sequence 2048, microbatch sizes 1, 2, 4) with Korthikanti et al.'s activation bytes
``s*b*h*34`` per block and H100-like throughput, so the bench needs no torch and no
profiler. Prints the search's time per phase, what it pruned and reused, and the top plans.

    python bench/plan_bench.py [--devices 1024] [--global-batch 2048] [--top 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from planner import PRESET_CLUSTERS, Job, search  # noqa: E402
from planner.cli import format_plans  # noqa: E402
from profiles.types import Profile, ProfileEntry, UnitCost, WholeModel  # noqa: E402
from simulator.schedules import SCHEDULES  # noqa: E402

H, FFN, VOCAB, SEQ, BLOCKS = 4096, 11008, 128_256, 2048, 126
FLOPS = 989e12 * 0.6  # bf16 dense peak x matmul efficiency


def llama_profile(path: Path) -> Path:
    entries = []
    for b in (1, 2, 4):
        tokens = SEQ * b
        block_params = 4 * H * H + 3 * H * FFN
        attn = 4 * SEQ * SEQ * H * b  # QK^T and AV, forward
        units = []

        def unit(name, kind, params, fwd_flops, saved, out):
            f = fwd_flops / FLOPS
            units.append(UnitCost(name, kind, f, 2 * f, f, f, params, params * 4, int(saved), int(out), fwd_flops))

        unit("embed", "embedding", VOCAB * H, 0.0 + tokens * H, tokens * 8, tokens * H * 2)
        for i in range(BLOCKS):
            unit(f"block{i}", "block", block_params, 2 * block_params * tokens + attn, tokens * H * 34, tokens * H * 2)
        unit("head", "head", VOCAB * H, 2 * VOCAB * H * tokens, tokens * VOCAB * 4, 4)
        whole = WholeModel(
            sum(u.forward_s for u in units), sum(u.backward_s for u in units), sum(u.saved_bytes for u in units)
        )
        entries.append(ProfileEntry("bf16", b, tuple(units), whole))
    Profile(
        "llama-style-128",
        {"hidden_size": H, "intermediate_size": FFN, "vocab_size": VOCAB, "num_hidden_layers": BLOCKS},
        "h100",
        "h100",
        SEQ,
        "analytic",
        tuple(entries),
        {"note": "synthetic analytic profile built by bench/plan_bench.py"},
    ).save(path)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1024)
    ap.add_argument("--global-batch", type=int, default=2048)
    ap.add_argument("--top", type=int, default=3)
    ap.add_argument("--solver", default="auto")
    ap.add_argument("--time-limit", type=float, default=0.5, help="seconds per MILP (default 0.5)")
    args = ap.parse_args()
    from profiles.types import load_profile

    with tempfile.TemporaryDirectory() as tmp:
        path = llama_profile(Path(tmp) / "llama128.json")
        profile = load_profile(path)
        cluster = PRESET_CLUSTERS["h100x64"]
        from dataclasses import replace

        cluster = replace(cluster, name=f"h100x{args.devices}", devices=args.devices)
        job = Job(
            global_batch=args.global_batch,
            schedules=tuple(SCHEDULES),
            dtypes=("bf16",),
            microbatches=tuple(m for m in range(1, 257)),
        )
        t0 = time.perf_counter()
        plans, stats = search(
            profile, cluster, job, top=args.top, profile_path=path, solver=args.solver, time_limit=args.time_limit
        )
        total = time.perf_counter() - t0
    print(
        f"{profile.num_units} units, {args.devices} devices, global batch {args.global_batch}, "
        f"schedules {', '.join(SCHEDULES)}, m <= 256"
    )
    print(f"{'phase':<12} {'seconds':>8}")
    for phase, s in stats.seconds.items():
        print(f"{phase:<12} {s:8.3f}")
    print(f"{'total':<12} {total:8.3f}")
    print(
        f"candidates {stats.candidates}, pruned by the lower bound {stats.pruned}, MILPs solved {stats.milps}, "
        f"MILP answers reused {stats.milp_reused}, simulations {stats.simulations}"
    )
    print(format_plans(plans))
    for i, p in enumerate(plans, 1):
        print(f"plan {i}: solver {p.solver}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
