"""Cached, pure data functions behind the dashboard.

Every cached function is keyed on its arguments only and reads no globals: a file is
passed as its path plus a ``stamp`` (modification time and size, see :func:`files.stamp`)
so an edited file is read again, the folders it may follow paths into come in as
``roots``, and the planner settings as a frozen ``PlanSettings``. Files are read only
through the validated JSON loaders (``load_profile``, ``load_plan``, ``load_report``,
``load_cluster``); nothing is executed or unpickled. A file that cannot be read comes
back as an error line (``files.guarded``), never as an exception.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from executor.report import RunReport, load_report
from planner.batching import fewest_microbatches
from planner.cluster import (
    MAX_MICROBATCHES,
    PRESET_CLUSTERS,
    Cluster,
    Job,
    cluster_for_device,
    load_cluster,
    preset_cluster,
)
from planner.plan import Plan, distinct_plans, load_plan
from planner.pricing import profile_tp_degrees
from planner.search import plan as make_plans
from profiles.contract import UserError
from profiles.types import DTYPES, Profile, load_profile
from simulator.actions import write_csv
from simulator.costs import Links, StageCost
from simulator.engine import SimInput, simulate
from simulator.schedules import make_schedule, schedule_spec
from simulator.timeline import Timeline, trace_events

from .files import Stamp, check_file, find_files, guarded, stamp, within

__all__ = [
    "PlanSettings",
    "Stamp",
    "stamp",
    "find_files",
    "cached_profile",
    "profile_label",
    "cached_cluster",
    "plan_candidates",
    "candidate_timeline",
    "saved_plan",
    "saved_plan_timeline",
    "run_report",
    "whatif_timeline",
    "plan_json",
    "schedule_csv",
    "trace_json",
    "tp_choices",
    "profile_dtypes",
    "common_sizes",
    "pipeline_degrees",
    "settings_problem",
    "TOP",
    "MAX_MICROBATCHES",
    "MAX_WHATIF_ACTIONS",
    "WIDGET_KEYS",
    "DEFAULT_CLUSTER",
    "DEFAULT_TIME_LIMIT",
    "default_cluster",
]

TOP = 5  #: candidates shown per solve
#: a mirrored Job field's sidebar key (and URL parameter) where it is not the field's name
WIDGET_KEYS = {"global_batch": "batch", "microbatch_size": "mbs"}
MAX_WHATIF_ACTIONS = 200_000  #: most compute actions in a what-if table (stages x microbatches x kinds)
DEFAULT_CLUSTER = "cpu-local"  #: the cluster of a profile whose device names no preset
DEFAULT_TIME_LIMIT = 0.0  #: seconds per MILP; 0: none, as ``pipeplan plan`` without ``--time-limit``
CALIBRATED = "cluster.json"  #: what ``pipeplan calibrate`` writes beside a run's profile (``make demo``)


def default_cluster(profile_path: str, profile: Profile, cluster_files: list[str]) -> str:
    """The cluster ``pipeplan plan`` would assume for this profile: the calibrated ``cluster.json``
    of its run folder when there is one, else a node of the profile's device
    (``planner.cluster.cluster_for_device``: ``h100`` for an h100 profile, ``cpu-local`` for CPU)."""
    beside = Path(profile_path).parent / CALIBRATED
    match = next((f for f in cluster_files if Path(f) == beside), None)
    if match is not None:
        return match
    try:
        return cluster_for_device(profile.device_kind, profile.device_name).name
    except UserError:
        return DEFAULT_CLUSTER


def profile_dtypes(profile: Profile) -> list[str]:
    """The profile's precisions, fp32 first (the order of ``profiles.types.DTYPES``)."""
    have = {e.dtype for e in profile.entries}
    return [d for d in DTYPES if d in have] + sorted(have - set(DTYPES))


