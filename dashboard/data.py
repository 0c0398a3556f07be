"""Cached, pure data functions behind the dashboard.

Every cached function is keyed on its arguments only and reads no globals: a file is
passed as its path plus a ``stamp`` (modification time and size, see :func:`stamp`)
so an edited file is read again, and the planner settings come in as a frozen
``PlanSettings``. Files are read only through the validated JSON loaders
(``load_profile``, ``load_plan``, ``load_report``); nothing is executed or unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from executor.report import RunReport, load_report
from planner.cluster import Cluster, Job
from planner.plan import Plan, load_plan
from planner.search import plan as make_plans
from profiles.contract import UserError
from profiles.types import DTYPES, Profile, load_profile
from simulator.actions import write_csv
from simulator.costs import Links, StageCost
from simulator.engine import SimInput, simulate
from simulator.schedules import make_schedule
from simulator.timeline import Timeline, trace_events

__all__ = [
    "PlanSettings",
    "Stamp",
    "stamp",
    "find_files",
    "cached_profile",
    "plan_candidates",
    "candidate_timeline",
    "saved_plan",
    "saved_plan_timeline",
    "run_report",
    "whatif_timeline",
    "plan_json",
    "schedule_csv",
    "trace_json",
    "job_supports_recompute",
    "profile_dtypes",
    "pipeline_degrees",
    "TOP",
]

_KINDS = {"pipeplan.profile/1": "profile", "pipeplan.plan/1": "plan", "pipeplan.runreport/1": "runreport"}
TOP = 5  #: candidates shown per solve
Stamp = tuple[int, int]  # (mtime_ns, size): part of every file-reading cache key


def stamp(path: str | Path) -> Stamp:
    """What identifies a file's version for the caches (0, 0 when it is gone)."""
    try:
        s = os.stat(path)
    except OSError:
        return (0, 0)
    return (s.st_mtime_ns, s.st_size)


def profile_dtypes(profile: Profile) -> list[str]:
    """The profile's precisions, fp32 first (the order of ``profiles.types.DTYPES``)."""
    have = {e.dtype for e in profile.entries}
    return [d for d in DTYPES if d in have] + sorted(have - set(DTYPES))


def pipeline_degrees(num_units: int, devices: int) -> list[int]:
    """Pipeline degrees the planner can use: divisors of ``devices`` up to the number of units."""
    return [p for p in range(1, min(num_units, devices) + 1) if devices % p == 0]


def job_supports_recompute() -> bool:
    """Whether the planner's ``Job`` has a ``recompute`` field (the control is shown only then)."""
    return any(f.name == "recompute" for f in dataclasses.fields(Job))


@dataclass(frozen=True)
class PlanSettings:
    """The sidebar's planner inputs: one hashable value, the cache key of a solve."""

    devices: int = 2  #: accelerators in all
    memory_gib: float = 4.0  #: usable memory per device, GiB
    devices_per_node: int = 8  #: devices sharing the fast link
    schedules: tuple[str, ...] = ("1F1B",)  #: schedules the planner may choose from
    dtypes: tuple[str, ...] = ("fp32",)  #: precisions (the planner uses the first today)
    recompute: bool = False  #: allow activation recompute (passed only when ``Job`` has the field)
    global_batch: int = 8  #: samples per optimizer step
    microbatch_size: int | None = None  #: None: the planner chooses among profiled sizes
    pp: tuple[int, ...] = ()  #: allowed pipeline degrees (empty: any that divides the devices)

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 2**30)

    def cluster(self) -> Cluster:
        return Cluster(devices=self.devices, memory_bytes=self.memory_bytes, devices_per_node=self.devices_per_node)

    def job(self) -> Job:
        kw = dict(
            global_batch=self.global_batch,
            schedules=self.schedules,
            dtypes=self.dtypes,
            microbatch_size=self.microbatch_size,
            pp=self.pp,
        )
        if job_supports_recompute():
            kw["recompute"] = self.recompute
        return Job(**kw)


@st.cache_data(ttl=5, show_spinner=False)
def find_files(roots: tuple[str, ...]) -> dict[str, list[str]]:
    """Pipeplan JSON files under ``roots``, by kind (read as JSON only, never executed)."""
    out: dict[str, list[str]] = {k: [] for k in _KINDS.values()}
    for root in roots:
        for path in sorted(Path(root).rglob("*.json")) if Path(root).is_dir() else []:
            try:
                text = path.read_text()
                schema = json.loads(text).get("schema") if '"schema"' in text[:200] else None
            except (OSError, ValueError, AttributeError):
                continue
            if schema in _KINDS:
                out[_KINDS[schema]].append(str(path))
    return out


