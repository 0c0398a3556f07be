"""Gantt charts of Timelines (matplotlib), readable from 2 to 64 ranks."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from profiles.contract import write_files

from .timeline import Timeline

__all__ = ["COLORS", "gantt_figure", "write_gantt"]

COLORS = {"F": "#4C72B0", "B": "#DD8452", "I": "#C44E52", "W": "#55A868", "comm": "#8C8C8C"}


def _time_unit(step_s: float) -> tuple[float, str]:
    """A scale that keeps the axis numbers short: s, ms or us (what-if costs of 1 read as seconds)."""
    if step_s >= 1.0:
        return 1.0, "s"
    if step_s >= 1e-3:
        return 1e3, "ms"
    return 1e6, "us"


_LABELS = {"F": "forward", "B": "backward", "I": "backward (inputs)", "W": "backward (weights)", "comm": "send"}


def gantt_figure(timelines: list[Timeline] | Timeline, titles: list[str] | None = None, max_label_ranks: int = 16):
    """One panel per timeline, sharing the time axis. Returns a matplotlib Figure.

    Readable from 2 to 64+ ranks: above 16 ranks bars lose their white edges, gaps
    narrower than a pixel are closed (they would show as false white seams), rank
    labels thin out to at most ``max_label_ranks``, and sends are drawn up to 32 ranks.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    tls = [timelines] if isinstance(timelines, Timeline) else list(timelines)
    scale, unit = _time_unit(max([t.step_s for t in tls] + [0.0]))
    used = {e.kind for t in tls for e in t.events} | ({"comm"} if any(t.transfers for t in tls) else set())
    nranks = [max([r.rank for r in t.ranks] + [e.rank for e in t.events] + [0]) + 1 for t in tls]
    heights = [max(1.2, 0.28 * n + 0.8) for n in nranks]
    fig, axes = plt.subplots(
        len(tls),
        1,
        figsize=(12, sum(heights) + 0.6),
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    axis = _Axis(scale=scale, unit=unit, step_s=max([t.step_s for t in tls] + [0.0]), max_label_ranks=max_label_ranks)
    for ax, tl, n, title in zip(axes[:, 0], tls, nranks, titles or [t.source for t in tls]):
        _draw_panel(ax, tl, n, title, axis)
    axes[-1, 0].set_xlabel(f"time ({unit})")
    handles = [Patch(color=c, label=_LABELS[k]) for k, c in COLORS.items() if k in used]
    fig.legend(handles=handles, loc="upper right", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig


@dataclass(frozen=True)
class _Axis:
    """What every panel of one figure shares: the time scale and the longest step."""

    scale: float
    unit: str
    step_s: float
    max_label_ranks: int


def _closed_gaps(tl: Timeline, px: float) -> dict[int, float]:
    """End times that close gaps narrower than a pixel, by ``id`` of the event.

    Such a gap would render as a misleading white seam between back-to-back actions:
    the earlier action is drawn up to the next one's start.
    """
    nxt = {}
    by_rank: dict[int, list] = {}
    for e in tl.events:
        by_rank.setdefault(e.rank, []).append(e)
    for evs in by_rank.values():
        evs.sort(key=lambda e: e.start_s)
        for a, b in zip(evs, evs[1:]):
            if 0 < b.start_s - a.end_s < px:
                nxt[id(a)] = b.start_s
    return nxt


def _draw_panel(ax, tl: Timeline, n: int, title: str, axis: _Axis) -> None:
    """One timeline's bars, sends, microbatch labels, rank ticks and title on ``ax``."""
    scale = axis.scale
    nxt = _closed_gaps(tl, axis.step_s / 1200)
    for kind, color in COLORS.items():
        if kind == "comm":
            continue
        spans = {}
        for e in tl.events:
            if e.kind == kind:
                end = nxt.get(id(e), e.end_s)
                spans.setdefault(e.rank, []).append((e.start_s * scale, (end - e.start_s) * scale))
        for r, xs in spans.items():
            ax.broken_barh(
                xs, (r - 0.4, 0.8), facecolors=color, edgecolor="white" if n <= 16 else "none", linewidth=0.3
            )
    if tl.transfers and n <= 32:
        for r in range(n):
            xs = [(t.start_s * scale, (t.end_s - t.start_s) * scale) for t in tl.transfers if t.src == r]
            if xs:
                ax.broken_barh(xs, (r + 0.42, 0.12), facecolors=COLORS["comm"])
    if n <= 16 and len(tl.events) <= 400:
        _label_microbatches(ax, tl, scale)
    ax.set_ylim(n - 0.5, -0.5)
    step = max(1, n // axis.max_label_ranks)
    ax.set_yticks(range(0, n, step))
    ax.set_yticklabels([f"rank {r}" for r in range(0, n, step)], fontsize=8)
    busy = sum(r.busy_s for r in tl.ranks) / max(1, len(tl.ranks))
    bubble = 1 - busy / tl.step_s if tl.step_s else 0.0
    ax.set_title(
        f"{title}: step {tl.step_s * scale:.4g} {axis.unit}, mean bubble {bubble:.0%}", fontsize=10, loc="left"
    )
    ax.grid(axis="x", alpha=0.3)
    ax.ticklabel_format(axis="x", style="plain", useOffset=False)
    ax.set_xlim(0, axis.step_s * scale * 1.01 or 1.0)


def _label_microbatches(ax, tl: Timeline, scale: float) -> None:
    """The microbatch number inside every bar wide enough to hold it."""
    for e in tl.events:
        w = (e.end_s - e.start_s) * scale
        if w > tl.step_s * scale / 60:
            ax.text(
                (e.start_s * scale) + w / 2,
                e.rank,
                str(e.microbatch),
                ha="center",
                va="center",
                fontsize=7,
                color="white",
            )


def write_gantt(timelines: list[Timeline] | Timeline, path: str | Path, titles: list[str] | None = None) -> Path:
    """Draw the chart and write it as a PNG, atomically (see ``profiles.contract.write_files``)."""
    import matplotlib.pyplot as plt

    fig = gantt_figure(timelines, titles)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110)
    finally:
        plt.close(fig)
    return write_files({path: buf.getvalue()})[0]
