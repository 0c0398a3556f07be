"""The pipeplan dashboard (Streamlit): the model, the plans, the pipeline — predicted and real.

Reads Profile, Plan, RunReport and cluster files only, through the validated loaders (never
executes or unpickles user files), and only inside its folders. Run with ``pipeplan dashboard
[--root DIR]``; the folders to scan arrive after ``--`` as ``--root DIR`` (default ``runs/`` and
``profiles/``). The view is a tab bound to the URL (``?view=Profile|Plan|Pipeline|Compare|Export``),
and so are the profile (a path, as found or relative to its folder, or a model name), the cluster (a
preset such as ``h100:8x8``, or a cluster file in the folders) and the planner's numbers
(``&devices=64&mem=80&batch=128&pp=8&limit=20``); numbers from the URL outside their range are
clamped, with a warning. The planner's defaults are ``pipeplan plan``'s: the cluster the profile
implies (its run folder's calibrated ``cluster.json``, else a node of its device), every valid
tensor-parallel degree, data-parallel mode and recompute mode, and every dtype of the profile.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import streamlit as st

from dashboard import data, files
from dashboard.views import (
    OPEN_REPORT,
    Context,
    md,
    short_path,
    show_compare,
    show_export,
    show_pipeline,
    show_plan,
    show_profile,
)
from planner.cluster import DP_MODE_CHOICES, GRAD_DTYPE_CHOICES, MAX_GLOBAL_BATCH, PRESET_CLUSTERS, Job, preset_cluster
from planner.config import mirrored
from profiles.contract import UserError
from simulator.modes import RECOMPUTE_MODES
from simulator.schedules import CUSTOM, SCHEDULES
from simulator.tensor_parallel import recompute_modes

VIEWS = {
    "Profile": show_profile,
    "Plan": show_plan,
    "Pipeline": show_pipeline,
    "Compare": show_compare,
    "Export": show_export,
}
#: number inputs bound to the URL: key -> (min, max, integer?)
_BOUNDS = {
    "devices": (1, 4096, True),
    "mem": (0.001, 65536.0, False),
    "per_node": (1, 1024, True),
    data.WIDGET_KEYS["global_batch"]: (1, MAX_GLOBAL_BATCH, True),
    "limit": (0.0, 600.0, False),
}
#: the Job fields the sidebar mirrors (their labels and docs): field name -> declaration
_JOB = mirrored(Job)
#: what a new profile re-defaults: the cluster it implies, that cluster's numbers, the profile's dtypes
_FOLLOW_PROFILE = ("cluster", "devices", "mem", "per_node", "dtypes")
_log = logging.getLogger("pipeplan.dashboard")


def _roots() -> list[Path]:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--root", action="append", default=[])
    args, _ = p.parse_known_args(sys.argv[1:])
    return [Path(r) for r in args.root] or [Path("runs"), Path("profiles")]


def _clamp_url_numbers() -> None:
    """A URL number outside its input's range is clamped into it (Streamlit would drop it silently),
    one that is not a number is dropped; either way the sidebar says so."""
    for key, (lo, hi, integer) in _BOUNDS.items():
        if key in st.session_state or key not in st.query_params:
            continue
        raw = st.query_params[key]
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            st.sidebar.warning(f"URL {key}={md(raw[:40])} is not a number: ignored")
            del st.query_params[key]
            continue
        if not lo <= value <= hi:
            st.session_state[key] = min(max(value, lo), hi)
            st.sidebar.warning(f"URL {key}={md(raw[:40])} is outside {lo:g}..{hi:g}: using {st.session_state[key]:g}")


def _cluster_changed(roots: tuple[str, ...]) -> None:
    """A new cluster brings its devices, memory and devices per node into the inputs below it."""
    spec = st.session_state.get("cluster")
    cluster, _ = data.cached_cluster(spec, files.stamp(spec), roots) if spec else (None, None)
    if cluster is not None:
        st.session_state["devices"] = cluster.devices
        st.session_state["mem"] = cluster.memory_bytes / 2**30
        st.session_state["per_node"] = cluster.devices_per_node


def _number(label: str, key: str, default, **kw):
    lo, hi, integer = _BOUNDS[key]
    default = min(max(default, lo), hi)
    out = st.sidebar.number_input(label, lo, hi, default, key=key, bind="query-params", **kw)
    return int(out) if integer else float(out)


def _from_url(key: str, options: list[str], shown: tuple[str, ...], labels=None, extra=None) -> list[str]:
    """Honour ``?key=VALUE`` for a picker whose URL value would otherwise have to be its label: VALUE
    may be an option, its label, its path relative to its folder, or (``extra(VALUE)`` true) a
    value added to the options (a preset like ``h100:8x8``). Unknown values are dropped with a
    warning. Returns the options (with VALUE added when ``extra`` took it)."""
    if key in st.session_state or key not in st.query_params:
        return options
    raw = st.query_params[key]
    label = labels or (lambda o: o)
    match = next(
        (
            o
            for o in options
            if raw in (o, label(o), short_path(o, shown)) or os.path.realpath(raw) == os.path.realpath(o)
        ),
        None,
    )
    if match is None and extra is not None and extra(raw):
        options, match = [*options, raw], raw
    if match is None:
        st.sidebar.warning(f"URL {key}={md(raw[:60])} names nothing found in the folders: ignored")
        del st.query_params[key]
        return options
    st.session_state[key] = match
    return options


def _is_preset(spec: str) -> bool:
    try:
        return preset_cluster(spec) is not None
    except UserError:
        return False


def _follow_profile() -> None:
    """A new profile brings the cluster it implies (as ``pipeplan plan`` without ``--cluster``) and
    its own dtypes (all of them, as ``pipeplan plan`` without ``--dtype``)."""
    for key in _FOLLOW_PROFILE:
        st.session_state.pop(key, None)
        if key in st.query_params:
            del st.query_params[key]


def _cluster(ctx_files: dict[str, list[str]], roots: tuple[str, ...], shown: tuple[str, ...], default: str):
    sb = st.sidebar
    options = [*PRESET_CLUSTERS, *ctx_files["cluster"]]
    if default not in options:
        options.append(default)

    def label(o: str) -> str:
        return f"{o} (preset)" if o in PRESET_CLUSTERS or _is_preset(o) else short_path(o, shown)

    options = _from_url("cluster", options, shown, label, _is_preset)
    current = st.session_state.get("cluster")
    if current is not None and current not in options:  # a preset from the URL, kept across reruns
        options.append(current)
    spec = sb.selectbox(
        "cluster",
        options,
        index=None if "cluster" in st.session_state else options.index(default),
        key="cluster",
        bind="query-params",
        format_func=label,
        on_change=_cluster_changed,
        args=(roots,),
        help="links, latencies and calibrated overheads: a preset (node type, or NODE:NODES[xGPUS]), or a "
        "cluster file found in the folders (`pipeplan calibrate -o runs/cluster.json`, or YAML with the same "
        "fields); by default the profile's run folder's calibrated cluster.json, else a node of the profile's "
        "device; choosing one fills in its devices and memory below",
    )
    spec = spec or default
    cluster, err = data.cached_cluster(spec, files.stamp(spec), roots)
    if cluster is None:
        sb.error(md(err))
        return PRESET_CLUSTERS[data.DEFAULT_CLUSTER]
    return cluster


def _settings(profile_path: str, profile, found: dict[str, list[str]], roots: tuple[str, ...], shown: tuple[str, ...]):
    """The planner controls in the sidebar, as one hashable value (the numbers also live in the URL);
    their defaults are ``pipeplan plan``'s."""
    sb = st.sidebar
    sb.header("Plan settings")
    base = _cluster(found, roots, shown, data.default_cluster(profile_path, profile, found["cluster"]))
    _clamp_url_numbers()
    devices = _number("devices", "devices", base.devices, help="devices in all (replaces the cluster's)")
    mem = _number(
        "memory per device (GiB)",
        "mem",
        base.memory_bytes / 2**30,
        step=0.5,
        format="%.3f",
        help="usable memory per device (replaces the cluster's)",
    )
    per_node = _number(
        "devices per node",
        "per_node",
        base.devices_per_node,
        help="devices that share the cluster's intra-node link; the rest talk over its inter-node link",
    )
    job = _job_settings(profile, devices, per_node)
    limit = _number(
        "search time limit (s per MILP, 0: none)",
        "limit",
        data.DEFAULT_TIME_LIMIT,
        step=1.0,
        format="%.1f",
        help="a wall-clock limit for each candidate's MILP (pipeplan plan --time-limit); by default none: "
        "the search is bounded by work, so the same settings give the same plans",
    )
    return data.PlanSettings(
        devices=devices, memory_gib=mem, devices_per_node=per_node, time_limit=limit, base=base, job=job
    )


