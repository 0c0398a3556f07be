"""The RunReport contract: what a real run did, in the Timeline's shape, and how far off the prediction was."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from planner.cluster import MAX_DEVICES
from planner.plan import Plan
from profiles.contract import Fields, read_json, schema_id, write_json
from profiles.types import OFF_CPU_WARN, Profile
from simulator.engine import simulate
from simulator.timeline import Timeline

__all__ = ["RunReport", "load_report", "disturbance_notes", "replayed_step_s"]

KIND, MAJOR = "runreport", 1


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
    check: dict[str, Any] = field(default_factory=dict)  # {passed, max_rel_diff, ...} when --check ran
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
            "check": _finite_json(self.check),
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
            _nonfinite_back(f.obj("check").data) if f.has("check") else {},
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


def _nonfinite_back(check: dict[str, Any]) -> dict[str, Any]:
    """A loaded check: the strings ``_finite_json`` wrote for non-finite floats are floats again."""
    return {k: float(v) if isinstance(v, str) and v in _NONFINITE else v for k, v in check.items()}


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
