"""Why the winner wins: bottleneck, bubbles, memory headroom, what the runner-up traded."""

from __future__ import annotations

from simulator.costs import Recompute
from simulator.engine import simulate

from .figures import duration, figures, versus_sentence
from .plan import Plan, distinct_plans

__all__ = ["explain"]


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def explain(plans: list[Plan]) -> list[str]:
    """A few sentences about ``plans[0]`` and how it compares with the rest and the baselines."""
    plans = distinct_plans(plans)
    best = plans[0]
    tl = simulate(best)
    work: dict[int, float] = {}
    for e in tl.events:
        work[e.stage] = work.get(e.stage, 0.0) + e.end_s - e.start_s
    by_rank: dict[int, float] = {}
    for s in best.stages:
        by_rank[s.rank] = by_rank.get(s.rank, 0.0) + work.get(s.index, 0.0)
    slow_rank = max(by_rank, key=by_rank.__getitem__)
    slow_stage = max((s for s in best.stages if s.rank == slow_rank), key=lambda s: work.get(s.index, 0.0))
    names = best.profile.unit_names if best.profile else None
    units = (
        f"{names[slow_stage.first]}..{names[slow_stage.end - 1]}"
        if names
        else f"units {slow_stage.first}..{slow_stage.end - 1}"
    )
    bubble = sum(r.bubble_fraction for r in tl.ranks) / len(tl.ranks)
    cap = best.cluster.memory_bytes
    peak = max(r.peak_bytes for r in tl.ranks)
    peak_rank = max(tl.ranks, key=lambda r: r.peak_bytes).rank
    fig = figures(best)
    lines = [
        f"plan 1 ({best.schedule_label}, pp={best.pp}, tp={best.tp}, dp={best.dp} {best.dp_mode.value}, "
        f"v={best.virtual}, m={best.microbatches} x {best.microbatch_size}, {best.pipeline_layout()}) takes "
        f"{duration(best.predicted.step_s)} per step: {fig.tokens_per_s:,.0f} tokens/s "
        f"({fig.tokens_per_s_per_device:,.1f} per device), {fig.tflops_per_device:.1f} model TFLOP/s per device"
        + (f", MFU {fig.mfu:.1%}." if fig.mfu is not None else "."),
        f"bottleneck: rank {slow_rank} ({by_rank[slow_rank] * 1e3:.1f} ms of compute per step, "
        f"{by_rank[slow_rank] / tl.step_s:.0%} of the step), its heaviest stage {slow_stage.index} ({units}); "
        f"the least loaded rank computes {min(by_rank.values()) * 1e3:.1f} ms.",
        f"bubbles: {bubble:.1%} of the step on average, {max(r.bubble_fraction for r in tl.ranks):.1%} at worst.",
        f"memory: peak {_gib(peak)} on rank {peak_rank}, headroom {_gib(cap - peak)} of {_gib(cap)}.",
    ]
    recompute = [f"{s.index} ({s.recompute.value})" for s in best.stages if s.recompute is not Recompute.NONE]
    if recompute:
        lines.append(f"stages {', '.join(recompute)} recompute their activations to fit.")
    for b in best.baselines:
        what = (
            f"the {b['name']} baseline ({b.get('recipe', b['name'])}: {b.get('config') or 'split ' + str(b['split'])})"
        )
        if not b.get("fits_memory", True):
            lines.append(f"{what}: {versus_sentence(b, 'plan 1')} per device.")
            continue
        lines.append(f"{what} takes {duration(b['step_s'])}: {versus_sentence(b, 'plan 1')}.")
    if len(plans) > 1:
        r = plans[1]
        d_peak = max(r.predicted.peak_bytes) - peak
        r_bubble = sum(r.predicted.bubble_fraction) / len(r.predicted.bubble_fraction)
        lines.append(
            f"runner-up ({r.schedule_label}, pp={r.pp}, v={r.virtual}, m={r.microbatches}, {r.pipeline_layout()}) is "
            f"{r.predicted.step_s / best.predicted.step_s:.3f}× slower: bubbles {r_bubble:.1%} vs "
            f"{bubble:.1%}, peak memory {'+' if d_peak >= 0 else '-'}{_gib(abs(d_peak))}."
        )
    solver = best.solver
    if solver.get("solver") not in (None, "none"):
        gap = solver.get("gap")
        lines.append(
            f"split from the {solver['solver']} MILP ({solver.get('status')}, gap "
            f"{'?' if gap is None else f'{gap:.2%}'})"
            + (f", then improved by the simulator ({solver['refined']})." if solver.get("refined") else ".")
        )
    return lines
