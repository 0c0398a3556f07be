"""The dashboard's views: Profile, Plan, Pipeline, Compare, Export.

Each ``show_*`` draws one tab from a :class:`Context` (what the sidebar chose). Data
comes from the cached functions of ``data.py``; tables from ``frames.py``; charts
from ``charts.py``. Session state is read here only, never inside cached functions.
Text that comes from a file (names, notes, error lines, which quote file contents) goes
through :func:`md` before any Markdown element, so it shows as the characters it is.
Export's Run panel starts ``pipeplan validate`` through ``runner.py``.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import streamlit as st

from executor.report import disturbance_notes, replayed_step_s
from planner.export import TORCHTITAN_VERSION, export_text, launch_lines
from planner.figures import FLOP_CONVENTION, duration, versus
from planner.plan import Plan
from profiles.contract import UserError
from profiles.types import Profile
from simulator.schedules import SCHEDULES, schedule_spec
from simulator.timeline import Timeline

from . import charts, data, files, frames, runner

__all__ = [
    "Context",
    "show_profile",
    "show_plan",
    "show_pipeline",
    "show_compare",
    "show_export",
    "CHOSEN",
    "OPEN_REPORT",
    "md",
    "short_path",
]

CHOSEN = "chosen_candidate"  #: session key: the candidate picked in the Plan view (1-based), kept across tabs
OPEN_REPORT = "open_report"  #: session key: a finished run's report, for the app to open in the Compare view
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:=&])")
_RANGE_SHOW_SENDS = 6000  #: draw sends by default while the chart has at most this many compute bars


@dataclass(frozen=True)
class Context:
    profile_path: str
    version: data.Stamp
    profile: Profile
    settings: data.PlanSettings
    files: dict[str, list[str]]
    roots: tuple[str, ...]  #: the folders as given (paths in ``files`` start with one of them)
    resolved: tuple[str, ...]  #: the same, resolved: paths inside files are followed only into these


def md(text: object) -> str:
    """``text`` (a name or message from a file) escaped so Markdown shows it as it is: no emphasis,
    links, colours or formulas, one line."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def short_path(path: str, roots: tuple[str, ...]) -> str:
    """``path`` relative to the root it was found under (the whole path when none)."""
    for r in roots:
        rel = os.path.relpath(path, r)
        if not rel.startswith(".."):
            return rel
    return path


def _chart(where, chart, width: str = "stretch") -> None:
    """Draw an altair chart at its own height plus room for title, legend and axis labels (Streamlit would
    otherwise squeeze a chart whose width stretches)."""
    h = getattr(chart, "height", None)
    where.altair_chart(chart, width=width, height=int(h) + 150 if isinstance(h, (int, float)) else "content")


# -- Profile ---------------------------------------------------------------------------------------
def show_profile(ctx: Context) -> None:
    p = ctx.profile
    st.caption(
        f"**{md(p.model_name)}** on {md(p.device_name)} ({md(p.device_kind)}), {md(p.method)}, sequence length "
        f"{p.seq_len}, {p.num_units} units — {md(short_path(ctx.profile_path, ctx.roots))}"
    )
    c1, c2 = st.columns(2)
    dtypes = data.profile_dtypes(p)
    dtype = c1.segmented_control("dtype", dtypes, default=dtypes[0], key="profile_dtype", required=True) or dtypes[0]
    sizes = sorted({e.microbatch_size for e in p.entries if e.dtype == dtype})
    mbs = (
        c2.segmented_control("microbatch size", sizes, default=sizes[0], key=f"profile_mbs_{dtype}", required=True)
        or sizes[0]
    )
    entry = p.entry(dtype, mbs)
    df = frames.profile_frame(entry)
    cons = entry.consistency
    m = st.columns(4)
    m[0].metric("one microbatch, all units, F+B (ms)", f"{(df['F ms'].sum() + df['B ms'].sum()):.2f}")
    m[1].metric("forward: units / whole model", f"{cons['forward']:.2f}")
    m[2].metric("backward: units / whole model", f"{cons['backward']:.2f}")
    m[3].metric("saved bytes: units / whole model", f"{cons['saved_bytes']:.3f}")
    if any(abs(v - 1) > 0.25 for v in cons.values() if v == v):
        st.warning(
            "A consistency ratio is far from 1: the per-unit times do not add up to the whole model's, "
            "so stage times built from them are less certain (profile again with more repeats, or fewer "
            "threads)."
        )
    _chart(
        st,
        charts.stacked_units(
            df, ["F ms", "I ms", "W ms"], f"time per unit ({dtype}, microbatch {mbs})", "ms per microbatch"
        ),
        width="stretch",
    )
    _chart(st, charts.stacked_units(df, ["weights MiB", "activations MiB"], "memory per unit", "MiB"), width="stretch")
    st.dataframe(
        df,
        hide_index=True,
        width="stretch",
        column_config={
            k: st.column_config.NumberColumn(format="%.3f")
            for k in ("F ms", "I ms", "W ms", "B ms", "weights MiB", "activations MiB", "GFLOP")
        },
    )


