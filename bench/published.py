"""Predicted against published throughput of large-scale training runs (``bench/published_data.py``).

For every published configuration: an analytic profile of the model's shape on the run's GPU
(``profiles.analytic``: FLOPs and bytes counted on the meta device, the device's datasheet
peak at the analytic model's own matmul and memory efficiencies), the run's own layout (tp,
pp, dp, schedule, microbatch size, recompute), layers dealt evenly with the embedding on the
first stage and the head on the last (as Megatron does), simulated by pipeplan's event
simulator on the run's cluster (``planner/clusters.yaml``). The simulated step gives TFLOP/s per
GPU in the paper's own FLOP count (Narayanan et al.'s Eq. 3 for their Table 1, which counts the
recomputed forward; model FLOPs, Korthikanti et al.'s Eq. 7, for MFU rows). Nothing is fitted
to a row: the only constants are the analytic model's efficiencies and the datasheets.

Settings the papers leave out are taken as their text describes them: Narayanan et al.'s Table
1 ran full activation recomputation, microbatch size 1 (not printed; 1 is assumed, and said so
in the table), 1F1B; Korthikanti et al. ran sequence parallelism with selective recompute,
interleaved 1F1B with 3 stages per rank for the 175B and 530B models; Llama 3 ran FSDP across
data-parallel groups (fsdp here) with an interleaved schedule (§3.3.2; its number of stages per
rank is not printed, 2 is assumed), microbatch 1. Context parallelism is not modelled: the row
with CP 16 is listed and skipped.

    python bench/published.py [--rows N] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from published_data import (  # noqa: E402
    A100_BF16_PEAK,
    H100_BF16_PEAK,
    NARAYANAN,
    PUBLISHED,
    PublishedRun,
    model_flops_per_iteration,
    narayanan_flops_per_iteration,
)

from planner import Job  # noqa: E402
from planner.cluster import load_cluster  # noqa: E402
from planner.scoring import build_plan  # noqa: E402
from profiles.analytic import analytic_profile  # noqa: E402
from simulator.costs import DPMode, Layout, Option, Recompute  # noqa: E402

PEAK = {"a100": A100_BF16_PEAK, "h100": H100_BF16_PEAK}


def _shape_overrides(run: PublishedRun) -> tuple[str, dict]:
    """A zoo model type and config fields of the run's shape."""
    if run.kv_heads != run.heads or run.ffn != 4 * run.hidden:  # Llama-style
        return "llama3-8b", {
            "hidden_size": run.hidden,
            "intermediate_size": run.ffn,
            "num_attention_heads": run.heads,
            "num_key_value_heads": run.kv_heads,
            "num_hidden_layers": run.layers,
            "vocab_size": run.vocab,
            "max_position_embeddings": run.seq_len,
        }
    return "gpt2", {
        "n_embd": run.hidden,
        "n_head": run.heads,
        "n_layer": run.layers,
        "vocab_size": run.vocab,
        "n_positions": run.seq_len,
        "attn_pdrop": run.dropout,
        "resid_pdrop": run.dropout,
    }


def _setup(run: PublishedRun) -> tuple[str, int, Recompute, DPMode]:
    """(schedule, stages per rank, recompute, dp mode) as the row states them."""
    return run.schedule, run.virtual, Recompute(run.recompute), DPMode(run.dp_mode)


def _bounds(layers: int, stages: int) -> list[tuple[int, int]]:
    """Blocks dealt evenly (the first stages one more), the embedding first, the head last."""
    q, r = divmod(layers, stages)
    ends, n = [], 0
    for s in range(stages):
        n += q + (1 if s < r else 0)
        ends.append(n + 1)  # +1: the embedding before the blocks
    ends[-1] += 1  # the head after them
    return list(zip([0, *ends[:-1]], ends))


