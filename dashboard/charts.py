"""Altair (Vega-Lite) charts over the frames of ``frames.py``: interactive, with tooltips.

Every function takes DataFrames and plain numbers and returns an ``alt.Chart``; none
reads Streamlit state. Colours follow ``simulator.gantt.COLORS`` so the PNGs the CLI
writes and the dashboard agree.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from simulator.gantt import COLORS

from .frames import KIND_NAMES

__all__ = ["stacked_units", "gantt", "memory_lines", "bubble_bars", "peak_bars", "split_strip", "KIND_ORDER"]

KIND_ORDER = ["F", "B", "I", "W", "send"]
_KIND_SCALE = alt.Scale(
    domain=[KIND_NAMES[k] for k in KIND_ORDER], range=[COLORS[k] if k in COLORS else COLORS["comm"] for k in KIND_ORDER]
)
_PART_COLORS = {
    "F ms": COLORS["F"],
    "I ms": COLORS["I"],
    "W ms": COLORS["W"],
    "weights MiB": "#8172B3",
    "activations MiB": "#CCB974",
}


def stacked_units(df: pd.DataFrame, parts: list[str], title: str, unit_label: str) -> alt.Chart:
    """Per-unit stacked bars of ``parts`` (columns of a profile frame), units in model order."""
    long = df.melt(id_vars=["#", "unit", "kind"], value_vars=parts, var_name="part", value_name="value")
    long["label"] = long["#"].map("{:02d}".format) + " " + long["unit"]
    return (
        alt.Chart(long, title=title)
        .mark_bar()
        .encode(
            x=alt.X("label:N", sort=None, title="unit (model order)", axis=alt.Axis(labelAngle=-45, labelLimit=120)),
            y=alt.Y("sum(value):Q", title=unit_label, stack="zero"),
            color=alt.Color(
                "part:N",
                sort=parts,
                title=None,
                scale=alt.Scale(domain=parts, range=[_PART_COLORS.get(p, "#999") for p in parts]),
                legend=alt.Legend(orient="top"),
            ),
            order=alt.Order("part_order:Q"),
            tooltip=["label:N", "kind:N", "part:N", alt.Tooltip("value:Q", format=".3f")],
        )
        .transform_calculate(part_order=f"indexof({parts!r}, datum.part)")
        .properties(height=380)
    )


def _rank_axis(nranks: int) -> alt.Axis:
    every = max(1, nranks // 16)
    return alt.Axis(values=list(range(0, nranks, every)), title="rank", grid=False, tickMinStep=1, format="d")


def gantt(
    events: pd.DataFrame, transfers: pd.DataFrame | None, nranks: int, domain: tuple[float, float], title: str
) -> alt.Chart:
    """Compute actions as bars per rank (kind by colour), sends as thin grey bars under each rank's row."""
    ev = events.assign(y0=events["rank"] - 0.4, y1=events["rank"] + 0.34)
    frames = [ev]
    if transfers is not None and len(transfers):
        frames.append(transfers.assign(y0=transfers["rank"] + 0.36, y1=transfers["rank"] + 0.48))
    data = pd.concat(frames, ignore_index=True)
    tooltip = [
        "timeline:N",
        "rank:Q",
        "action:N",
        "what:N",
        alt.Tooltip("start ms:Q", format=".3f"),
        alt.Tooltip("end ms:Q", format=".3f"),
        alt.Tooltip("ms:Q", format=".3f"),
    ]
    if "KiB" in data:
        tooltip.append(alt.Tooltip("KiB:Q", format=".1f"))
    height = int(min(900, max(140, 18 * nranks + 40)))
    return (
        alt.Chart(data, title=title)
        .mark_rect(stroke="white" if nranks <= 16 else None, strokeWidth=0.3)
        .encode(
            x=alt.X("start ms:Q", title="time (ms)", scale=alt.Scale(domain=list(domain), clamp=True, nice=False)),
            x2="end ms:Q",
            y=alt.Y(
                "y0:Q", scale=alt.Scale(domain=[nranks - 0.5, -0.5], nice=False, zero=False), axis=_rank_axis(nranks)
            ),
            y2="y1:Q",
            color=alt.Color("what:N", scale=_KIND_SCALE, title=None, legend=alt.Legend(orient="top")),
            tooltip=tooltip,
        )
        .properties(height=height)
    )