# -- Plan ------------------------------------------------------------------------------------------
def _solve(ctx: Context) -> tuple[list[Plan], str | None]:
    """The candidates (cached), with a spinner while the planner solves; a warning shows, an error stops."""
    with st.spinner("the planner is solving…"):
        plans, error = data.plan_candidates(ctx.profile_path, ctx.version, ctx.resolved, ctx.settings)
    if error and plans:
        st.warning(md(error.removeprefix("warning: ")))
        return plans, None
    return plans, error


def chosen_index(plans: list[Plan]) -> int:
    """The picked candidate (1-based), clamped to what this solve has."""
    pick = st.session_state.get(CHOSEN, 1)
    return pick if isinstance(pick, int) and 1 <= pick <= len(plans) else 1


def show_plan(ctx: Context) -> None:
    s = ctx.settings
    plans, error = _solve(ctx)
    if error:
        st.error(md(error))
        return
    rows = pd.DataFrame([frames.candidate_row(i, p, s.memory_bytes) for i, p in enumerate(plans, 1)])
    st.subheader(
        f"{len(plans)} best plans for {s.devices} devices × {s.memory_gib:g} GiB, global batch {s.job.global_batch}"
    )
    st.dataframe(
        rows,
        hide_index=True,
        width="stretch",
        column_config={
            "step ms": st.column_config.NumberColumn(format="%.2f"),
            "bubble %": st.column_config.NumberColumn(format="%.1f"),
            "peak GiB": st.column_config.NumberColumn(format="%.3f"),
            "peak / cap %": st.column_config.ProgressColumn(format="%.0f%%", min_value=0, max_value=100),
            "vs even split": st.column_config.NumberColumn(format="%.2fx", help="even split's step time / this one's"),
            "samples/s": st.column_config.NumberColumn(format="%.1f"),
            "tokens/s": st.column_config.NumberColumn(format="%.0f"),
            "tokens/s per device": st.column_config.NumberColumn(format="%.1f"),
            "TFLOP/s per device": st.column_config.NumberColumn(format="%.1f", help=FLOP_CONVENTION),
            "MFU %": st.column_config.NumberColumn(
                format="%.1f", help=f"{FLOP_CONVENTION}, over the device's peak (analytic profiles only)"
            ),
        },
    )
    c = s.cluster()
    st.caption(
        md(f"cluster {c.name}: {c.devices} x {c.device}, {c.devices_per_node} per node, {s.memory_gib:g} GiB each")
    )
    options = list(range(1, len(plans) + 1))
    pick = st.radio(
        "show candidate",
        options,
        index=chosen_index(plans) - 1,
        horizontal=True,
        format_func=lambda i: (
            f"#{i} {plans[i - 1].schedule_label} pp{plans[i - 1].pp} ({duration(plans[i - 1].predicted.step_s)})"
        ),
    )
    st.session_state[CHOSEN] = pick
    plan = plans[pick - 1]
    entry = ctx.profile.entry(plan.stages[0].dtype, plan.microbatch_size)
    unit_ms = [(u.forward_s + u.backward_s) * 1e3 for u in entry.units]
    split = frames.split_frame(plans, ctx.profile.unit_names, unit_ms)
    _chart(st, charts.split_strip(split, pick), width="stretch")
    tl = data.candidate_timeline(ctx.profile_path, ctx.version, ctx.resolved, s, pick - 1)
    ranks = frames.ranks_frame(tl, s.memory_bytes)
    c1, c2 = st.columns(2)
    _chart(
        c1,
        charts.peak_bars(ranks, s.memory_bytes / 2**20, f"#{pick}: peak memory per rank vs the cap"),
        width="stretch",
    )
    _chart(c2, charts.bubble_bars(ranks, f"#{pick}: bubble share per rank"), width="stretch")
    st.caption(
        f"layout {md(plan.pipeline_layout())} · split at units {plan.split or '—'} · solver "
        + md(f"{plan.solver.get('solver', '?')} {plan.solver.get('status', '')}")
        + "".join(f" · {md(_versus(b))}" for b in plan.baselines)
    )
    for note in plan.notes:
        st.caption(md(note))


