"""Pure table builders: Profile, Plan, Timeline and RunReport -> pandas DataFrames.

No Streamlit here: these are plain functions of their arguments, so the cached
loaders in ``data.py`` can call them and the tests can check them directly.
Times in the frames are milliseconds and sizes MiB (what people read); the
contracts underneath stay in seconds and bytes.
"""

from __future__ import annotations

import pandas as pd

from executor.report import RunReport, comm_per_pp_rank, predicted_comm
from planner.figures import figures
from planner.plan import Plan
from profiles.types import ProfileEntry
from simulator.timeline import Span, Timeline, spans

__all__ = [
    "profile_frame",
    "candidate_row",
    "split_frame",
    "events_frame",
    "transfers_frame",
    "memory_frame",
    "ranks_frame",
    "compare_frame",
    "KIND_NAMES",
]

MIB = 2**20
#: the action kinds as people read them (legend and tooltips)
KIND_NAMES = {
    "F": "forward (F)",
    "B": "backward (B)",
    "I": "backward, inputs (I)",
    "W": "backward, weights (W)",
    "send": "send",
}


def profile_frame(entry: ProfileEntry) -> pd.DataFrame:
    """One row per unit, in model order: times (ms), memory (MiB), parameters, GFLOP."""
    return pd.DataFrame(
        [
            {
                "#": i,
                "unit": u.name,
                "kind": u.kind,
                "F ms": u.forward_s * 1e3,
                "I ms": u.backward_input_s * 1e3,
                "W ms": u.backward_weight_s * 1e3,
                "B ms": u.backward_s * 1e3,
                "weights MiB": u.param_bytes / MIB,
                "activations MiB": u.saved_bytes / MIB,
                "output KiB": u.output_bytes / 1024,
                "params": u.params,
                "GFLOP": u.forward_flops / 1e9,
            }
            for i, u in enumerate(entry.units)
        ]
    )


def candidate_row(rank: int, plan: Plan, cap_bytes: int) -> dict:
    """One row of the ranked candidate table: the figures of the CLI's table (``planner.figures``)."""
    pred = plan.predicted
    base = next((b for b in plan.baselines if b.get("name") == "even-1F1B"), None)
    peak = max(pred.peak_bytes)
    fig = figures(plan)
    return {
        "#": rank,
        "schedule": plan.schedule_label,
        "pp": plan.pp,
        "tp": plan.layout.tp,
        "dp": plan.layout.dp,
        "dp mode": plan.layout.dp_mode.value,
        "microbatches": plan.microbatches,
        "mb size": plan.microbatch_size,
        "step ms": pred.step_s * 1e3,
        "vs even split": base["speedup"] if base and base.get("fits_memory", True) else None,
        "bubble %": 100 * sum(pred.bubble_fraction) / len(pred.bubble_fraction),
        "peak GiB": peak / 2**30,
        "peak / cap %": 100 * peak / cap_bytes,
        "dtype": plan.stages[0].dtype,
        "recompute": ",".join(sorted({s.recompute.value for s in plan.stages})),
        "samples/s": pred.throughput,
        "tokens/s": fig.tokens_per_s,
        "tokens/s per device": fig.tokens_per_s_per_device,
        "TFLOP/s per device": fig.tflops_per_device,
        "MFU %": None if fig.mfu is None else 100 * fig.mfu,
        "layout": plan.pipeline_layout(),
    }


def split_frame(plans: list[Plan], unit_names: list[str], unit_ms: list[float]) -> pd.DataFrame:
    """One row per (candidate, unit): which stage and rank runs the unit."""
    rows = []
    for i, p in enumerate(plans, 1):
        for s in p.stages:
            for u in range(s.first, s.end):
                rows.append(
                    {
                        "candidate": f"#{i} {p.schedule} pp{p.pp}",
                        "#": i,
                        "unit #": u,
                        "unit": unit_names[u],
                        "stage": s.index,
                        "rank": s.rank,
                        "F+B ms": unit_ms[u] if u < len(unit_ms) else None,
                    }
                )
    return pd.DataFrame(rows)


def events_frame(tl: Timeline, label: str = "") -> pd.DataFrame:
    """Compute actions, one row each: rank, kind, start/end (ms), the action's name."""
    rows = [_span_row(sp, label or tl.source) for sp in spans(tl) if sp.track == "compute"]
    cols = ["timeline", "rank", "kind", "what", "action", "stage", "microbatch", "start ms", "end ms", "ms"]
    return pd.DataFrame(rows, columns=cols)


