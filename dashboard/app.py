"""The pipeplan dashboard (Streamlit): the model, the plans, the pipeline — predicted and real.

Reads Profile, Plan and RunReport JSON files only, through the validated loaders (never
executes or unpickles user files). Run with ``pipeplan dashboard [--root DIR]``; the
folders to scan arrive after ``--`` as ``--root DIR`` (default ``runs/`` and ``profiles/``).
The view is a tab bound to the URL (``?view=Profile|Plan|Pipeline|Compare|Export``), and so are
the profile and the planner's numbers (``&profile=PATH&devices=64&mem=80&batch=128&pp=8``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import streamlit as st

from dashboard import data
from dashboard.views import Context, show_compare, show_export, show_pipeline, show_plan, show_profile
from profiles.contract import UserError
from simulator.schedules import CUSTOM, SCHEDULES

VIEWS = {
    "Profile": show_profile,
    "Plan": show_plan,
    "Pipeline": show_pipeline,
    "Compare": show_compare,
    "Export": show_export,
}


def _roots() -> list[Path]:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--root", action="append", default=[])
    args, _ = p.parse_known_args(sys.argv[1:])
    return [Path(r) for r in args.root] or [Path("runs"), Path("profiles")]


def _settings(profile) -> data.PlanSettings:
    """The planner controls in the sidebar, as one hashable value (the numbers also live in the URL)."""
    sb = st.sidebar
    sb.header("Plan settings")
    devices = int(sb.number_input("devices", 1, 4096, 2, key="devices", bind="query-params"))
    mem = float(
        sb.number_input(
            "memory per device (GiB)", 0.001, 4096.0, 4.0, step=0.5, format="%.3f", key="mem", bind="query-params"
        )
    )
    per_node = int(sb.number_input("devices per node", 1, 1024, 8, key="per_node", bind="query-params"))
    known = [*SCHEDULES, CUSTOM.name]  # Custom: the planner's family of unequal placements
    schedules = sb.multiselect(
        "schedules", known, [s for s in ("1F1B", "GPipe") if s in known] or known[:1], key="schedules"
    )
    dtypes = data.profile_dtypes(profile)
    chosen_dtypes = (
        sb.multiselect(
            "dtypes",
            dtypes,
            dtypes[:1],
            key="dtypes",
            help="the profile's precisions; the planner uses the first chosen",
        )
        or dtypes[:1]
    )
    recompute = sb.checkbox("allow recompute", False, key="recompute") if data.job_supports_recompute() else False
    batch = int(sb.number_input("global batch", 1, 1 << 20, 8, key="batch", bind="query-params"))
    sizes = sorted({e.microbatch_size for e in profile.entries if e.dtype == chosen_dtypes[0]})
    mbs = sb.selectbox(
        "microbatch size", [None, *sizes], key="mbs", format_func=lambda v: "planner chooses" if v is None else str(v)
    )
    pp = sb.multiselect(
        "pipeline degrees",
        data.pipeline_degrees(profile.num_units, devices),
        [],
        key="pp",
        bind="query-params",
        placeholder="any",
        help="limit the search (a 64-device search over every degree can take a minute the first time)",
    )
    return data.PlanSettings(
        devices, mem, per_node, tuple(schedules), tuple(chosen_dtypes), bool(recompute), batch, mbs, tuple(sorted(pp))
    )


def main() -> None:
    st.set_page_config(page_title="pipeplan", layout="wide")
    st.title("pipeplan")
    roots = _roots()
    files = data.find_files(tuple(str(r) for r in roots))
    if not files["profile"]:
        st.info(
            "No profile found under " + ", ".join(f"`{r}`" for r in roots) + ".\n\n"
            "Make one, then reload this page:\n\n"
            "```bash\npipeplan profile gpt2-demo -o runs/demo/profile.json\n```\n\n"
            "(or `make demo`, which also plans, simulates and runs it), or start the dashboard on another "
            "folder: `pipeplan dashboard --root DIR`."
        )
        return
    profile_path = st.sidebar.selectbox("Profile", files["profile"], key="profile", bind="query-params")
    version = data.stamp(profile_path)
    try:
        profile = data.cached_profile(profile_path, version)
    except UserError as e:
        st.error(str(e))
        return
    ctx = Context(profile_path, version, profile, _settings(profile), files)
    tabs = st.tabs(list(VIEWS), key="view", bind="query-params", on_change="rerun")
    for tab, show in zip(tabs, VIEWS.values()):
        if tab.open:
            with tab:
                show(ctx)


main()
