"""The Plan contract: how a model is cut, placed and scheduled, and what that should do."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from profiles.contract import (
    ContractError,
    Fields,
    Reader,
    read_declared,
    read_json,
    reads,
    schema_id,
    sha256_of,
    write_json,
)
from profiles.types import DTYPES, Profile, load_profile
from simulator.actions import MAX_TABLE_ACTIONS, Table, stage_ranks, table_from_text, table_to_text, validate_table
from simulator.costs import CostModel, DPMode, Layout, Option, Recompute
from simulator.engine import SimInput
from simulator.schedules import canonical_name, schedule_spec

from .cluster import MAX_DEVICES, MAX_GLOBAL_BATCH, Cluster, Job
from .figures import figures
from .pricing import cost_model

__all__ = ["StagePlan", "Prediction", "Plan", "load_plan", "distinct_plans"]

KIND, MAJOR = "plan", 2
#: plan/1 files (no tp, dp_mode; boolean recompute) still load, as tp 1, ddp, none/full
READS = (2, 1)
#: unit kinds shown by their own letter in ``Plan.pipeline_layout`` (Megatron's pipeline-layout letters)
_LAYOUT_CODES = {"embedding": "E", "head": "L"}


@dataclass(frozen=True)
class StagePlan:
    index: int
    first: int  # first unit (inclusive)
    end: int  # last unit + 1
    rank: int  # pipeline rank that runs it
    dtype: str = "fp32"
    recompute: Recompute = Recompute.NONE

    @property
    def option(self) -> Option:
        """How the stage runs, as the cost layer prices it."""
        return Option(self.dtype, self.recompute)


@dataclass(frozen=True)
class Prediction:
    step_s: float
    bubble_fraction: tuple[float, ...]
    peak_bytes: tuple[int, ...]
    throughput: float = 0.0  # samples per second (all replicas)
    latency_s: float = 0.0  # one microbatch through every stage of an idle pipeline (forwards and sends)


# -- the file's readers, one per stored field (Plan declares which reads what) ----------------
def _read_layout(f: Fields, _: Mapping[str, Any]) -> Layout:
    """dp, tp, dp mode, sequence parallelism (on only with tp > 1), gradient-reduce overlap and
    fp32 gradients; plan/1 had tp 1 and ddp."""
    dp = f.int("dp", min=1, max=MAX_DEVICES)
    tp = 1 if _v1(f) else f.int("tp", min=1, max=MAX_DEVICES, default=1)
    dp_mode = DPMode(f.str("dp_mode", choices=[m.value for m in DPMode], default="ddp"))
    sp = f.bool("sequence_parallel", default=False)
    overlap = f.bool("overlap_grad_reduce", default=False)
    fp32 = f.bool("grads_fp32", default=False)
    return Layout(
        tp=tp, dp=dp, dp_mode=dp_mode, sequence_parallel=sp and tp > 1, overlap_grad_reduce=overlap, grads_fp32=fp32
    )


def _read_stages(f: Fields, _: Mapping[str, Any]) -> tuple[StagePlan, ...]:
    """The stages: consecutive unit ranges from unit 0, indexed 0, 1, 2, ... in order."""
    stages = []
    for s in f.objs("stages", nonempty=True):
        units = s.list("units")
        if (
            len(units) != 2
            or not all(isinstance(u, int) and not isinstance(u, bool) for u in units)
            or not 0 <= units[0] < units[1]
        ):
            raise s.fail("units", f"expected [first, end) with 0 <= first < end, got {units!r}")
        stages.append(
            StagePlan(
                s.int("index"),
                units[0],
                units[1],
                s.int("rank"),
                s.str("dtype", choices=DTYPES, default="fp32"),
                _read_recompute(s, _v1(f)),
            )
        )
    if [s.index for s in stages] != list(range(len(stages))):
        raise f.fail("stages", "indices must be 0, 1, 2, ... in order")
    for a, b in zip(stages, stages[1:]):
        if a.end != b.first:
            raise f.fail("stages", f"stage {b.index} starts at unit {b.first} but stage {a.index} ends at {a.end}")
    if stages[0].first != 0:
        raise f.fail("stages[0].units", "the first stage must start at unit 0")
    return tuple(stages)


def _read_schedule_name(sched: Fields) -> str:
    try:
        return canonical_name(sched.str("name"))
    except ContractError:
        raise
    except ValueError as e:
        raise sched.fail("name", str(e)) from None


def _read_table(f: Fields, earlier: Mapping[str, Any]) -> Table:
    """A valid table for the stages and microbatches read before it, that runs each stage on its
    rank and keeps every one of the ``pp`` ranks busy."""
    sched, stages, pp = f.obj("schedule"), earlier["stages"], earlier["pp"]
    raw_table = sched.raw("table")
    if not isinstance(raw_table, dict):
        raise sched.fail("table", "expected an object mapping rank to actions")
    forward_only = f.obj("job", default={}).data.get("forward_only") is True
    try:
        table = table_from_text(raw_table)
        validate_table(table, len(stages), earlier["microbatches"], forward_only=forward_only)
        owner = stage_ranks(table)
    except ValueError as e:
        raise sched.fail("table", str(e).splitlines()[0]) from None
    for s in stages:
        if owner.get(s.index) != s.rank:
            raise f.fail(
                f"stages[{s.index}].rank",
                f"is {s.rank} but the schedule table runs it on rank {owner.get(s.index)}",
            )
    if max(owner.values()) + 1 != pp:
        raise f.fail("pp", f"is {pp} but the schedule table uses {max(owner.values()) + 1} ranks")
    idle = sorted(set(range(pp)) - set(owner.values()))
    if idle:
        raise sched.fail("table", f"rank {idle[0]} runs no stage: every pipeline rank holds at least one")
    return table


def _read_cluster(f: Fields, earlier: Mapping[str, Any]) -> Cluster:
    """The cluster, with room for the plan's processes."""
    cluster = Cluster.from_fields(f.obj("cluster"))
    pp, layout = earlier["pp"], earlier["layout"]
    world = pp * layout.dp * layout.tp
    if world > cluster.devices:
        raise f.fail(
            "dp",
            f"pp {pp} x dp {layout.dp} x tp {layout.tp} = {world} processes, "
            f"more than the cluster's {cluster.devices} devices",
        )
    return cluster