def _versus(b: dict) -> str:
    """``1.30× faster than megatron``, ``megatron: 0.76× (slower)``, ``megatron: OOM (214 GiB)``."""
    text = versus(b)
    return f"{text} {b['name']}" if text.endswith("than") else f"{b['name']}: {text}"


# -- Pipeline --------------------------------------------------------------------------------------
def _pipeline_source(ctx: Context, where: str) -> tuple[str, Timeline | None, Plan | None, int | None]:
    """(title, timeline, plan, cap bytes) of what the user chose to look at in view ``where``."""
    # short options: the choice is also the URL's value (?pipe_source=what-if)
    src = st.radio(
        "timeline of",
        ["candidate", "saved plan", "what-if"],
        horizontal=True,
        key=f"{where}_source",
        bind="query-params",
        help="the candidate chosen in the Plan view, a plan file, or uniform stage costs (any number of ranks)",
    )
    if src == "candidate":
        plans, error = _solve(ctx)
        if error:
            st.error(md(error))
            return "", None, None, None
        pick = chosen_index(plans)
        plan = plans[pick - 1]
        tl = data.candidate_timeline(ctx.profile_path, ctx.version, ctx.resolved, ctx.settings, pick - 1)
        return (
            f"candidate #{pick}: {plan.schedule} {_mesh(plan)} {plan.pipeline_layout()}",
            tl,
            plan,
            ctx.settings.memory_bytes,
        )
    if src == "saved plan":
        path, plan = _saved_plan(ctx, f"{where}_plan_file")
        if plan is None:
            return "", None, None, None
        tl, err = data.saved_plan_timeline(path, data.stamp(path), ctx.resolved)
        if tl is None:
            st.error(md(err))
            return "", None, None, None
        return (
            f"{Path(path).name}: {plan.schedule} {_mesh(plan)} {plan.pipeline_layout()}",
            tl,
            plan,
            plan.cluster.memory_bytes,
        )
    return _whatif(where)


def _saved_plan(ctx: Context, key: str) -> tuple[str, Plan | None]:
    """A plan file picked from the roots and loaded (an info or error panel when there is none)."""
    if not ctx.files["plan"]:
        st.info("No plan file found: write one with `pipeplan plan PROFILE ... -o runs/NAME/plan.json`.")
        return "", None
    path = st.selectbox("plan file", ctx.files["plan"], key=key, format_func=lambda p: short_path(p, ctx.roots))
    plan, err = data.saved_plan(path, data.stamp(path), ctx.resolved)
    if plan is None:
        st.error(md(err))
    return path, plan


def _whatif(where: str) -> tuple[str, Timeline | None, None, None]:
    """Uniform stage costs for any schedule, ranks and microbatches."""
    c = st.columns(7)
    sched = c[0].selectbox("schedule", list(SCHEDULES), key=f"{where}_wi_sched")
    spec = schedule_spec(sched)
    pp = int(c[1].number_input("ranks", 2, 256, 64, key=f"{where}_wi_pp"))
    hi_v = spec.max_virtual or 8
    v = int(
        c[2].number_input(
            "stages per rank",
            spec.min_virtual,
            hi_v,
            spec.min_virtual,
            key=f"{where}_wi_v_{sched}",
            disabled=spec.min_virtual == hi_v,
            help=f"{spec.name}: {spec.virtual_text} ({md(spec.summary)})",
        )
    )
    m = int(c[3].number_input("microbatches", 1, data.MAX_MICROBATCHES, 128, key=f"{where}_wi_m"))
    per_rank = "per rank and microbatch; each of a rank's stages takes its share"
    f = c[4].number_input("F ms", 0.0, 1e4, 1.0, key=f"{where}_wi_f", help=f"forward time {per_rank}")
    b = c[5].number_input(
        "B ms", 0.0, 1e4, 2.0, key=f"{where}_wi_b", help=f"backward time (I + W, half each) {per_rank}"
    )
    comm = c[6].number_input("send ms", 0.0, 1e4, 0.05, key=f"{where}_wi_comm")
    tl, err = data.whatif_timeline(sched, pp, m, v, f=f, b=b, comm=comm)
    if tl is None:
        st.error(md(err))
        return "", None, None, None
    return f"what-if {sched}, {pp} ranks x {v} stages, {m} microbatches", tl, None, None


