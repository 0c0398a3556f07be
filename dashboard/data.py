"""Cached, pure data functions behind the dashboard (keyed on their inputs only)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from planner.cluster import Cluster, Job
from planner.search import plan as make_plans
from profiles.contract import UserError
from profiles.types import load_profile

__all__ = ["find_files", "profile_frame", "plan_candidates"]

_KINDS = {"pipeplan.profile/1": "profile", "pipeplan.plan/1": "plan", "pipeplan.runreport/1": "runreport"}


@st.cache_data(ttl=5)
def find_files(roots: tuple[str, ...]) -> dict[str, list[str]]:
    """Pipeplan JSON files under ``roots``, by kind (read as JSON only)."""
    out: dict[str, list[str]] = {k: [] for k in _KINDS.values()}
    for root in roots:
        for path in sorted(Path(root).rglob("*.json")) if Path(root).is_dir() else []:
            try:
                with open(path) as f:
                    head = f.read(200)
                schema = json.loads(path.read_text()).get("schema") if '"schema"' in head else None
            except (OSError, ValueError, AttributeError):
                continue
            if schema in _KINDS:
                out[_KINDS[schema]].append(str(path))
    return out


@st.cache_data
def profile_frame(path: str, dtype: str, microbatch_size: int) -> pd.DataFrame:
    e = load_profile(path).entry(dtype, microbatch_size)
    return pd.DataFrame([{
        "unit": f"{i:02d} {u.name}", "F ms": u.forward_s * 1e3, "B ms": u.backward_s * 1e3,
        "I ms": u.backward_input_s * 1e3, "W ms": u.backward_weight_s * 1e3,
        "weights MiB": u.param_bytes / 2**20, "activations MiB": u.saved_bytes / 2**20,
        "params": u.params, "GFLOP": u.forward_flops / 1e9} for i, u in enumerate(e.units)])


@st.cache_data(show_spinner=False)
def plan_candidates(profile_path: str, devices: int, mem_gib: float, per_node: int, schedules: tuple[str, ...],
                    global_batch: int) -> tuple[dict, str | None]:
    """Plan with these settings; rows for the table and the paths of the saved plans."""
    profile = load_profile(profile_path)
    cluster = Cluster(devices=devices, memory_bytes=int(mem_gib * 2**30), devices_per_node=per_node)
    job = Job(global_batch=global_batch, schedules=schedules)
    try:
        plans = make_plans(profile, cluster, job, top=5, profile_path=profile_path)
    except UserError as e:
        return {}, str(e)
    out_dir = Path(tempfile.mkdtemp(prefix="pipeplan-dash-"))
    rows, paths = [], []
    for i, p in enumerate(plans, 1):
        path = out_dir / f"plan{i}.json"
        p.save(path)
        paths.append(str(path))
        base = next((b for b in p.baselines if b["name"] == "even-1F1B"), None)
        rows.append({"#": i, "schedule": p.schedule, "pp": p.pp, "dp": p.dp, "microbatches": p.microbatches,
                     "step ms": round(p.predicted.step_s * 1e3, 2),
                     "bubble %": round(100 * sum(p.predicted.bubble_fraction) / len(p.predicted.bubble_fraction), 1),
                     "peak GiB": round(max(p.predicted.peak_bytes) / 2**30, 3), "cap GiB": mem_gib,
                     "vs even": round(base["speedup"], 3) if base else None, "layout": p.layout()})
    return {"rows": rows, "paths": paths}, None
