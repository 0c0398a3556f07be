"""Helpers for the dashboard's AppTests: start the app on a root folder, walk its elements, check it is clean."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

from streamlit.testing.v1 import AppTest

from dashboard.synthetic import synthetic_profile
from executor.report import CheckResult, RunReport
from planner import Cluster, Job, plan
from profiles.contract import sha256_of
from simulator import simulate
from simulator.timeline import RankStats

APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")


def app(monkeypatch, root: Path | str, view: str | None = None, **params) -> AppTest:
    """An AppTest of the dashboard on ``root`` (``--root``), with URL parameters (``view`` and ``params``)."""
    monkeypatch.setattr(sys, "argv", ["app.py", "--root", str(root)])
    at = AppTest.from_file(APP, default_timeout=60)
    if view:
        at.query_params["view"] = view
    for k, v in params.items():
        at.query_params[k] = str(v)
    return at


def walk(node):
    yield node
    for child in getattr(node, "children", {}).values():
        yield from walk(child)


def charts(at: AppTest) -> int:
    return sum(1 for n in walk(at.main) if getattr(n, "type", None) == "vega_lite_chart")


def ok(at: AppTest) -> AppTest:
    """``at`` when it shows neither an exception nor an error panel."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def plain(markdown: str) -> str:
    """Markdown with its backslash escapes removed: the text a reader sees."""
    return re.sub(r"\\(.)", r"\1", markdown)


def errors(at: AppTest) -> list[str]:
    """The error panels' texts as read, after checking that no exception (traceback) is shown."""
    assert not at.exception, [e.value for e in at.exception]
    return [plain(e.value) for e in at.error]


def metric(at: AppTest, label_start: str) -> str:
    return next(m.value for m in at.metric if m.label.startswith(label_start))


def texts(at: AppTest) -> list[str]:
    """Every Markdown body the app drew (markdown, captions, alerts), as sent to the browser."""
    out = []
    for n in walk(at._tree):
        proto = getattr(n, "proto", None)
        body = getattr(proto, "body", None)
        if isinstance(body, str) and body:
            out.append(body)
    return out


def synthetic_root(base: Path) -> Path:
    """``base/runs/syn/{profile,plan,plan.run}.json``: a synthetic 8-unit profile, a 2-stage plan of it and a
    fake run of that plan (every action 25 % slower than predicted); returns ``base/runs``."""
    run = base / "runs" / "syn"
    run.mkdir(parents=True)
    prof = synthetic_profile(6)
    prof.save(run / "profile.json")
    best = plan(
        prof,
        Cluster(devices=2, memory_bytes=2**30),
        Job(global_batch=4, microbatch_size=1, pp=(2,)),
        top=1,
        profile_path=run / "profile.json",
    )[0]
    best.save(run / "plan.json")
    tl = simulate(best)
    slow = 1.25  # the "measured" run: every action 25 % slower
    events = tuple(e._replace(start_s=e.start_s * slow, end_s=e.end_s * slow) for e in tl.events)
    ranks = tuple(RankStats(r.rank, r.busy_s * slow, r.bubble_fraction, r.peak_bytes) for r in tl.ranks)
    measured = dataclasses.replace(
        tl, step_s=tl.step_s * slow, events=events, ranks=ranks, transfers=(), source="measured"
    )
    RunReport(
        plan_path="plan.json",
        plan_sha256=sha256_of(run / "plan.json"),
        world_size=2,
        backend="gloo",
        device="cpu",
        step_s=(tl.step_s * slow,) * 3,
        timeline=measured,
        losses=(2.0, 1.9, 1.8),
        check=CheckResult(passed=True, max_rel_diff=1e-6, where="stage 0 units.0.w", rtol=1e-4, tensors=4),
        predicted_step_s=tl.step_s,
        extra={"off_cpu_fraction": [0.0, 0.2]},
    ).save(run / "plan.run.json")
    return base / "runs"