def memory_lines(mem: pd.DataFrame, cap_mib: float | None, domain: tuple[float, float], title: str) -> alt.Chart:
    """Memory held per rank over the step (step lines), the device cap as a red rule."""
    nranks = mem["rank"].nunique() if len(mem) else 0
    legend = alt.Legend(orient="right", columns=2) if nranks <= 16 else None
    lines = (
        alt.Chart(mem, title=title)
        .mark_line(interpolate="step-after", strokeWidth=1.5, clip=True)
        .encode(
            x=alt.X("ms:Q", title="time (ms)", scale=alt.Scale(domain=list(domain), nice=False)),
            y=alt.Y("MiB:Q", title="memory (MiB)"),
            color=alt.Color("rank:N", legend=legend, sort=sorted(mem["rank"].unique().tolist()) if nranks else None),
            tooltip=["rank:N", alt.Tooltip("ms:Q", format=".3f"), alt.Tooltip("MiB:Q", format=".1f")],
        )
    )
    if cap_mib and len(mem) and cap_mib > 4 * mem["MiB"].max():  # the rule would flatten every line
        return lines.properties(height=260, title=f"{title}; the cap, {cap_mib:,.0f} MiB, is far above")
    if cap_mib:
        rule = (
            alt.Chart(pd.DataFrame({"cap MiB": [cap_mib], "label": ["device cap"]}))
            .mark_rule(color="#C44E52", strokeDash=[6, 3], strokeWidth=2)
            .encode(y="cap MiB:Q", tooltip=["label:N", "cap MiB:Q"])
        )
        return (lines + rule).properties(height=260)
    return lines.properties(height=260)


def bubble_bars(ranks: pd.DataFrame, title: str) -> alt.Chart:
    return (
        alt.Chart(ranks, title=title)
        .mark_bar(color=COLORS["comm"])
        .encode(
            x=alt.X("rank:O", axis=alt.Axis(labelAngle=0, values=_sparse(ranks["rank"].tolist()))),
            y=alt.Y("bubble %:Q", scale=alt.Scale(domain=[0, 100])),
            tooltip=["rank:O", alt.Tooltip("bubble %:Q", format=".1f"), alt.Tooltip("busy ms:Q", format=".2f")],
        )
        .properties(height=220)
    )


def peak_bars(ranks: pd.DataFrame, cap_mib: float, title: str) -> alt.Chart:
    """Peak memory per rank, red where it is over the cap, the cap as a rule."""
    data = ranks.assign(over=ranks["peak MiB"] > cap_mib)
    bars = (
        alt.Chart(data, title=title)
        .mark_bar()
        .encode(
            x=alt.X("rank:O", axis=alt.Axis(labelAngle=0, values=_sparse(data["rank"].tolist()))),
            y=alt.Y("peak MiB:Q", title="peak memory (MiB)"),
            color=alt.Color("over:N", scale=alt.Scale(domain=[False, True], range=["#4C72B0", "#C44E52"]), legend=None),
            tooltip=["rank:O", alt.Tooltip("peak MiB:Q", format=".1f")],
        )
    )
    rule = (
        alt.Chart(pd.DataFrame({"cap MiB": [cap_mib]}))
        .mark_rule(color="#C44E52", strokeDash=[6, 3], strokeWidth=2)
        .encode(y="cap MiB:Q")
    )
    return (bars + rule).properties(height=220)


def split_strip(split: pd.DataFrame, chosen: int) -> alt.Chart:
    """Units left to right, one strip per candidate, coloured by stage; the chosen candidate outlined."""
    data = split.assign(chosen=split["#"] == chosen)
    units = data[["unit #", "unit"]].drop_duplicates("unit #").sort_values("unit #")
    names = [str(n) for n in units["unit"]]
    if len(set(names)) < len(names):  # the axis needs one label per unit: number them when names repeat
        names = [f"{i:02d} {n}" for i, n in zip(units["unit #"], names)]
    data["unit name"] = data["unit #"].map(dict(zip(units["unit #"], names)))
    nunits = len(names)
    nstages = int(data["stage"].max()) + 1 if len(data) else 1
    palette = "tableau10" if nstages <= 10 else "tableau20" if nstages <= 20 else "turbo"
    base = alt.Chart(data, title="split over the model's units (colour = stage)").encode(
        x=alt.X(
            "unit name:N",
            sort=names,
            title="unit (model order)",
            axis=alt.Axis(labelAngle=-45 if nunits > 12 else 0, labelLimit=120, values=_sparse(names, 32)),
        ),
        y=alt.Y(
            "candidate:N",
            sort=list(dict.fromkeys(data.sort_values("#")["candidate"])),
            title=None,
            axis=alt.Axis(labelLimit=220),
        ),
    )
    rect = base.mark_rect(stroke="white", strokeWidth=1).encode(
        color=alt.Color("stage:N", scale=alt.Scale(scheme=palette), legend=alt.Legend(orient="top", columns=16)),
        opacity=alt.condition("datum.chosen", alt.value(1.0), alt.value(0.45)),
        tooltip=["candidate:N", "unit #:O", "unit name:N", "stage:Q", "rank:Q", alt.Tooltip("F+B ms:Q", format=".3f")],
    )
    text = base.mark_text(fontSize=9, color="white").encode(text="stage:Q") if nunits <= 48 else None
    chart = rect + text if text is not None else rect
    return chart.properties(height=max(60, 32 * data["#"].nunique()))


def _sparse(values: list, most: int = 16) -> list:
    every = max(1, -(-len(values) // most))
    return values[::every]
