"""Gantt charts of Timelines (matplotlib), readable from 2 to 64 ranks."""

from __future__ import annotations

from pathlib import Path

from .timeline import Timeline

__all__ = ["COLORS", "gantt_figure", "write_gantt"]

COLORS = {"F": "#4C72B0", "B": "#DD8452", "I": "#C44E52", "W": "#55A868", "comm": "#8C8C8C"}


def gantt_figure(timelines: list[Timeline] | Timeline, titles: list[str] | None = None, max_label_ranks: int = 16):
    """One panel per timeline, sharing the time axis (milliseconds). Returns a matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    tls = [timelines] if isinstance(timelines, Timeline) else list(timelines)
    nranks = [max([r.rank for r in t.ranks] + [e.rank for e in t.events] + [0]) + 1 for t in tls]
    heights = [max(1.2, 0.28 * n + 0.8) for n in nranks]
    fig, axes = plt.subplots(len(tls), 1, figsize=(12, sum(heights) + 0.6), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, tl, n, title in zip(axes[:, 0], tls, nranks, titles or [t.source for t in tls]):
        for kind, color in COLORS.items():
            if kind == "comm":
                continue
            spans = {}
            for e in tl.events:
                if e.kind == kind:
                    spans.setdefault(e.rank, []).append((e.start_s * 1e3, (e.end_s - e.start_s) * 1e3))
            for r, xs in spans.items():
                ax.broken_barh(xs, (r - 0.4, 0.8), facecolors=color, edgecolor="white" if n <= 16 else "none",
                               linewidth=0.3)
        if tl.transfers and n <= 32:
            for r in range(n):
                xs = [(t.start_s * 1e3, (t.end_s - t.start_s) * 1e3) for t in tl.transfers if t.src == r]
                if xs:
                    ax.broken_barh(xs, (r + 0.42, 0.12), facecolors=COLORS["comm"])
        if n <= 16 and len(tl.events) <= 400:
            for e in tl.events:
                w = (e.end_s - e.start_s) * 1e3
                if w > tl.step_s * 1e3 / 60:
                    ax.text((e.start_s * 1e3) + w / 2, e.rank, str(e.microbatch), ha="center", va="center",
                            fontsize=7, color="white")
        ax.set_ylim(n - 0.5, -0.5)
        step = max(1, n // max_label_ranks)
        ax.set_yticks(range(0, n, step))
        ax.set_yticklabels([f"rank {r}" for r in range(0, n, step)], fontsize=8)
        busy = sum(r.busy_s for r in tl.ranks) / max(1, len(tl.ranks))
        bubble = 1 - busy / tl.step_s if tl.step_s else 0.0
        ax.set_title(f"{title}: step {tl.step_s * 1e3:.1f} ms, mean bubble {bubble:.0%}", fontsize=10, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("time (ms)")
    handles = [Patch(color=c, label={"F": "forward", "B": "backward", "I": "backward (inputs)",
                                     "W": "backward (weights)", "comm": "send"}[k]) for k, c in COLORS.items()]
    fig.legend(handles=handles, loc="upper right", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig


def write_gantt(timelines: list[Timeline] | Timeline, path: str | Path, titles: list[str] | None = None) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = gantt_figure(timelines, titles)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