def transfers_frame(tl: Timeline, label: str = "") -> pd.DataFrame:
    """Sends between ranks and the data-parallel collectives (fsdp gathers, reductions; not the
    optimizer step), one row each, on each rank's communication lane."""
    rows = [
        {**_span_row(sp, label or tl.source), "KiB": sp.bytes / 1024}
        for sp in spans(tl)
        if sp.track == "send" or (sp.track == "communication" and sp.kind != "OPTIMIZER")
    ]
    cols = ["timeline", "rank", "kind", "what", "action", "stage", "microbatch", "start ms", "end ms", "ms", "KiB"]
    return pd.DataFrame(rows, columns=cols)


def _span_row(sp: Span, timeline: str) -> dict:
    """A span (``simulator.timeline.spans``) as the chart reads it: sends and collectives share the send lane."""
    kind = sp.kind if sp.track == "compute" else "send"
    return {
        "timeline": timeline,
        "rank": sp.rank,
        "kind": kind,
        "what": KIND_NAMES[kind],
        "action": sp.name,
        "stage": sp.stage,
        "microbatch": sp.microbatch,
        "start ms": sp.start_s * 1e3,
        "end ms": sp.end_s * 1e3,
        "ms": (sp.end_s - sp.start_s) * 1e3,
    }


def memory_frame(tl: Timeline, label: str = "") -> pd.DataFrame:
    """Memory over time per rank as steps: (rank, ms, MiB), held level until the next change and to step end."""
    rows = []
    for r, pts in sorted(tl.memory.items()):
        for t, b in pts:
            rows.append({"timeline": label or tl.source, "rank": r, "ms": t * 1e3, "MiB": b / MIB})
        if pts:
            rows.append({"timeline": label or tl.source, "rank": r, "ms": tl.step_s * 1e3, "MiB": pts[-1][1] / MIB})
    return pd.DataFrame(rows, columns=["timeline", "rank", "ms", "MiB"])


def ranks_frame(tl: Timeline, cap_bytes: int | None = None) -> pd.DataFrame:
    """Per-rank busy time, bubble share and peak memory (against the cap when given)."""
    rows = []
    for r in tl.ranks:
        row = {
            "rank": r.rank,
            "busy ms": r.busy_s * 1e3,
            "bubble %": 100 * r.bubble_fraction,
            "peak MiB": r.peak_bytes / MIB,
        }
        if cap_bytes:
            row["peak / cap %"] = 100 * r.peak_bytes / cap_bytes
        rows.append(row)
    return pd.DataFrame(rows)


def compare_frame(
    predicted: Timeline, report: RunReport, replayed_s: float | None = None, plan: Plan | None = None
) -> pd.DataFrame:
    """Predicted vs measured (the numbers of ``executor.cli.compare_table``): step, the replayed
    step when given (``executor.report.replayed_step_s``), busy and peak per rank, and with
    ``plan`` each pipeline rank's time in tp and dp collectives when the report measured them."""

    def row(what: str, p: float, m: float) -> dict:
        return {"quantity": what, "predicted": p, "measured": m, "error %": 100 * (m - p) / p if p else None}

    rows = [row("step time (ms)", predicted.step_s * 1e3, report.step_s_median * 1e3)]
    if replayed_s:
        rows.append(row("replayed step (ms)", replayed_s * 1e3, report.step_s_median * 1e3))
    measured = {r.rank: r for r in report.timeline.ranks}
    for r in predicted.ranks:
        m = measured.get(r.rank)
        if m is None:
            continue
        rows.append(row(f"rank {r.rank} busy (ms)", r.busy_s * 1e3, m.busy_s * 1e3))
        rows.append(row(f"rank {r.rank} bubble (%)", 100 * r.bubble_fraction, 100 * m.bubble_fraction))
        rows.append(row(f"rank {r.rank} peak (MiB)", r.peak_bytes / MIB, m.peak_bytes / MIB))
    meas = comm_per_pp_rank(report, plan) if plan is not None else {}
    for rank, p in (predicted_comm(plan, predicted) if meas else {}).items():
        for group in ("tp", "dp"):
            m = meas.get(rank, {}).get(group, 0.0)
            if p[group] or m:
                rows.append(row(f"rank {rank} {group} comm (ms)", p[group] * 1e3, m * 1e3))
    return pd.DataFrame(rows, columns=["quantity", "predicted", "measured", "error %"])
