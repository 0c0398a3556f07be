"""The pipeplan dashboard (Streamlit): profiles, plans, the pipeline, and real runs.

Reads Profile, Plan and RunReport JSON files only (never executes or unpickles user files).
Run with ``pipeplan dashboard``; folders to scan come after ``--`` as ``--root DIR``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard.data import find_files, plan_candidates, profile_frame
from executor.report import load_report
from planner.plan import load_plan
from profiles.contract import UserError
from profiles.types import load_profile
from simulator.engine import simulate
from simulator.gantt import gantt_figure


def _roots() -> list[Path]:
    p = argparse.ArgumentParser()
    p.add_argument("--root", action="append", default=[])
    args, _ = p.parse_known_args(sys.argv[1:])
    return [Path(r) for r in args.root] or [Path("runs"), Path("profiles")]


def main() -> None:
    st.set_page_config(page_title="pipeplan", layout="wide")
    st.title("pipeplan")
    roots = _roots()
    files = find_files(tuple(str(r) for r in roots))
    if not files["profile"]:
        st.info("No profile found under " + ", ".join(map(str, roots)) + ". Make one with "
                "`pipeplan profile gpt2-demo -o runs/demo/profile.json` (or `make demo`), then reload.")
        return
    profile_path = st.sidebar.selectbox("Profile", files["profile"])
    try:
        profile = load_profile(profile_path)
    except UserError as e:
        st.error(str(e))
        return
    tab_profile, tab_plan, tab_run = st.tabs(["Profile", "Plans & pipeline", "Compare with a run"])
    with tab_profile:
        dtypes = sorted({e.dtype for e in profile.entries})
        dtype = st.selectbox("dtype", dtypes, key="profile_dtype")
        sizes = sorted({e.microbatch_size for e in profile.entries if e.dtype == dtype})
        mbs = st.selectbox("microbatch size", sizes, key="profile_mbs")
        df = profile_frame(profile_path, dtype, mbs)
        st.subheader(f"{profile.model_name}: time per unit (ms)")
        st.bar_chart(df.set_index("unit")[["F ms", "I ms", "W ms"]])
        st.subheader("memory per unit (MiB)")
        st.bar_chart(df.set_index("unit")[["weights MiB", "activations MiB"]])
        st.dataframe(df, hide_index=True)
        c = profile.entry(dtype, mbs).consistency
        st.caption(f"sum of units / whole model: forward {c['forward']:.2f}, backward {c['backward']:.2f}, "
                   f"saved bytes {c['saved_bytes']:.3f}")
    with tab_plan:
        sb = st.sidebar
        devices = sb.number_input("devices", 1, 4096, 2)
        mem_gib = sb.number_input("memory per device (GiB)", 0.01, 1024.0, 4.0)
        per_node = sb.number_input("devices per node", 1, 64, 8)
        schedules = sb.multiselect("schedules", ["1F1B", "GPipe"], ["1F1B", "GPipe"])
        batch = sb.number_input("global batch", 1, 4096, 8)
        if not schedules:
            st.warning("Choose at least one schedule.")
            return
        with st.spinner("solving..."):
            table, error = plan_candidates(profile_path, int(devices), float(mem_gib), int(per_node),
                                           tuple(schedules), int(batch))
        if error:
            st.error(error)
        else:
            st.subheader("candidates")
            st.dataframe(pd.DataFrame(table["rows"]), hide_index=True)
            pick = st.selectbox("show plan", list(range(1, len(table["rows"]) + 1)), key="pick")
            plan_path = table["paths"][pick - 1]
            plan = load_plan(plan_path)
            tl = simulate(plan)
            st.pyplot(gantt_figure(tl, [f"plan {pick}: {plan.schedule} {plan.layout()}"]))
            st.download_button("plan JSON", Path(plan_path).read_text(), file_name="plan.json")
            st.code(plan.torchrun_command("plan.json"), language="bash")
    with tab_run:
        if not files["runreport"]:
            st.info("No run report found: run `pipeplan validate PLAN` (or `make demo`).")
        else:
            rep_path = st.selectbox("run report", files["runreport"])
            rep = load_report(rep_path)
            plan = load_plan(Path(rep_path).parent / Path(rep.plan_path).name)
            tl = simulate(plan)
            st.pyplot(gantt_figure([tl, rep.timeline], ["simulated", "measured"]))
            st.metric("step time (ms)", f"{rep.step_s_median * 1e3:.1f}",
                      f"{rep.error:+.1%} vs predicted" if rep.error is not None else None)


main()
