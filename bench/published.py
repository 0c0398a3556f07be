"""Predicted against published throughput of large-scale training runs (``bench/published_data.py``).

For every published configuration: an analytic profile of the model's shape on the run's GPU
(``profiles.analytic``: every operation counted on the meta device and priced as a roofline,
GEMMs by shape at the device's published sustainable matmul rate (else its burst one at the
sustained clock), attention as the row's kernel, pointwise operations fused or eager as the row ran
them), the run's own layout as its row states it (tp,
pp, dp, schedule, stages per rank, microbatch size, recompute, sequence parallelism, dp mode,
which communication overlapped compute), layers dealt evenly with the embedding on the first stage
and the head on the last (as Megatron does; Llama 3 gives the first and the last stage one layer
fewer), simulated by pipeplan's event simulator on the run's cluster
(``planner/clusters.yaml``: NCCL's measured bus bandwidths). The simulated step gives TFLOP/s per
GPU in the paper's own FLOP count (Narayanan et al.'s Eq. 3 for their Table 1, which counts the
recomputed forward; model FLOPs, Korthikanti et al.'s Eq. 7, for MFU rows), printed beside the
published figure with the share of peak both make, and the predicted peak memory per device
against its capacity (``!`` when over). Nothing is fitted to a row: the constants are the
datasheets and the public microbenchmark figures the profiler and the cluster presets cite.

Settings a table leaves out come from the run's public launch script (Narayanan et al.: Megatron-LM's
``examples/academic_paper_scripts/sc21/run_table_1.sh``), else the paper's text, else they are
assumptions; each row prints where its settings come from. Context parallelism is not modelled:
the Llama 3 row with CP 16 is listed and skipped.

    python bench/published.py [--rows N] [--breakdown]
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
    TORCHTITAN,
    PublishedRun,
    llama_params,
    model_flops_per_iteration,
    narayanan_flops_per_iteration,
    torchtitan_flops_per_token,
)

from planner import Job  # noqa: E402
from planner.candidate import Candidate  # noqa: E402
from planner.cluster import load_cluster  # noqa: E402
from planner.scoring import Context, build_plan  # noqa: E402
from profiles.analytic import analytic_profile  # noqa: E402
from simulator import simulate  # noqa: E402
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


def _bounds(layers: int, stages: int, ends_take_a_layer: bool = False) -> list[tuple[int, int]]:
    """Blocks dealt evenly (the first stages one more), the embedding first, the head last; with
    ``ends_take_a_layer`` the embedding and the head count as a layer each (Llama 3's balanced ends)."""
    if ends_take_a_layer:  # units 0 (embedding) .. layers + 1 (head), dealt evenly
        q, r = divmod(layers + 2, stages)
        ends = [sum(q + (1 if i < r else 0) for i in range(s + 1)) for s in range(stages)]
        return list(zip([0, *ends[:-1]], ends))
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
    key = (model, tuple(sorted(overrides.items())), run.device, mbs, run.attention, run.fusion)
    if key not in cache:
        prof = analytic_profile(
            model,
            device_spec_name=run.device,
            dtypes=("bf16",),
            microbatch_sizes=(mbs,),
            seq_len=run.seq_len,
            overrides=overrides,
            attention=run.attention,
            fusion=run.fusion,
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
        grads_fp32=run.grads_fp32,
    )
    m = run.global_batch // (dp * mbs)
    job = Job(global_batch=run.global_batch, microbatch_size=mbs, dtypes=("bf16",), schedules=(schedule,))
    bounds = _bounds(run.layers, run.pp * v, run.ends_take_a_layer)
    plan = build_plan(
        Context(profile, str(path), cluster, job),
        Candidate.named(schedule, pp=run.pp, m=m, mbs=mbs, virtual=v, layout=layout),
        bounds,
        [Option("bf16", rc)] * len(bounds),
    )
    step = plan.predicted.step_s
    where = _where_time_goes(plan, m)
    if run.source == NARAYANAN:
        flops = narayanan_flops_per_iteration(run.global_batch, run.seq_len, run.layers, run.hidden, run.vocab)
    elif run.source == TORCHTITAN:
        params = llama_params(run.layers, run.hidden, run.heads, run.kv_heads, run.ffn, run.vocab)
        flops = run.global_batch * run.seq_len * torchtitan_flops_per_token(params, run.layers, run.hidden, run.seq_len)
    else:
        flops = model_flops_per_iteration(run.global_batch, run.seq_len, run.layers, run.hidden, run.vocab)
    tflops = flops / step / run.gpus / 1e12
    published = run.tflops_per_gpu
    if published is None and run.iteration_s:
        published = flops / run.iteration_s / run.gpus / 1e12
    overlap = ",".join(x for x, on in (("grad", layout.overlap_grad_reduce), ("send", run.overlap_sends)) if on)
    return {
        "step_s": step,
        "tflops": tflops,
        "mfu": tflops * 1e12 / PEAK[run.device],
        "published": published,
        "published_mfu": run.peak_fraction,
        "error": (tflops - published) / published if published else None,
        "layout": f"{schedule} v={v} mb={mbs} m={m}",
        "recompute": rc.value + ("+sp" if layout.sequence_parallel else ""),
        "dp_mode": layout.dp_mode.value + ("/32" if layout.grads_fp32 else ""),
        "overlap": overlap or "none",
        "peak_gib": max(plan.predicted.peak_bytes) / 2**30,
        "capacity_gib": cluster.memory_bytes / 2**30,
        **where,
    }


def _where_time_goes(plan, m: int) -> dict:
    """Where the busiest rank's step goes: compute (``busy_s``, with the tensor-parallel collectives
    inside it, ``tp_s``) and the rest of the step (``idle_s``: pipeline bubbles, exposed data-parallel
    communication and the optimizer step)."""
    costs = plan.cost_model()
    tl = simulate(plan.sim_input(costs), detail=False)
    rank = max(tl.ranks, key=lambda r: r.busy_s)
    tp = 0.0
    for st in plan.stages:
        if st.rank == rank.rank:
            for u in range(st.first, st.end):
                rec = costs.record(st.option, u, st.index)
                tp += m * (rec.tp_forward_s + rec.tp_backward_s)
    return {"busy_s": rank.busy_s, "tp_s": tp, "idle_s": tl.step_s - rank.busy_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=0, help="only the first N rows (default: all)")
    ap.add_argument(
        "--breakdown", action="store_true", help="also print where each row's predicted step goes (busiest rank)"
    )
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
        f"{'source':<11} {'model':<13} {'GPUs':>5} {'tp':>2} {'pp':>2} {'dp':>3} {'layout':<30} {'recompute':<12} "
        f"{'attn':<5} {'fuse':<7} {'dp':<8} {'overlap':<9} {'pub TF/s':>8} {'pred':>6} {'error':>7} {'pub %pk':>7} "
        f"{'pred %pk':>8} {'GiB/dev':>11}"
    )
    for r, p in out:
        src = r.source.split(",")[0].split(" et al.")[0]
        err = f"{p['error']:+7.1%}" if p["error"] is not None else f"{'-':>7}"
        pub = f"{p['published']:8.1f}" if p["published"] else f"{'-':>8}"
        pub_mfu = f"{p['published_mfu']:7.1%}" if p["published_mfu"] else f"{'-':>7}"
        mem = f"{p['peak_gib']:5.1f}/{p['capacity_gib']:.0f}" + ("!" if p["peak_gib"] > p["capacity_gib"] else " ")
        print(
            f"{src[:11]:<11} {r.model[:13]:<13} {r.gpus:>5} {r.tp:>2} {r.pp:>2} {r.dp:>3} {p['layout']:<30} "
            f"{p['recompute']:<12} {r.attention:<5} {r.fusion:<7} {p['dp_mode']:<8} {p['overlap']:<9} {pub} "
            f"{p['tflops']:6.1f} {err} {pub_mfu} {p['mfu']:8.1%} {mem:>11}"
        )
    if args.breakdown:
        _print_breakdown(out)
    for r in skipped:
        print(f"skipped: {r.model} on {r.gpus} GPUs, context parallel {r.cp} (not modelled)")
    errs = [abs(p["error"]) for _, p in out if p["error"] is not None]
    if errs:
        print(
            f"median |error| {statistics.median(errs):.1%}, max {max(errs):.1%} over {len(errs)} rows "
            f"({time.perf_counter() - t0:.0f} s)"
        )
    over = [r.model for r, p in out if p["peak_gib"] > p["capacity_gib"]]
    print(f"predicted over its device's memory (!): {', '.join(over) if over else 'none'}")
    print("%pk: the paper's FLOPs per GPU over the 16-bit peak (Narayanan et al.: Eq. 3, recompute counted; else MFU)")
    print("dp: the data-parallel mode; /32: gradients accumulated and reduced in fp32")
    for src in sorted({r.source for r in rows}):
        print(f"source: {src}")
    for r in rows:
        if r.settings:
            print(f"settings of {r.model} ({r.gpus} GPUs): {r.settings}")
    return 0


def _print_breakdown(out: list) -> None:
    """Per row: the predicted step of the busiest rank as compute (GEMMs, attention and the rest;
    tensor-parallel collectives inside it, not overlapped) and the rest of the step, beside the step
    the published figure implies."""
    print()
    print(f"{'model':<13} {'GPUs':>5} {'step s':>7} {'pub s':>7} {'compute':>8} {'of it TP':>8} {'idle':>6}")
    for r, p in out:
        pub = p["step_s"] * p["tflops"] / p["published"] if p["published"] else float("nan")
        print(
            f"{r.model[:13]:<13} {r.gpus:>5} {p['step_s']:7.2f} {pub:7.2f} {p['busy_s'] / p['step_s']:8.1%} "
            f"{p['tp_s'] / p['step_s']:8.1%} {p['idle_s'] / p['step_s']:6.1%}"
        )
    print("compute: the busiest rank's F, I, W and B (TP collectives inside); idle: bubbles, DP comm, optimizer")


if __name__ == "__main__":
    raise SystemExit(main())
