"""The RunReport contract: what a real run did, in the Timeline's shape, and how far off the prediction was."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from planner.cluster import MAX_DEVICES
from planner.plan import Plan
from profiles.contract import Fields, read_json, schema_id, write_json
from profiles.types import OFF_CPU_WARN, Profile
from simulator.engine import simulate
from simulator.timeline import Timeline

__all__ = ["CheckResult", "RunReport", "load_report", "disturbance_notes", "replayed_step_s"]

KIND, MAJOR = "runreport", 1


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


@dataclass(frozen=True)
class RunReport:
    plan_path: str
    plan_sha256: str
    world_size: int
    backend: str
    device: str
    step_s: tuple[float, ...]  # measured steps (warm-up excluded)
    timeline: Timeline  # the median step's events and per-rank stats, source "measured"
    losses: tuple[float, ...] = ()  # loss per step (all steps, warm-up included)
    check: CheckResult | None = None  # when --check ran
    predicted_step_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # schedule runtime, torch version, settings
    #: per rank: peak resident host memory of the worker process (VmHWM), in ``ranks[]`` of the file
    host_peak_bytes: tuple[int, ...] = ()

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
        }

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @staticmethod
    def from_fields(f: Fields) -> RunReport:
        plan = f.obj("plan")
        steps = tuple(f.nums("step_s"))
        if not steps:
            raise f.fail("step_s", "must list at least one measured step")
        tl = Timeline.from_fields(
            Fields(
                {
                    "step_s": statistics.median(steps),
                    "ranks": f.raw("ranks"),
                    "events": f.raw("events"),
                    "memory": f.raw("memory", {}),
                    "source": "measured",
                },
                f.where,
                f.prefix,
            )
        )
        pred = f.raw("predicted_step_s", None)
        if pred is not None:
            pred = f.num("predicted_step_s")
        return RunReport(
            plan.str("path"),
            plan.str("sha256"),
            f.int("world_size", min=1, max=MAX_DEVICES),
            f.str("backend"),
            f.str("device"),
            steps,
            tl,
            _losses(f),
            CheckResult.from_fields(f.obj("check")) if f.has("check") and f.raw("check") else None,
            pred,
            f.obj("extra").data if f.has("extra") else {},
            tuple(int(r.get("host_peak_bytes", 0)) for r in f.raw("ranks") if isinstance(r, dict))
            if all(isinstance(r, dict) and "host_peak_bytes" in r for r in f.raw("ranks"))
            else (),
        )


def _losses(f: Fields) -> tuple[float, ...]:
    raw = f.raw("losses", [])
    if isinstance(raw, list) and any(isinstance(x, str) for x in raw):
        return tuple(float(x) if isinstance(x, str) and x in _NONFINITE else x for x in raw)
    return tuple(f.nums("losses", min=None)) if f.has("losses") else ()


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
        notes.append(
            f"the profile timed each unit alone, but the {report.world_size} CPU ranks computed side by "
            f"side, sharing caches and memory bandwidth: expect compute to run a few percent over the "
            f"prediction; profile with --side-by-side {report.world_size - 1} (the other ranks of a host)"
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