def predict(run: PublishedRun, tmp: Path, cache: dict) -> dict:
    model, overrides = _shape_overrides(run)
    mbs = run.microbatch or 1
    key = (model, tuple(sorted(overrides.items())), run.device, mbs, run.attention)
    if key not in cache:
        prof = analytic_profile(
            model,
            device_spec_name=run.device,
            dtypes=("bf16",),
            microbatch_sizes=(mbs,),
            seq_len=run.seq_len,
            overrides=overrides,
            attention=run.attention,
        )
        path = tmp / f"p{len(cache)}.json"
        prof.save(path)
        cache[key] = (prof, path)
    profile, path = cache[key]
    schedule, v, rc, mode = _setup(run)
    nodes = max(1, run.gpus // 8)
    cluster = replace(load_cluster(f"{run.device}:{nodes}"), devices=run.gpus, overlap=run.overlap_sends)
    dp = run.dp
    layout = Layout(
        tp=run.tp,
        dp=dp,
        dp_mode=mode if dp > 1 else DPMode.DDP,
        sequence_parallel=run.sequence_parallel,
        overlap_grad_reduce=run.overlap_grad_reduce,
    )
    m = run.global_batch // (dp * mbs)
    job = Job(global_batch=run.global_batch, microbatch_size=mbs, dtypes=("bf16",), schedules=(schedule,))
    bounds = _bounds(run.layers, run.pp * v)
    plan = build_plan(
        profile,
        str(path),
        cluster,
        job,
        bounds,
        schedule,
        run.pp,
        dp,
        m,
        mbs,
        [Option("bf16", rc)] * len(bounds),
        v,
        layout=layout,
    )
    step = plan.predicted.step_s
    if run.source == NARAYANAN:
        flops = narayanan_flops_per_iteration(run.global_batch, run.seq_len, run.layers, run.hidden, run.vocab)
    else:
        flops = model_flops_per_iteration(run.global_batch, run.seq_len, run.layers, run.hidden, run.vocab)
    tflops = flops / step / run.gpus / 1e12
    published = run.tflops_per_gpu
    if published is None and run.iteration_s:
        published = flops / run.iteration_s / run.gpus / 1e12
    return {
        "step_s": step,
        "tflops": tflops,
        "mfu": tflops * 1e12 / PEAK[run.device],
        "published": published,
        "error": (tflops - published) / published if published else None,
        "setup": f"{schedule} v={v} {rc.value} {layout.dp_mode.value} m={m}",
        "peak_gib": max(plan.predicted.peak_bytes) / 2**30,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=0, help="only the first N rows (default: all)")
    args = ap.parse_args()
    rows = [r for r in PUBLISHED if r.cp == 1]
    skipped = [r for r in PUBLISHED if r.cp != 1]
    if args.rows:
        rows = rows[: args.rows]
    t0 = time.perf_counter()
    out = []
    cache: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in rows:
            out.append((r, predict(r, Path(tmp), cache)))
    print(
        f"{'source':<14} {'model':<14} {'GPUs':>5} {'tp':>2} {'pp':>3} {'dp':>4} {'batch':>5} "
        f"{'setup':<38} {'pub TF/s':>8} {'pred TF/s':>9} {'error':>7} {'pred MFU':>8} {'peak GiB':>8}"
    )
    for r, p in out:
        src = r.source.split(",")[0].split(" et al.")[0]
        err = f"{p['error']:+7.1%}" if p["error"] is not None else f"{'-':>7}"
        pub = f"{p['published']:8.1f}" if p["published"] else f"{'-':>8}"
        print(
            f"{src:<14} {r.model[:14]:<14} {r.gpus:>5} {r.tp:>2} {r.pp:>3} {r.dp:>4} {r.global_batch:>5} "
            f"{p['setup']:<38} {pub} {p['tflops']:9.1f} {err} {p['mfu']:8.1%} {p['peak_gib']:8.1f}"
        )
    for r in skipped:
        print(f"skipped: {r.model} on {r.gpus} GPUs, context parallel {r.cp} (not modelled)")
    errs = [abs(p["error"]) for _, p in out if p["error"] is not None]
    if errs:
        print(
            f"median |error| {statistics.median(errs):.1%}, max {max(errs):.1%} over {len(errs)} rows "
            f"({time.perf_counter() - t0:.0f} s)"
        )
    for src in sorted({r.source for r in rows}):
        print(f"source: {src}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