def _read_prediction(f: Fields, _: Mapping[str, Any]) -> Prediction | None:
    if not f.has("predicted"):
        return None
    p = f.obj("predicted")
    return Prediction(
        p.num("step_s"),
        tuple(p.nums("bubble_fraction")),
        tuple(int(x) for x in p.nums("peak_bytes")),
        p.num("throughput", default=0.0),
        p.num("latency_s", default=0.0),
    )


def _read_solver(f: Fields, _: Mapping[str, Any]) -> dict[str, Any]:
    """The solver's facts: an object."""
    solver = f.raw("solver", {}) or {}
    if not isinstance(solver, dict):
        raise f.fail("solver", f"expected an object, got {type(solver).__name__}")
    return solver


def _read_baselines(f: Fields, _: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
    """The baselines: objects with a name (and numbers where they hold them)."""
    baselines = f.list("baselines", default=[])
    if not all(isinstance(b, dict) and isinstance(b.get("name"), str) for b in baselines):
        raise f.fail("baselines", "expected a list of objects with a name")
    for i, b in enumerate(baselines):
        row = Fields(b, f.where, f"baselines[{i}]")
        row.num("speedup", default=0.0)
        row.num("step_s", default=0.0)
        if not isinstance(b.get("fits_memory", True), bool):
            raise row.fail("fits_memory", "expected true or false")
    return tuple(baselines)


def _read_notes(f: Fields, _: Mapping[str, Any]) -> tuple[str, ...]:
    notes = f.list("notes", default=[])
    if not all(isinstance(n, str) for n in notes):
        raise f.fail("notes", "expected a list of strings")
    return tuple(notes)


def _read_recompute(s: Fields, v1: bool) -> Recompute:
    """A stage's recompute: ``none|selective|full``; plan/1 stored a boolean (full or none)."""
    if v1:
        return Recompute.FULL if s.bool("recompute", default=False) else Recompute.NONE
    return Recompute(s.str("recompute", choices=[r.value for r in Recompute], default="none"))


def _v1(f: Fields) -> bool:
    """A plan/1 file (no tp or dp mode; boolean recompute)."""
    return f.data.get("schema") == schema_id(KIND, 1)


def _profile_key(key: str, **kw: Any) -> Reader:
    return lambda f, _: f.obj("profile").str(key, **kw)


def _int(key: str, hi: int) -> Reader:
    return lambda f, _: f.int(key, min=1, max=hi)


@dataclass(frozen=True, kw_only=True)
class Plan:
    """A plan; each stored field says how its file gives it (its reader, in the order its errors
    come), ``to_dict`` writes the file's layout. plan/1 files read as tp 1, ddp, recompute
    none/full."""

    pp: int = reads(_int("pp", MAX_DEVICES))
    #: tp, dp, dp mode, sequence parallelism and gradient-reduce overlap, as the cost layer prices
    #: them; held for this pipeline (``Layout.on_pipeline(pp)``: its reshard rule applied)
    layout: Layout = reads(_read_layout, default_factory=Layout)
    virtual: int = reads(_int("virtual", MAX_TABLE_ACTIONS))
    microbatches: int = reads(_int("microbatches", MAX_GLOBAL_BATCH))
    microbatch_size: int = reads(_int("microbatch_size", MAX_GLOBAL_BATCH))
    stages: tuple[StagePlan, ...] = reads(_read_stages)
    schedule: str = reads(lambda f, _: _read_schedule_name(f.obj("schedule")))
    table: Table = reads(_read_table)
    predicted: Prediction | None = reads(_read_prediction, None)
    cluster: Cluster = reads(_read_cluster)
    job: Job = reads(lambda f, _: Job.from_dict(f.obj("job", default={}).data, f.where, "job"))
    #: status, solver, time_s, gap, objective
    solver: dict[str, Any] = reads(_read_solver, default_factory=dict)
    baselines: tuple[dict[str, Any], ...] = reads(_read_baselines, ())  # [{name, step_s, speedup}]
    notes: tuple[str, ...] = reads(_read_notes, ())  # explanations
    #: as stored: relative to the plan file's folder when saved next to it
    profile_path: str = reads(_profile_key("path"))
    profile_sha256: str = reads(_profile_key("sha256"))
    model_name: str = reads(_profile_key("model", default=""))
    profile: Profile | None = field(default=None, compare=False, repr=False)  # loaded, not stored

    def __post_init__(self) -> None:
        object.__setattr__(self, "layout", self.layout.on_pipeline(self.pp))

    # -- the layout's degrees, read through (the executor reads them off the plan) -----------
    @property
    def tp(self) -> int:
        return self.layout.tp

    @property
    def dp(self) -> int:
        return self.layout.dp

    @property
    def dp_mode(self) -> DPMode:
        return self.layout.dp_mode

    @property
    def sequence_parallel(self) -> bool:
        return self.layout.sequence_parallel

    @property
    def overlap_grad_reduce(self) -> bool:
        return self.layout.overlap_grad_reduce

    @property
    def grads_fp32(self) -> bool:
        return self.layout.grads_fp32

    # -- derived -------------------------------------------------------------------------
    @property
    def bounds(self) -> list[tuple[int, int]]:
        return [(s.first, s.end) for s in self.stages]

    @property
    def split(self) -> list[int]:
        """First unit of stages 1..S-1 (the ``--split`` form)."""
        return [s.first for s in self.stages[1:]]

    @property
    def custom_placement(self) -> tuple[int, ...] | None:
        """A ``Custom`` plan's stage -> rank map (its table's), None for a named schedule."""
        return tuple(s.rank for s in self.stages) if schedule_spec(self.schedule).custom else None

    @property
    def world_size(self) -> int:
        return self.pp * self.layout.stride

    @property
    def parallelism(self) -> Layout:
        """``layout`` (its older name). Ranks are laid out tp innermost, pp outermost:
        ``rank = (pp_index * dp + dp_index) * tp + tp_index``."""
        return self.layout

    @property
    def schedule_label(self) -> str:
        """The schedule as a reader should see it: with one pipeline rank there is no schedule to
        choose (every name runs the same forwards and backwards), so none is named."""
        return "no pipeline" if self.pp == 1 else self.schedule

    def pipeline_layout(self) -> str:
        """Megatron-style layout: stages separated by ``|``, e.g. ``E,t*4|t*4,L`` (E an embedding,
        L a head, t any other unit, by the units' kinds)."""
        kinds = [u.kind for u in self.profile.entries[0].units] if self.profile else None
        parts = []
        for s in self.stages:
            if kinds is None:
                parts.append(f"{s.first}-{s.end - 1}")
                continue
            parts.append(",".join(_runs([_LAYOUT_CODES.get(kinds[u], "t") for u in range(s.first, s.end)])))
        return "|".join(parts)

    def profile_file(self, plan_dir: str | Path | None = None) -> Path:
        """Where the profile file is: a relative path is taken from ``plan_dir`` (the plan file's
        folder) when the file is there, else from the working directory."""
        path = Path(self.profile_path)
        if not path.is_absolute() and plan_dir is not None and (Path(plan_dir) / path).exists():
            path = Path(plan_dir) / path
        return path

    def load_profile(self, plan_dir: str | Path | None = None) -> Profile:
        if self.profile is not None:
            return self.profile
        path = self.profile_file(plan_dir)
        if not path.exists():
            raise ContractError(
                f"plan: field profile.path: {self.profile_path} does not exist "
                f"(keep the profile beside the plan, or re-plan)"
            )
        if sha256_of(path) != self.profile_sha256:
            raise ContractError(f"plan: field profile.sha256: {path} changed since this plan was made: re-plan")
        profile = load_profile(path)
        for dtype in dict.fromkeys(s.dtype for s in self.stages):  # sizes the plan predicted from fits
            profile = profile.with_sizes(dtype, [self.microbatch_size])
        return profile

    def with_profile(self, profile: Profile) -> Plan:
        return replace(self, profile=profile)

    def cost_model(self) -> CostModel:
        """The cost layer for this plan: its profile, cluster, job, microbatch size and layout,
        with its stages' options."""
        return cost_model(
            self.load_profile(),
            self.cluster,
            self.job,
            self.microbatch_size,
            layout=self.layout,
            options=[s.option for s in self.stages],
        )

    def sim_input(self, costs: CostModel | None = None) -> SimInput:
        """What the simulator needs (the simulator never imports the planner). ``costs``: a
        CostModel of this plan's profile, cluster, job, microbatch size and ``dp`` with (at
        least) its stages' options, to skip building one."""
        if costs is None:
            costs = self.cost_model()
        options = [s.option for s in self.stages]
        rank_of = {s.index: s.rank for s in self.stages}
        syncs = costs.tied_syncs(self.bounds, options, rank_of)
        return SimInput(
            self.table,
            costs.stage_costs(self.bounds, options),
            costs.links,
            dp=self.layout.dp,
            forward_only=self.job.forward_only,
            comm=costs.dp_comm,
            tied=tuple((sync, costs.tied_sync_s(sync)) for sync in syncs),
            held_once=costs.held_once(self.bounds, options, rank_of),
            per_rank_bytes=costs.per_rank_bytes,
        )

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        pred = self.predicted
        return {
            "schema": schema_id(KIND, MAJOR),
            "profile": {"path": self.profile_path, "sha256": self.profile_sha256, "model": self.model_name},
            "pp": self.pp,
            "dp": self.layout.dp,
            "tp": self.layout.tp,
            "dp_mode": self.layout.dp_mode.value,
            "sequence_parallel": self.layout.sequence_parallel,
            **({"overlap_grad_reduce": True} if self.layout.overlap_grad_reduce else {}),
            **({"grads_fp32": True} if self.layout.grads_fp32 else {}),
            "virtual": self.virtual,
            "microbatches": self.microbatches,
            "microbatch_size": self.microbatch_size,
            "stages": [
                {
                    "index": s.index,
                    "units": [s.first, s.end],
                    "rank": s.rank,
                    "dtype": s.dtype,
                    "recompute": s.recompute.value,
                }
                for s in self.stages
            ],
            "schedule": {"name": self.schedule, "table": table_to_text(self.table)},
            "predicted": None
            if pred is None
            else {
                "step_s": pred.step_s,
                "bubble_fraction": list(pred.bubble_fraction),
                "peak_bytes": list(pred.peak_bytes),
                "throughput": pred.throughput,
                "latency_s": pred.latency_s,
                # what a trainer reads (planner/figures.py): tokens/s, model TFLOP/s per device, MFU
                **self._figures(),
            },
            "cluster": self.cluster.to_dict(),
            "job": self.job.to_dict(),
            "solver": self.solver,
            "baselines": list(self.baselines),
            "layout": self.pipeline_layout(),
            "notes": list(self.notes),
        }

    def _figures(self) -> dict[str, Any]:
        """The rates of ``planner.figures`` for the file, when the loaded profile can price this
        plan's microbatch size (a plan without its profile is written without them)."""
        if self.profile is None or self.predicted is None:
            return {}
        try:
            return figures(self).to_dict()
        except ContractError:  # the profile has no entry (or fit) for this microbatch size
            return {}

    def stored_dict(self, path: str | Path) -> dict[str, Any]:
        """The JSON object to save at ``path``: the profile path relative to the plan's folder
        when possible."""
        path = Path(path)
        prof = Path(self.profile_path)
        stored = self.profile_path
        if prof.exists():
            try:
                stored = os.path.relpath(prof.resolve(), path.parent.resolve())
            except ValueError:
                stored = str(prof.resolve())
        return replace(self, profile_path=stored).to_dict()

    def save(self, path: str | Path) -> Path:
        """Write atomically (see :meth:`stored_dict`)."""
        return write_json(path, self.stored_dict(path))

    @staticmethod
    def from_fields(f: Fields) -> Plan:
        """A Plan from its file's fields, each checked (a one-line error naming the field)."""
        return Plan(**read_declared(Plan, f))


def load_plan(path: str | Path, with_profile: bool = True) -> Plan:
    """Load and validate a Plan file (and, by default, the profile it refers to)."""
    plan = Plan.from_fields(read_json(path, KIND, READS))
    if with_profile:
        plan = plan.with_profile(plan.load_profile(Path(path).parent))
        if plan.profile.num_units != plan.stages[-1].end:
            raise ContractError(
                f"{path}: field stages: cover {plan.stages[-1].end} units but the profile has {plan.profile.num_units}"
            )
    return plan


def distinct_plans(plans: list[Plan]) -> list[Plan]:
    """``plans`` without repeats, first kept: plans that differ only in the schedule's name where
    there is no pipeline (pp 1: the names choose nothing) are one plan."""
    seen, out = set(), []
    for p in plans:
        key = (
            p.schedule if p.pp > 1 else None,
            p.pp,
            p.layout,
            p.microbatches,
            p.microbatch_size,
            tuple((s.first, s.end, s.rank, s.dtype, s.recompute) for s in p.stages),
        )
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _runs(codes: list[str]) -> list[str]:
    out: list[list] = []
    for c in codes:
        if out and out[-1][0] == c:
            out[-1][1] += 1
        else:
            out.append([c, 1])
    return [c if n == 1 else f"{c}*{n}" for c, n in out]