@st.cache_data(show_spinner=False, max_entries=16)
def cached_profile(path: str, version: Stamp) -> Profile:
    return load_profile(path)


@st.cache_data(show_spinner=False, max_entries=64)
def plan_candidates(
    profile_path: str, version: Stamp, settings: PlanSettings, top: int = TOP
) -> tuple[list[Plan], str | None]:
    """The planner's top plans for ``settings`` (best first), or an error line that says what to change.

    A planner bug is not caught here: it surfaces as an exception, to be fixed in the planner.
    """
    profile = load_profile(profile_path)
    cluster, job = settings.cluster(), settings.job()
    try:
        return make_plans(profile, cluster, job, top=top, profile_path=profile_path), None
    except UserError as e:
        return [], str(e)


@st.cache_data(show_spinner=False, max_entries=128)
def candidate_timeline(profile_path: str, version: Stamp, settings: PlanSettings, index: int) -> Timeline:
    """The simulated timeline of candidate ``index`` (0-based) of that solve."""
    plans, _ = plan_candidates(profile_path, version, settings)
    return simulate(plans[index])


@st.cache_data(show_spinner=False, max_entries=32)
def saved_plan(path: str, version: Stamp) -> tuple[Plan | None, str | None]:
    try:
        return load_plan(path), None
    except UserError as e:
        return None, str(e)


@st.cache_data(show_spinner=False, max_entries=32)
def saved_plan_timeline(path: str, version: Stamp) -> Timeline:
    plan, err = saved_plan(path, version)
    if plan is None:
        raise UserError(err or f"{path}: cannot load")
    return simulate(plan)


@st.cache_data(show_spinner=False, max_entries=16)
def run_report(path: str, version: Stamp) -> tuple[RunReport | None, Plan | None, Timeline | None, str | None]:
    """A RunReport, the plan it ran (looked up beside the report) and that plan's simulated timeline."""
    try:
        rep = load_report(path)
    except UserError as e:
        return None, None, None, str(e)
    here = Path(path).parent
    for cand in (here / Path(rep.plan_path).name, here / rep.plan_path, Path(rep.plan_path)):
        if cand.is_file():
            try:
                plan = load_plan(cand)
                return rep, plan, simulate(plan), None
            except UserError as e:
                return rep, None, None, str(e)
    return rep, None, None, f"{path}: the plan it ran ({rep.plan_path}) is not beside it: only the measured side"


@st.cache_data(show_spinner=False, max_entries=32)
def whatif_timeline(schedule: str, pp: int, microbatches: int, f: float, b: float, comm: float) -> Timeline:
    """Uniform stage costs (like ``pipeplan simulate --schedule``): times in ms, one stage per rank."""
    table = make_schedule(schedule, pp, microbatches)
    cost = StageCost(
        f / 1e3, b / 1e3, b / 2e3, b / 2e3, activation_bytes=2**20, static_bytes=0, output_bytes=1, input_bytes=1
    )
    links = Links(latency_s=comm / 1e3, inter_latency_s=comm / 1e3)
    return simulate(SimInput(table, [cost] * pp, links))


def plan_json(plan: Plan, plan_dir: str | Path | None = None) -> str:
    """The Plan file's text, as ``Plan.save`` writes it, naming the profile by its absolute path so the
    file works wherever it is saved on this machine. ``plan_dir``: the folder of the file the plan was
    loaded from (a stored profile path is relative to it)."""
    prof = Path(plan.profile_path)
    if not prof.is_absolute() and plan_dir is not None and (Path(plan_dir) / prof).exists():
        prof = Path(plan_dir) / prof
    return json.dumps(dataclasses.replace(plan, profile_path=str(prof.resolve())).to_dict(), indent=1)


def schedule_csv(plan: Plan) -> str:
    """The schedule table in torch's CSV form (through ``simulator.actions.write_csv``)."""
    with tempfile.TemporaryDirectory(prefix="pipeplan-dash-") as d:
        return write_csv(plan.table, Path(d) / "schedule.csv").read_text()


def trace_json(tl: Timeline, label: str) -> str:
    """Chrome/Perfetto trace JSON, as ``simulator.timeline.write_trace`` writes it."""
    return json.dumps({"traceEvents": trace_events(tl, label), "displayTimeUnit": "ms"})