def common_sizes(profile: Profile, dtypes: tuple[str, ...] | list[str]) -> list[int]:
    """Microbatch sizes profiled in every one of ``dtypes`` (the sizes the planner can use for them)."""
    sizes = [{e.microbatch_size for e in profile.entries if e.dtype == d} for d in dtypes]
    return sorted(set.intersection(*sizes)) if sizes else []


def pipeline_degrees(num_units: int, devices: int) -> list[int]:
    """Pipeline degrees the planner can use: divisors of ``devices`` up to the number of units."""
    return [p for p in range(1, min(num_units, devices) + 1) if devices % p == 0]


def tp_choices(profile: Profile, devices: int, devices_per_node: int) -> list[int]:
    """Tensor-parallel degrees the planner accepts for this model on these devices: divisors of the
    devices per node that divide the attention heads and key/value heads (the search's own rule)."""
    within = min(devices, devices_per_node)
    return [t for t in profile_tp_degrees(profile, within) if devices % t == 0]


@dataclass(frozen=True)
class PlanSettings:
    """The sidebar's planner inputs: one hashable value, the cache key of a solve."""

    devices: int = 2  #: accelerators in all
    memory_gib: float = 8.0  #: usable memory per device, GiB
    devices_per_node: int = 2  #: devices sharing the fast (intra-node) link
    #: the job: the fields the sidebar mirrors (``planner.config.mirrored(Job)``) as chosen there,
    #: the others at their defaults
    job: Job = field(default_factory=Job)
    time_limit: float = DEFAULT_TIME_LIMIT  #: wall seconds per MILP (``pipeplan plan --time-limit``); 0: none
    #: links, latencies and calibrated overheads: a preset or a cluster file; devices, memory and
    #: devices per node above replace the file's
    base: Cluster = field(default_factory=lambda: PRESET_CLUSTERS[DEFAULT_CLUSTER])

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 2**30)

    def cluster(self) -> Cluster:
        return dataclasses.replace(
            self.base, devices=self.devices, memory_bytes=self.memory_bytes, devices_per_node=self.devices_per_node
        )


def settings_problem(settings: PlanSettings, profile: Profile) -> str | None:
    """Why the dashboard will not solve ``settings`` (one line that says what to change), or None.

    The settings arrive from the URL too, so a link like ``?devices=1&batch=1048576`` must not
    start a search over a million microbatches: as ``pipeplan plan``, a job whose every way of
    cutting the batch makes more than ``MAX_MICROBATCHES`` microbatches per replica
    (``planner.batching.fewest_microbatches``) is refused, and the search leaves out the
    candidates that would make more."""
    s, job = settings, settings.job
    if not job.schedules:
        return "Choose at least one schedule in the sidebar."
    if not job.recompute or not job.tp or not job.dp_modes:
        return "Choose at least one recompute mode, tensor-parallel degree and data-parallel mode in the sidebar."
    sizes = common_sizes(profile, job.dtypes)
    if not sizes:
        return f"The profile has no microbatch size measured in all of {', '.join(job.dtypes)}: choose fewer dtypes."
    degrees = [p for p in (job.pp or pipeline_degrees(profile.num_units, s.devices)) if s.devices % p == 0]
    if not degrees:
        return f"No pipeline degree divides {s.devices} devices: choose other pipeline degrees or devices."
    chosen = [job.microbatch_size] if job.microbatch_size else sizes
    fewest = fewest_microbatches(job.global_batch, s.devices, chosen)
    if fewest > MAX_MICROBATCHES:
        return (
            f"global batch {job.global_batch} on {s.devices} device(s) in microbatches of at most {max(chosen)} makes "
            f"at least {fewest:.0f} microbatches per replica; the planner plans at most {MAX_MICROBATCHES}: lower "
            f"the global batch, raise the microbatch size or the devices, or run `pipeplan plan` for this job"
        )
    return None


# -- files ---------------------------------------------------------------------------------------
def _load_profile(path: str, roots: tuple[str, ...]) -> Profile:
    return load_profile(check_file(path, roots, "profile"))