def _zoom(step_ms: float, key: str) -> tuple[float, float]:
    hi = max(step_ms, 1e-6)
    lo_hi = st.slider(
        "time range (ms): zoom into the step", 0.0, float(hi), (0.0, float(hi)), key=key, step=float(hi) / 500
    )
    return (lo_hi[0], lo_hi[1]) if lo_hi[1] > lo_hi[0] else (0.0, float(hi))


def _in_range(df: pd.DataFrame, domain: tuple[float, float]) -> pd.DataFrame:
    return df[(df["end ms"] >= domain[0]) & (df["start ms"] <= domain[1])]


def show_pipeline(ctx: Context) -> None:
    title, tl, plan, cap = _pipeline_source(ctx, "pipe")
    if tl is None:
        return
    nranks = len(tl.ranks)
    ranks = frames.ranks_frame(tl, cap)
    mean_bubble = ranks["bubble %"].mean()
    c = st.columns(4)
    c[0].metric("step time (ms)", f"{tl.step_s * 1e3:.2f}")
    c[1].metric("mean bubble", f"{mean_bubble:.1f} %")
    c[2].metric("ranks", nranks)
    c[3].metric("peak memory (max rank, MiB)", f"{ranks['peak MiB'].max():.1f}")
    domain = _zoom(tl.step_s * 1e3, f"zoom_{title}")
    ev = _in_range(frames.events_frame(tl), domain)
    tr = frames.transfers_frame(tl)
    show_sends = st.checkbox(
        "show sends (grey, under each rank)", value=len(ev) <= _RANGE_SHOW_SENDS, key=f"sends_{title}"
    )
    tr = _in_range(tr, domain) if show_sends else None
    _chart(st, charts.gantt(ev, tr, nranks, domain, title), width="stretch")
    c1, c2 = st.columns(2)
    _chart(c1, charts.bubble_bars(ranks, "bubble share per rank"), width="stretch")
    mem = frames.memory_frame(tl)
    _chart(
        c2,
        charts.memory_lines(
            mem,
            cap / 2**20 if cap else None,
            domain,
            "memory over the step per rank" + (" (red: device cap)" if cap else ""),
        ),
        width="stretch",
    )
    if tl.critical_path:
        path = " › ".join(tl.critical_path)
        st.caption("critical path: " + (path if len(path) < 400 else path[:190] + " … " + path[-190:]))
    with st.expander("per-rank table"):
        st.dataframe(ranks, hide_index=True, width="stretch")


# -- Compare ---------------------------------------------------------------------------------------
def show_compare(ctx: Context) -> None:
    if not ctx.files["runreport"]:
        st.info("No run report found: run `pipeplan validate runs/NAME/plan.json` (or `make demo`), then reload.")
        return
    path = st.selectbox(
        "run report", ctx.files["runreport"], key="compare_report", format_func=lambda p: short_path(p, ctx.roots)
    )
    rep, plan, predicted, err = data.run_report(path, data.stamp(path), ctx.resolved)
    if rep is None:
        st.error(md(err))
        return
    if err:
        st.warning(md(err))
    for note in disturbance_notes(rep, plan.profile if plan is not None else None):
        st.warning(md(note[0].upper() + note[1:]))
    c = st.columns(4)
    c[0].metric(
        "measured step (median, ms)",
        f"{rep.step_s_median * 1e3:.1f}",
        f"{rep.error:+.1%} vs predicted" if rep.error is not None else None,
        delta_color="off",
    )
    c[1].metric("predicted step (ms)", f"{rep.predicted_step_s * 1e3:.1f}" if rep.predicted_step_s else "—")
    c[2].metric("ranks", f"{rep.world_size} × {md(rep.device)} ({md(rep.backend)})")
    check = rep.check.passed if rep.check else None
    c[3].metric(
        "numerics check",
        "—" if check is None else ("passed" if check else "FAILED"),
        f"max rel diff {rep.check.max_rel_diff:.1e}" if check is not None else None,
        delta_color="off",
    )
    measured = rep.timeline
    tls = [(predicted, "simulated"), (measured, "measured")] if predicted is not None else [(measured, "measured")]
    end = max(t.step_s for t, _ in tls) * 1e3
    domain = _zoom(end, f"compare_zoom_{path}")
    nranks = max(len(t.ranks) for t, _ in tls)
    for tl, label in tls:
        ev = _in_range(frames.events_frame(tl, label), domain)
        tr = _in_range(frames.transfers_frame(tl, label), domain)
        _chart(st, charts.gantt(ev, tr, nranks, domain, f"{label}: step {tl.step_s * 1e3:.1f} ms"), width="stretch")
    if predicted is not None:
        st.subheader("predicted vs measured")
        replayed = replayed_step_s(plan, rep)
        st.dataframe(
            frames.compare_frame(predicted, rep, replayed, plan),
            hide_index=True,
            width="stretch",
            column_config={
                "predicted": st.column_config.NumberColumn(format="%.2f"),
                "measured": st.column_config.NumberColumn(format="%.2f"),
                "error %": st.column_config.NumberColumn(format="%+.1f"),
            },
        )
        st.caption(
            "replayed step: the plan simulated with the run's own action times. Its error is the "
            "schedule model's own (transfers, waits, overhead); the rest of the step's error is compute "
            "that ran slower or faster than profiled."
        )
    spread = (max(rep.step_s) - min(rep.step_s)) / rep.step_s_median if rep.step_s else 0.0
    st.caption(
        f"measured over {len(rep.step_s)} steps (median; spread {spread:.1%}); losses "
        + " ".join(f"{x:.4f}" for x in rep.losses)
    )
    d1, d2 = st.columns(2)
    d1.download_button(
        "measured trace (Perfetto JSON)",
        data.trace_json(measured, "measured"),
        file_name=f"{Path(path).stem}.run.trace.json",
        mime="application/json",
        key="dl_run_trace",
    )
    if predicted is not None:
        d2.download_button(
            "simulated trace (Perfetto JSON)",
            data.trace_json(predicted, "simulated"),
            file_name=f"{Path(path).stem}.sim.trace.json",
            mime="application/json",
            key="dl_runsim_trace",
        )