def _job_settings(profile, devices: int, per_node: int) -> Job:
    """The sidebar's inputs for the Job fields it mirrors (``mirrored(Job)``), each labelled and
    explained by the field's own declaration (``planner.cluster.Job``); the others at their defaults."""
    sb, job = st.sidebar, _JOB

    def key(name: str) -> str:
        return data.WIDGET_KEYS.get(name, name)

    def pick(name: str, options: list, default: list, **kw) -> list:
        return sb.multiselect(job[name].label, options, default, key=key(name), help=job[name].doc, **kw)

    # Custom: the planner's family of unequal placements, slower to search: not chosen by default
    schedules = pick("schedules", [*SCHEDULES, CUSTOM.name], list(SCHEDULES))
    dtypes = data.profile_dtypes(profile)
    if not set(st.session_state.get("dtypes", dtypes)) <= set(dtypes):  # another profile's choice
        del st.session_state["dtypes"]
    chosen_dtypes = pick("dtypes", dtypes, dtypes) or dtypes  # default: all of them, as pipeplan plan
    recompute = pick("recompute", list(RECOMPUTE_MODES), list(recompute_modes(profile.model_config)))
    tp_options = data.tp_choices(profile, devices, per_node)
    tp = pick("tp", tp_options, tp_options)
    dp_modes = pick("dp_modes", list(DP_MODE_CHOICES), list(DP_MODE_CHOICES))
    grads = job["grad_dtype"]
    grad_dtype = sb.selectbox(grads.label, list(GRAD_DTYPE_CHOICES), key=key("grad_dtype"), help=grads.doc)
    gb = job["global_batch"]
    batch = _number(gb.label, key("global_batch"), Job().global_batch, help=gb.doc)
    mbs = sb.selectbox(
        job["microbatch_size"].label,
        [None, *data.common_sizes(profile, chosen_dtypes)],
        key=key("microbatch_size"),
        format_func=lambda v: "planner chooses" if v is None else str(v),
        help=job["microbatch_size"].doc + "; the sizes profiled in every chosen dtype",
    )
    pp = pick(
        "pp",
        data.pipeline_degrees(profile.num_units, devices),
        [],
        bind="query-params",
        placeholder="any",
    )
    return Job(
        schedules=tuple(schedules),
        dtypes=tuple(chosen_dtypes),
        recompute=tuple(recompute),
        tp=tuple(sorted(t for t in tp if t in tp_options)),
        dp_modes=tuple(dp_modes),
        grad_dtype=grad_dtype,
        global_batch=batch,
        microbatch_size=mbs,
        pp=tuple(sorted(pp)),
    )