@st.cache_data(show_spinner=False, max_entries=16)
def cached_profile(path: str, version: Stamp, roots: tuple[str, ...]) -> tuple[Profile | None, str | None]:
    """The Profile at ``path`` (inside ``roots``), or an error line."""
    return guarded(str(path), _load_profile, path, roots)


@st.cache_data(show_spinner=False, max_entries=256)
def profile_label(path: str, version: Stamp, roots: tuple[str, ...]) -> str:
    """What the profile picker shows: ``model · device · dtypes`` (the file name when it cannot be read)."""
    prof, err = cached_profile(path, version, roots)
    if prof is None:
        return f"{Path(path).name} (cannot be read)"
    return f"{prof.model_name} · {prof.device_name} · {', '.join(profile_dtypes(prof))}"


def _load_cluster(spec: str, roots: tuple[str, ...]) -> Cluster:
    preset = preset_cluster(spec)  # h100, h100:8, h100:8x4, the old names
    if preset is not None:
        return preset
    return load_cluster(check_file(spec, roots, "cluster"))


@st.cache_data(show_spinner=False, max_entries=64)
def cached_cluster(spec: str, version: Stamp, roots: tuple[str, ...]) -> tuple[Cluster | None, str | None]:
    """A preset by name or a cluster file (JSON from ``pipeplan calibrate``, or YAML) inside ``roots``."""
    return guarded(str(spec), _load_cluster, spec, roots)


def _load_plan(path: str, roots: tuple[str, ...]) -> Plan:
    """A plan inside ``roots`` whose profile is inside them too (else a UserError naming the field)."""
    plan = load_plan(check_file(path, roots, "plan"), with_profile=False)
    prof = plan.profile_file(Path(path).parent)
    if prof.exists() and not within(prof, roots):
        raise UserError(
            f"{path}: field profile.path: {plan.profile_path} is outside the dashboard's folders: keep the "
            f"profile beside the plan"
        )
    if prof.exists():
        check_file(prof, roots, "profile")
    return load_plan(path)


@st.cache_data(show_spinner=False, max_entries=32)
def saved_plan(path: str, version: Stamp, roots: tuple[str, ...]) -> tuple[Plan | None, str | None]:
    return guarded(str(path), _load_plan, path, roots)


@st.cache_data(show_spinner=False, max_entries=32)
def saved_plan_timeline(path: str, version: Stamp, roots: tuple[str, ...]) -> tuple[Timeline | None, str | None]:
    plan, err = saved_plan(path, version, roots)
    if plan is None:
        return None, err
    return guarded(f"{path}: simulating", simulate, plan)


def _report_and_plan(path: str, roots: tuple[str, ...]) -> tuple[RunReport, Plan | None, Timeline | None, str | None]:
    rep = load_report(check_file(path, roots, "run report"))
    here = Path(path).parent
    named = Path(rep.plan_path)
    outside = None
    for cand in (here / named.name, here / named, named):
        if not cand.is_file():
            continue
        if not within(cand, roots):
            outside = cand
            continue
        plan, err = guarded(str(cand), _load_plan, str(cand), roots)
        if plan is None:
            return rep, None, None, err
        tl, err = guarded(f"{cand}: simulating", simulate, plan)
        return rep, plan, tl, err
    where = "is outside the dashboard's folders" if outside is not None else "is not beside it"
    return rep, None, None, f"{path}: the plan it ran ({rep.plan_path}) {where}: only the measured side"


@st.cache_data(show_spinner=False, max_entries=16)
def run_report(
    path: str, version: Stamp, roots: tuple[str, ...]
) -> tuple[RunReport | None, Plan | None, Timeline | None, str | None]:
    """A RunReport, the plan it ran (looked up beside the report, inside ``roots``) and that plan's
    simulated timeline; the error line says what is missing."""
    out, err = guarded(str(path), _report_and_plan, path, roots)
    return out if out is not None else (None, None, None, err)