# -- Export ----------------------------------------------------------------------------------------
def show_export(ctx: Context) -> None:
    src = st.radio("plan to export", ["chosen candidate", "saved plan"], horizontal=True, key="export_source")
    if src == "chosen candidate":
        plans, error = _solve(ctx)
        if error:
            st.error(md(error))
            return
        pick = chosen_index(plans)
        plan = plans[pick - 1]
        tl = data.candidate_timeline(ctx.profile_path, ctx.version, ctx.resolved, ctx.settings, pick - 1)
        name = f"plan{pick}"
        plan_dir = None
        path = None
    else:
        path, plan = _saved_plan(ctx, "export_plan_file")
        if plan is None:
            return
        tl, err = data.saved_plan_timeline(path, data.stamp(path), ctx.resolved)
        if tl is None:
            st.error(md(err))
            return
        name = Path(path).stem
        plan_dir = Path(path).parent
    lay = plan.layout
    st.markdown(
        f"**{md(plan.model_name)}**: {plan.schedule}, pp {plan.pp} × dp {lay.dp} ({lay.dp_mode.value}) × tp "
        f"{lay.tp}{' with sequence parallel' if lay.sequence_parallel else ''}"
        f"{', fp32 gradients' if lay.grads_fp32 else ''}, {plan.microbatches} "
        f"microbatches of {plan.microbatch_size}, layout {md(plan.pipeline_layout())}, predicted "
        f"{plan.predicted.step_s * 1e3:.2f} ms per step"
        if plan.predicted
        else ""
    )
    c = st.columns(3)
    c[0].download_button(
        "plan JSON", data.plan_json(plan, plan_dir), file_name=f"{name}.json", mime="application/json", key="dl_plan"
    )
    c[1].download_button(
        "schedule CSV (torch)", data.schedule_csv(plan), file_name=f"{name}.csv", mime="text/csv", key="dl_csv"
    )
    c[2].download_button(
        "simulated trace (Perfetto JSON)",
        data.trace_json(tl, "simulated"),
        file_name=f"{name}.sim.trace.json",
        mime="application/json",
        key="dl_sim_trace",
    )
    st.markdown("Run it (the downloaded plan names its profile by absolute path, so save it anywhere here):")
    st.code("\n".join(launch_lines(plan, f"{name}.json")), language="bash")
    _engine_exports(plan, name)
    st.caption(
        "or `pipeplan validate PLAN` to run it and compare with the prediction (writes the measured trace, "
        "shown in the Compare view). Open traces at https://ui.perfetto.dev."
    )
    _run_panel(ctx, plan, path)


