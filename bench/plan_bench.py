"""How long the planner takes on large jobs: llama-style models on 8 to 16,384 H100s.

Every profile is analytic and built here (embedding, identical decoder blocks, head; bf16;
Korthikanti et al.'s ``34·s·b·h`` activation bytes per block; H100-like matmul throughput),
so the bench needs no torch and no profiler. Cases:

- ``llama-128 / 1024``: 126 blocks, sequence 2048, every schedule, m up to 256, tp 1, ddp
  (the case earlier versions of this bench timed, kept for before/after comparisons);
- ``405B / 1024`` and ``405B / 16384``: Llama 3 405B's shape (126 blocks of h 16384, 128
  heads, 8 kv heads), sequence 8192, every schedule, tp, dp mode and recompute mode allowed;
- ``llama3-8b / 8``: sequence 4096, pp 8, global batch 32, recompute allowed (a case a user
  found taking minutes).

Prints the search's time per phase for each case and the best plan.

    python bench/plan_bench.py [--cases llama-128,405b-1024,405b-16384,llama3-8b] [--top 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from planner import PRESET_CLUSTERS, Job, search  # noqa: E402
from planner.cli import format_plans  # noqa: E402
from profiles.types import Profile, ProfileEntry, UnitCost, WholeModel, load_profile  # noqa: E402
from simulator.schedules import CUSTOM, SCHEDULES  # noqa: E402

FLOPS = 989e12 * 0.6  # bf16 dense peak x matmul efficiency


def llama_profile(path: Path, *, h, ffn, vocab, seq, blocks, heads, kv, sizes=(1, 2, 4)) -> Path:
    entries = []
    for b in sizes:
        tokens = seq * b
        block_params = 2 * h * h + 2 * h * (h * kv // heads) + 3 * h * ffn
        attn = 4 * seq * seq * h * b  # QK^T and AV, forward
        units = []

        def unit(name, kind, params, fwd_flops, saved, out):
            f = fwd_flops / FLOPS
            units.append(UnitCost(name, kind, f, 2 * f, f, f, params, params * 2, int(saved), int(out), fwd_flops))

        unit("embed", "embedding", vocab * h, 0.0 + tokens * h, tokens * 8, tokens * h * 2)
        for i in range(blocks):
            unit(f"block{i}", "block", block_params, 2 * block_params * tokens + attn, tokens * h * 34, tokens * h * 2)
        unit("head", "head", vocab * h, 2 * vocab * h * tokens, tokens * vocab * 4, 4)
        whole = WholeModel(
            sum(u.forward_s for u in units), sum(u.backward_s for u in units), sum(u.saved_bytes for u in units)
        )
        entries.append(ProfileEntry("bf16", b, tuple(units), whole))
    config = {
        "hidden_size": h,
        "intermediate_size": ffn,
        "vocab_size": vocab,
        "num_hidden_layers": blocks,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "hidden_act": "silu",
    }
    Profile(
        path.stem, config, "h100", "h100", seq, "analytic", tuple(entries), {"note": "built by bench/plan_bench.py"}
    ).save(path)
    return path


ALL = (*SCHEDULES, CUSTOM.name)
ANY = {"tp": (), "dp_modes": ("ddp", "zero1", "zero2", "fsdp"), "recompute": ("none", "selective", "full")}
LLAMA_128 = dict(h=4096, ffn=11008, vocab=128_256, seq=2048, blocks=126, heads=32, kv=32)
L405 = dict(h=16384, ffn=53248, vocab=128_256, seq=8192, blocks=126, heads=128, kv=8, sizes=(1, 2))
L8B = dict(h=4096, ffn=14336, vocab=128_256, seq=4096, blocks=32, heads=32, kv=8, sizes=(1,))
CASES = {
    "llama-128": (
        "llama-128 / 1024",
        LLAMA_128,
        1024,
        dict(global_batch=2048, schedules=tuple(SCHEDULES), microbatches=tuple(range(1, 257))),
    ),
    "405b-1024": ("405B / 1024", L405, 1024, dict(global_batch=1024, schedules=ALL, **ANY)),
    "405b-16384": ("405B / 16384", L405, 16384, dict(global_batch=16384, schedules=ALL, **ANY)),
    "llama3-8b": (
        "llama3-8b / 8",
        L8B,
        8,
        dict(global_batch=32, schedules=ALL, pp=(8,), recompute=("none", "selective", "full")),
    ),
}


def run_case(key: str, args, tmp: Path) -> tuple[str, float, object, list]:
    title, shape, devices, jobkw = CASES[key]
    path = llama_profile(tmp / f"{key}.json", **shape)
    profile = load_profile(path)
    cluster = replace(PRESET_CLUSTERS["h100x64"], name=f"h100x{devices}", devices=devices)
    job = Job(dtypes=("bf16",), **jobkw)
    t0 = time.perf_counter()
    plans, stats = search(profile, cluster, job, top=args.top, profile_path=path, time_limit=args.time_limit)
    return title, time.perf_counter() - t0, stats, plans


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    ap.add_argument("--top", type=int, default=1)
    ap.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="wall seconds per MILP (default: none, the search is bounded by work)",
    )
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in [c for c in args.cases.split(",") if c]:
            title, total, stats, plans = run_case(key, args, Path(tmp))
            rows.append((title, total, stats))
            print(
                f"== {title}: {total:.2f} s, {stats.candidates} candidates, {stats.pruned} pruned, "
                f"{stats.milps} MILPs ({stats.milp_reused} reused), {stats.simulations} simulations"
            )
            print(format_plans(plans))
    phases = list(rows[0][2].seconds)
    print()
    print(f"{'case':<18} {'total s':>8} " + " ".join(f"{p:>9}" for p in phases))
    for title, total, stats in rows:
        print(f"{title:<18} {total:8.2f} " + " ".join(f"{stats.seconds[p]:9.2f}" for p in phases))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