def _pick_profile(found: dict[str, list[str]], roots: tuple[str, ...], shown: tuple[str, ...]) -> str:
    """The profile picker: ``model · device · dtypes`` per file (its path when two read the same), the first
    readable profile by default."""
    paths = found["profile"]
    labels = {p: data.profile_label(p, files.stamp(p), roots) for p in paths}
    seen: dict[str, int] = {}
    for label in labels.values():
        seen[label] = seen.get(label, 0) + 1
    shown_label = {p: lab if seen[lab] == 1 else f"{lab} · {short_path(p, shown)}" for p, lab in labels.items()}
    default = next((i for i, p in enumerate(paths) if not labels[p].endswith("(cannot be read)")), 0)
    _from_url("profile", paths, shown, shown_label.get, _model_named(paths, labels))
    want = st.session_state.get("profile")
    if want is not None and want not in paths:  # a model name from the URL: its first profile
        named = [p for p in paths if labels[p].split(" · ")[0] == want]
        st.session_state.pop("profile")
        if named:
            st.session_state["profile"] = named[0]
    return st.sidebar.selectbox(
        "Profile",
        paths,
        index=None if "profile" in st.session_state else default,
        key="profile",
        bind="query-params",
        format_func=shown_label.get,
        on_change=_follow_profile,
    )


def _model_named(paths: list[str], labels: dict[str, str]):
    """``?profile=MODEL``: true when a profile of that model name is among ``paths``."""
    return lambda raw: any(labels[p].split(" · ")[0] == raw for p in paths)


def _open_report(found: dict[str, list[str]]) -> None:
    """After a run from the Export view: switch to Compare with its report chosen."""
    want = st.session_state.pop(OPEN_REPORT, None)
    if not want:
        return
    match = next((p for p in found["runreport"] if os.path.realpath(p) == os.path.realpath(want)), None)
    if match:
        st.session_state["compare_report"] = match
        st.session_state["view"] = "Compare"


def main() -> None:
    st.set_page_config(page_title="pipeplan", layout="wide")
    st.title("pipeplan")
    shown = tuple(str(r) for r in _roots())
    roots = files.resolve_roots(shown)
    found = files.find_files(shown)
    for note in found["notes"][:5]:
        st.sidebar.caption(md(note))
    if not found["profile"]:
        st.info(
            "No profile found under " + ", ".join(f"`{md(r)}`" for r in shown) + ".\n\n"
            "Make one, then reload this page:\n\n"
            "```bash\npipeplan profile gpt2-demo -o runs/demo/profile.json\n```\n\n"
            "(or `make demo`, which also plans, simulates and runs it), or start the dashboard on another "
            "folder: `pipeplan dashboard --root DIR`."
        )
        return
    profile_path = _pick_profile(found, roots, shown)
    version = files.stamp(profile_path)
    profile, err = data.cached_profile(profile_path, version, roots)
    if profile is None:
        st.error(md(err))
        return
    ctx = Context(
        profile_path, version, profile, _settings(profile_path, profile, found, roots, shown), found, shown, roots
    )
    _open_report(found)
    tabs = st.tabs(list(VIEWS), key="view", bind="query-params", on_change="rerun")
    for (name, show), tab in zip(VIEWS.items(), tabs):
        if tab.open:
            with tab:
                _show(name, show, ctx)


def _show(name: str, show, ctx: Context) -> None:
    """One view; a fault a crafted file provokes ends in an error panel for that view, not a traceback."""
    try:
        show(ctx)
    except UserError as e:
        st.error(md(str(e).splitlines()[0] if str(e) else type(e).__name__))
    except Exception as e:  # noqa: BLE001 - the panel names the fault; the log keeps the traceback
        _log.exception("the %s view failed", name)
        st.error(md(f"the {name} view failed: {type(e).__name__}: {e}"))


main()