# -- planner and simulator -----------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=64)
def plan_candidates(
    profile_path: str, version: Stamp, roots: tuple[str, ...], settings: PlanSettings, top: int = TOP
) -> tuple[list[Plan], str | None]:
    """The planner's top plans for ``settings`` (best first, each distinct: ``distinct_plans``), or an
    error line that says what to change.

    A planner bug is not caught here: it surfaces as an exception (the view shows it as an error
    panel), to be fixed in the planner.
    """
    profile, err = cached_profile(profile_path, version, roots)
    if profile is None:
        return [], err
    problem = settings_problem(settings, profile)
    if problem:
        return [], problem
    try:
        plans = make_plans(
            profile,
            settings.cluster(),
            settings.job,
            top=top,
            profile_path=profile_path,
            time_limit=settings.time_limit or None,
        )
        return distinct_plans(plans), None
    except UserError as e:
        return [], str(e)


@st.cache_data(show_spinner=False, max_entries=128)
def candidate_timeline(
    profile_path: str, version: Stamp, roots: tuple[str, ...], settings: PlanSettings, index: int
) -> Timeline:
    """The simulated timeline of candidate ``index`` (0-based) of that solve."""
    plans, _ = plan_candidates(profile_path, version, roots, settings)
    return simulate(plans[index])


@st.cache_data(show_spinner=False, max_entries=32)
def whatif_timeline(
    schedule: str, pp: int, microbatches: int, virtual: int, *, f: float, b: float, comm: float
) -> tuple[Timeline | None, str | None]:
    """Uniform stage costs (like ``pipeplan simulate --schedule``), ``virtual`` stages per rank as the
    schedule places them (ZBV and DualPipeV: two, in a V). Times are in ms per microbatch *per rank*:
    each of a rank's ``virtual`` stages takes 1/virtual of them, so schedules compare on the same model
    (the CLI's ``--f``/``--b`` are per stage). Returns an error line instead when the schedule does not
    allow these numbers."""
    spec = schedule_spec(schedule)
    stages = spec.num_stages(pp, virtual)
    kinds = 3 if spec.split_backward else 2
    if stages * microbatches * kinds > MAX_WHATIF_ACTIONS:
        return None, (
            f"{stages} stages x {microbatches} microbatches is more than the what-if draws "
            f"({MAX_WHATIF_ACTIONS:,} actions): lower the ranks or the microbatches"
        )
    try:
        table = make_schedule(schedule, pp, microbatches, virtual)
    except UserError as e:
        return None, str(e).splitlines()[0]
    ms = 1e3 * virtual  # ms per rank -> seconds per stage
    cost = StageCost(
        f / ms, b / ms, b / 2 / ms, b / 2 / ms, activation_bytes=2**20, static_bytes=0, output_bytes=1, input_bytes=1
    )
    links = Links(latency_s=comm / 1e3, inter_latency_s=comm / 1e3)
    return simulate(SimInput(table, [cost] * stages, links)), None


# -- exports -------------------------------------------------------------------------------------
def plan_json(plan: Plan, plan_dir: str | Path | None = None) -> str:
    """The Plan file's text, as ``Plan.save`` writes it, naming the profile by its absolute path so the
    file works wherever it is saved on this machine. ``plan_dir``: the folder of the file the plan was
    loaded from (a stored profile path is relative to it)."""
    prof = plan.profile_file(plan_dir)
    return json.dumps(dataclasses.replace(plan, profile_path=str(prof.resolve())).to_dict(), indent=1)


def schedule_csv(plan: Plan) -> str:
    """The schedule table in torch's CSV form (through ``simulator.actions.write_csv``)."""
    with tempfile.TemporaryDirectory(prefix="pipeplan-dash-") as d:
        return write_csv(plan.table, Path(d) / "schedule.csv").read_text()


def trace_json(tl: Timeline, label: str) -> str:
    """Chrome/Perfetto trace JSON, as ``simulator.timeline.write_trace`` writes it."""
    return json.dumps({"traceEvents": trace_events(tl, label), "displayTimeUnit": "ms"})
