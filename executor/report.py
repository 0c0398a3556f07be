"""The RunReport contract: what a real run did, in the Timeline's shape, and how far off the prediction was."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from planner.cluster import MAX_DEVICES
from planner.plan import Plan
from profiles.contract import Fields, Reader, read_declared, read_json, reads, schema_id, write_json
from profiles.types import OFF_CPU_WARN, Profile
from simulator.actions import Overlap
from simulator.engine import simulate
from simulator.timeline import Timeline, read_span

__all__ = [
    "CheckResult",
    "CommSpan",
    "RunReport",
    "load_report",
    "disturbance_notes",
    "replayed_step_s",
    "comm_per_pp_rank",
    "predicted_comm",
]

KIND, MAJOR = "runreport", 1


#: a collective's kind when it was issued outside every action (the step's tail)
TAIL = "tail"
COMM_GROUPS = ("tp", "dp")


class CommSpan(NamedTuple):
    """One tensor- or data-parallel collective on one rank (``executor.comm.CommMeter``), from its
    issue to its completion, on the step's clock."""

    rank: int
    stage: int  # the stage of the action that issued it; -1 in the step's tail
    kind: str  # F | B | I | W of that action, or "tail"
    microbatch: int  # -1 in the tail
    group: str  # the mesh dimension it ran over: "tp" | "dp"
    op: str  # torch's op name, e.g. "all_reduce", "_allgather_base_"
    start_s: float
    end_s: float


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    """A ``--check`` verdict: one rank's (its gradients, or the last stage's output in a
    forward-only run), or every rank's merged (``merged``) in the report."""

    passed: bool
    max_rel_diff: float  # the worst relative difference; inf: a tensor missing on one side, nan: not finite
    where: str  # the tensor it was found at ("last stage output" in a forward-only run)
    rtol: float  # the tolerance it was held to
    tensors: int = 0  # tensors compared
    why: str = ""  # why it failed ("" when it passed)
    # the last stage's loss beside the one-process loss (training runs, last-stage ranks)
    loss: float | None = None
    loss_reference: float | None = None
    loss_rel_diff: float | None = None

    @property
    def what(self) -> str:
        """What was compared: "output" (a forward-only run) or "gradient"."""
        return "output" if self.where == "last stage output" else "gradient"

    @staticmethod
    def merged(checks: Sequence[CheckResult]) -> CheckResult | None:
        """Every rank's verdict as one: passed if all passed, the worst difference and where it
        was (NaN worst of all), the first reason given, the tensors summed, the loss if any."""
        if not checks:
            return None
        worst = max(checks, key=lambda c: float("inf") if c.max_rel_diff != c.max_rel_diff else c.max_rel_diff)
        loss = next((c for c in checks if c.loss is not None), None)
        return CheckResult(
            passed=all(c.passed for c in checks),
            max_rel_diff=worst.max_rel_diff,
            where=worst.where,
            rtol=worst.rtol,
            tensors=sum(c.tensors for c in checks),
            why=next((c.why for c in checks if c.why), ""),
            loss=loss.loss if loss else None,
            loss_reference=loss.loss_reference if loss else None,
            loss_rel_diff=loss.loss_rel_diff if loss else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """The report's ``check`` object (the loss fields only when a loss was compared; non-finite
        floats as strings)."""
        return _finite_json({k: v for k, v in asdict(self).items() if v is not None})

    @staticmethod
    def from_fields(f: Fields) -> CheckResult:
        def num(key: str, default: Any = ...) -> float | None:
            v = f.raw(key, default)
            if v is None:
                return None
            return float(v) if isinstance(v, str) and v in _NONFINITE else f.num(key, min=None)

        return CheckResult(
            passed=f.bool("passed"),
            max_rel_diff=num("max_rel_diff"),
            where=f.str("where", default=""),
            rtol=num("rtol"),
            tensors=f.int("tensors", default=0),
            why=f.str("why", default=""),
            loss=num("loss", None),
            loss_reference=num("loss_reference", None),
            loss_rel_diff=num("loss_rel_diff", None),
        )


def _steps(f: Fields, _: Mapping[str, Any]) -> tuple[float, ...]:
    steps = tuple(f.nums("step_s"))
    if not steps:
        raise f.fail("step_s", "must list at least one measured step")
    return steps


def _timeline(f: Fields, earlier: Mapping[str, Any]) -> Timeline:
    """The file's ``ranks``, ``events`` and ``memory`` as the median step's measured Timeline."""
    return Timeline.from_fields(
        Fields(
            {
                "step_s": statistics.median(earlier["step_s"]),
                "ranks": f.raw("ranks"),
                "events": f.raw("events"),
                "memory": f.raw("memory", {}),
                "source": "measured",
            },
            f.where,
            f.prefix,
        )
    )


def _check(f: Fields, _: Mapping[str, Any]) -> CheckResult | None:
    return CheckResult.from_fields(f.obj("check")) if f.has("check") and f.raw("check") else None


def _predicted(f: Fields, _: Mapping[str, Any]) -> float | None:
    return None if f.raw("predicted_step_s", None) is None else f.num("predicted_step_s")


def _host_peaks(f: Fields, _: Mapping[str, Any]) -> tuple[int, ...]:
    """``ranks[].host_peak_bytes``, when every rank has one (reports before they were measured: ())."""
    ranks = f.raw("ranks")
    if all(isinstance(r, dict) and "host_peak_bytes" in r for r in ranks):
        return tuple(int(r.get("host_peak_bytes", 0)) for r in ranks if isinstance(r, dict))
    return ()


def _comm(f: Fields, _: Mapping[str, Any]) -> tuple[CommSpan, ...]:
    if not f.has("comm"):
        return ()
    out = []
    for c in f.objs("comm"):
        start, end = read_span(c)
        out.append(
            CommSpan(
                c.int("rank", min=0),
                c.int("stage", min=-1),
                c.str("kind", choices=("F", "B", "I", "W", TAIL)),
                c.int("microbatch", min=-1),
                c.str("group", choices=COMM_GROUPS),
                c.str("op"),
                start,
                end,
            )
        )
    return tuple(out)


def _losses(f: Fields, _: Mapping[str, Any]) -> tuple[float, ...]:
    raw = f.raw("losses", [])
    if isinstance(raw, list) and any(isinstance(x, str) for x in raw):
        return tuple(float(x) if isinstance(x, str) and x in _NONFINITE else x for x in raw)
    return tuple(f.nums("losses", min=None)) if f.has("losses") else ()


def _key(name: str, how: Callable[..., Any] = Fields.str, **kw) -> Reader:
    """The reader of a top-level key of the file, e.g. ``_key("world_size", Fields.int, min=1)``."""
    return lambda f, _: how(f, name, **kw)


@dataclass(frozen=True, kw_only=True)
class RunReport:
    """What a real run measured. Each field says where it comes from in the file (its reader);
    ``from_fields`` reads them in this order, ``to_dict`` writes the file's layout."""

    plan_path: str = reads(lambda f, _: f.obj("plan").str("path"))  # the plan file run, as given
    plan_sha256: str = reads(lambda f, _: f.obj("plan").str("sha256"))  # its content hash
    world_size: int = reads(_key("world_size", Fields.int, min=1, max=MAX_DEVICES))  # processes
    backend: str = reads(_key("backend"))  # the process groups' backend: gloo | nccl
    device: str = reads(_key("device"))  # the device type ranks ran on: cpu | cuda
    step_s: tuple[float, ...] = reads(_steps)  # measured steps (warm-up excluded)
    #: the median step's events and per-rank stats, source "measured"
    timeline: Timeline = reads(_timeline)
    losses: tuple[float, ...] = reads(_losses, ())  # loss per step (all steps, warm-up included)
    check: CheckResult | None = reads(_check, None)  # when --check ran
    predicted_step_s: float | None = reads(_predicted, None)
    #: schedule runtime, torch version, settings
    extra: dict[str, Any] = reads(lambda f, _: f.obj("extra").data if f.has("extra") else {}, default_factory=dict)
    #: per rank: peak resident host memory of the worker process (VmHWM), in ``ranks[]`` of the file
    host_peak_bytes: tuple[int, ...] = reads(_host_peaks, ())
    #: the tensor- and data-parallel collectives of a metered step after the timed ones, every
    #: rank's, timed from that step's start (plans with tp or dp; empty otherwise, and in reports
    #: written before they were measured)
    comm: tuple[CommSpan, ...] = reads(_comm, ())

    @property
    def step_s_median(self) -> float:
        return statistics.median(self.step_s)

    @property
    def error(self) -> float | None:
        """(measured - predicted) / predicted, from the median step."""
        if not self.predicted_step_s:
            return None
        return (self.step_s_median - self.predicted_step_s) / self.predicted_step_s

    def to_dict(self) -> dict[str, Any]:
        tl = self.timeline.to_dict()
        for r, peak in zip(tl["ranks"], self.host_peak_bytes):
            r["host_peak_bytes"] = peak
        return {
            "schema": schema_id(KIND, MAJOR),
            "plan": {"path": self.plan_path, "sha256": self.plan_sha256},
            "world_size": self.world_size,
            "backend": self.backend,
            "device": self.device,
            "step_s": list(self.step_s),
            "step_s_median": self.step_s_median,
            "ranks": tl["ranks"],
            "events": tl["events"],
            "memory": tl["memory"],
            "losses": _finite_json(list(self.losses)),  # a diverged run's NaN loss is kept too
            "check": self.check.to_dict() if self.check else {},
            "predicted_step_s": self.predicted_step_s,
            "error": self.error,
            "extra": self.extra,
            "comm": [c._asdict() for c in self.comm],
        }

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @staticmethod
    def from_fields(f: Fields) -> RunReport:
        """The report in a file's object: each field by its own reader."""
        return RunReport(**read_declared(RunReport, f))


_NONFINITE = ("inf", "-inf", "nan")


def _finite_json(value: Any) -> Any:
    """JSON has no inf or NaN: a non-finite float becomes the string ``"inf"``, ``"-inf"`` or
    ``"nan"`` (so a failed check, e.g. a gradient that overflowed, still writes its report)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def load_report(path: str | Path) -> RunReport:
    return RunReport.from_fields(read_json(path, KIND, MAJOR))


def disturbance_notes(report: RunReport, profile: Profile | None = None) -> list[str]:
    """What other load on the machine did to the run, or to the profile behind its prediction
    (a thread ready but off the CPU past ``OFF_CPU_WARN`` of its time): one sentence each."""
    notes = []
    off = report.extra.get("off_cpu_fraction") or []
    if off and max(off) > OFF_CPU_WARN:
        worst = max(range(len(off)), key=off.__getitem__)
        notes.append(
            f"rank {worst} was ready but off the CPU for {off[worst]:.0%} of its compute time (other load "
            f"on this machine): the measured times include that wait, the prediction does not"
        )
    profiled = (profile.measurement.get("off_cpu_fraction") or {}) if profile is not None else {}
    if profiled and max(profiled.values()) > OFF_CPU_WARN:
        notes.append(
            f"the profile was measured with the profiler off the CPU for {max(profiled.values()):.0%} of "
            f"its timing (other load): its times count CPU time only, but that load also shared the caches "
            f"and memory bandwidth its units ran with"
        )
    if (
        profile is not None
        and profile.method == "measured"
        and profile.device_kind == "cpu"
        and report.device == "cpu"
        and report.world_size > 1
        and not profile.measurement.get("side_by_side")
    ):
        neighbours = min(report.world_size, os.cpu_count() or 1) - 1  # what the profiler accepts here
        notes.append(
            f"the profile timed each unit alone, but the {report.world_size} CPU ranks computed side by "
            f"side, sharing caches and memory bandwidth: expect compute to run a few percent over the "
            f"prediction; profile with --side-by-side {neighbours} (the other ranks of a host, one per spare core)"
        )
    if report.device == "cpu" and report.world_size > (os.cpu_count() or 1):
        notes.append(
            f"{report.world_size} ranks took turns on {os.cpu_count()} cores (--oversubscribe): each computed "
            f"slower than profiled, which the simulator (a core per rank) does not model"
        )
    return notes


def replayed_step_s(plan: Plan, report: RunReport) -> float:
    """The plan's table simulated with the run's own compute: each stage's F, B, I and W take the
    median of their measured actions (plus the calibrated per-action overhead, which the simulator
    adds to every action and the measured events leave out) instead of the profile's times; links,
    overhead and optimizer stay as predicted. Its distance to the measured step is the schedule
    model's own error (transfers, waits, overhead, the tail); the rest of the prediction's error
    is compute that ran slower or faster than it was profiled (other load, a co-running rank
    sharing caches and memory bandwidth, drift)."""
    inp = plan.sim_input()
    overhead = plan.cluster.action_overhead_s
    ran: dict[tuple[int, str], list[float]] = {}
    for e in report.timeline.events:
        ran.setdefault((e.stage, e.kind), []).append(e.end_s - e.start_s)

    def time_of(stage: int, kind: str, profiled: float) -> float:
        times = ran.get((stage, kind))
        return statistics.median(times) + overhead if times else profiled

    costs = [
        replace(
            c,
            forward_s=time_of(s, "F", c.forward_s),
            backward_s=time_of(s, "B", c.backward_s),
            backward_input_s=time_of(s, "I", c.backward_input_s),
            backward_weight_s=time_of(s, "W", c.backward_weight_s),
        )
        for s, c in enumerate(inp.costs)
    ]
    return simulate(replace(inp, costs=costs), detail=False).step_s


def comm_per_pp_rank(report: RunReport, plan: Plan) -> dict[int, dict[str, float]]:
    """Measured: each pipeline rank's seconds in ``tp`` and ``dp`` collectives in the median step
    (a rank's overlapping spans counted once), the mean over the ranks that run its stages (its
    tp and dp peers). Empty when the report has no collectives."""
    pp_of = {e.rank: plan.stages[e.stage].rank for e in report.timeline.events}
    per_rank: dict[int, dict[str, float]] = {}
    for rank in pp_of:
        spans = [c for c in report.comm if c.rank == rank]
        per_rank[rank] = {g: _covered([(c.start_s, c.end_s) for c in spans if c.group == g]) for g in COMM_GROUPS}
    if not report.comm:
        return {}
    out: dict[int, dict[str, float]] = {}
    for p in sorted(set(pp_of.values())):
        mine = [per_rank[r] for r, q in pp_of.items() if q == p]
        out[p] = {g: statistics.mean(m[g] for m in mine) for g in COMM_GROUPS}
    return out


def _covered(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by the union of ``spans``."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def predicted_comm(plan: Plan, predicted: Timeline) -> dict[int, dict[str, float]]:
    """Predicted: each pipeline rank's seconds in ``tp`` collectives (the cost layer's share of its
    actions' F and B, ``UnitRecord.tp_forward_s``/``tp_backward_s``, summed over its table) and in
    ``dp`` collectives (the weights gathered again inside each backward,
    ``UnitRecord.dp_backward_s``, each microbatch's gradients reduced inside it,
    ``UnitRecord.dp_reduce_s``, and its gathers and its mode's gradient reduction on
    ``predicted``'s communication track) per step. Empty for a plan with neither tp nor dp."""
    if plan.tp == 1 and plan.dp == 1:
        return {}
    dp_kinds = ("UNSHARD", plan.dp_mode.spec.trace_name)
    costs = plan.cost_model()
    tp, dp = {}, {}  # stage -> action kind -> seconds of its collectives inside that action
    for s in plan.stages:
        recs = costs.records[s.option][s.first : s.end]
        fwd, bwd = sum(r.tp_forward_s for r in recs), sum(r.tp_backward_s for r in recs)
        tp[s.index] = {"F": fwd, "B": bwd, "I": bwd, "W": 0.0}
        gather = sum(r.dp_backward_s for r in recs)  # weights gathered again at each backward's start
        reduce = sum(r.dp_reduce_s for r in recs)  # each microbatch's gradients reduce-scattered (zero2)
        dp[s.index] = {
            "F": 0.0,
            "B": gather + reduce,
            "I": gather if s.index else 0.0,
            "W": reduce if s.index else gather + reduce,
        }
    out = {}
    for rank, actions in plan.table.items():
        acts = list(_compute_actions(actions))
        track = [c for c in predicted.collectives if c.rank == rank and c.kind in dp_kinds]
        out[rank] = {
            "tp": sum(tp[a.stage][a.kind.value] for a in acts),
            "dp": sum(c.end_s - c.start_s for c in track) + sum(dp[a.stage][a.kind.value] for a in acts),
        }
    return out


def _compute_actions(actions):
    for a in actions:
        if isinstance(a, Overlap):
            yield a.forward
            yield a.backward
        else:
            yield a