#: the Export view's engine downloads: (target, label, file suffix, mime)
_ENGINE_EXPORTS = (
    ("torchtitan", f"torchtitan {TORCHTITAN_VERSION} config (Python)", "_torchtitan.py", "text/x-python"),
    ("megatron", "Megatron-LM arguments (bash)", ".megatron.sh", "text/x-shellscript"),
    ("launch", "launch lines, one per node (bash)", ".launch.sh", "text/x-shellscript"),
)


def _engine_exports(plan: Plan, name: str) -> None:
    """The plan for the engines people train with (``pipeplan export``): a download each, or the
    one-line reason an engine cannot express the plan."""
    st.markdown("For other engines (`pipeplan export PLAN --to torchtitan|megatron|launch`):")
    cols = st.columns(len(_ENGINE_EXPORTS))
    stem = re.sub(r"\W", "_", name)
    for col, (target, label, suffix, mime) in zip(cols, _ENGINE_EXPORTS):
        try:
            text = export_text(plan, target, f"{name}.json", name=f"{name}.json", module=f"{stem}_torchtitan")
        except UserError as e:
            col.caption(md(f"{label}: {e}"))
            continue
        col.download_button(label, text, file_name=f"{stem}{suffix}", mime=mime, key=f"dl_{target}")


# -- Run -------------------------------------------------------------------------------------------
def _candidate_file(ctx: Context, plan: Plan) -> Path:
    """Where a candidate is saved to be run: ``ROOT/dashboard-runs/MODEL-SCHEDULE-ppP-HASH/plan.json``
    under the first root (the hash tells candidates apart; the same candidate reuses its folder)."""
    digest = hashlib.sha256(data.plan_json(plan).encode()).hexdigest()[:10]
    model = re.sub(r"[^A-Za-z0-9_.-]+", "-", plan.model_name)[:40].strip(".-") or "model"
    return Path(ctx.roots[0]) / "dashboard-runs" / f"{model}-{plan.schedule}-pp{plan.pp}-{digest}" / "plan.json"


def _run_panel(ctx: Context, plan: Plan, path: str | None) -> None:
    """A Run button for a plan that fits this host: ``pipeplan validate PLAN --json`` in the background,
    a progress bar while it runs, and the Compare view of its report when it is done."""
    st.subheader("Run it here")
    problem = runner.host_problem(plan)
    if problem:
        st.caption(md(problem))
        return
    target = Path(path) if path else _candidate_file(ctx, plan)
    run = runner.running(target)
    busy = run is not None and run.state()[0] == "running"
    st.caption(
        f"{plan.world_size} CPU processes, {runner.STEPS} timed steps: writes "
        f"{md(short_path(str(target.with_suffix('.run.json')), ctx.roots))} and its traces beside the plan "
        f"(replacing those of an earlier run)"
        + ("" if path else f"; the candidate is saved as {md(short_path(str(target), ctx.roots))} first")
    )
    c1, c2 = st.columns(2)
    if c1.button("Run (pipeplan validate)", key="run_plan", disabled=busy, type="primary"):
        if path is None:
            target.parent.mkdir(parents=True, exist_ok=True)
            replace(plan, profile_path=str(Path(ctx.profile_path).resolve())).save(target)
        run = runner.start(target, plan)
        busy = True
    if busy and c2.button("Stop", key="stop_plan"):
        run.stop()
        st.rerun()
    if busy:
        _run_progress(str(target))
    elif run is not None:
        _run_result(run)


def _run_result(run: runner.Run) -> None:
    """A finished run: open its report in Compare (once), or show why it failed."""
    state, frac, line = run.state()
    st.progress(frac, text=line)
    if state == "failed":
        st.error(md(line) + ": the end of its log is below")
        st.code(run.log_tail(), language="text")
    elif state == "done" and not run.opened:
        run.opened = True
        st.session_state[OPEN_REPORT] = str(run.report_path)
        files.find_files.clear()
        st.rerun(scope="app")


@st.fragment(run_every=1.0)
def _run_progress(target: str) -> None:
    """The run's progress bar, polled every second; when the run ends, the whole app reruns."""
    run = runner.running(target)
    if run is None:
        return
    state, frac, line = run.state()
    if state != "running":
        st.rerun(scope="app")
    st.progress(frac, text=line)


def _mesh(plan) -> str:
    """``pp2 x dp4 (fsdp) x tp8``: the plan's parallelism, as titles show it."""
    return f"pp{plan.pp} x dp{plan.layout.dp} ({plan.layout.dp_mode.value}) x tp{plan.layout.tp}"
