"""Measured communication: a pp 2 x tp 2 run records every rank's tensor-parallel collectives
inside the actions that issued them, ``pipeplan validate`` prints them beside the prediction, and
reports written before collectives were recorded still load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tp_run(tmp_path_factory):
    """A pp 2 x tp 2 plan of a tiny Llama (a block on each stage), validated on 4 CPU ranks."""
    from executor.plans import validation_plan
    from planner.cluster import Cluster
    from profiles import profile_model
    from simulator.costs import Layout

    tmp = tmp_path_factory.mktemp("comm")
    prof_path = tmp / "profile.json"
    prof = profile_model("llama-tiny", seq_len=16, repeats=1, warmup=0)
    prof.save(prof_path)
    plan = validation_plan(
        prof, prof_path, Cluster(devices=4), "1F1B", 2, 2, bounds=[(0, 2), (2, 4)], layout=Layout(tp=2)
    )
    path = plan.save(tmp / "plan.json")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, str(ROOT / "pipeplan.py"), "validate", str(path), "--steps", "1", "--warmup", "0"]
        + ["--oversubscribe"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-4000:]
    return plan, path, r.stdout


def test_tp_collectives_are_recorded_inside_their_actions(tp_run):
    from executor.report import comm_per_pp_rank, load_report

    plan, path, _ = tp_run
    report = load_report(path.with_suffix(".run.json"))
    assert report.comm, "no collectives recorded"
    assert {c.group for c in report.comm} == {"tp"}  # tp 1 dp: no data-parallel collectives
    for rank in range(4):
        mine = [c for c in report.comm if c.rank == rank]
        # every block all-reduces in its forward and in its backward
        assert {c.kind for c in mine} >= {"F", "B"}, (rank, mine)
        events = {(e.stage, e.kind, e.microbatch) for e in report.timeline.events if e.rank == rank}
        # the spans come from a metered step after the timed ones (the meter slows what it
        # watches): each is attributed to one of the rank's actions, or to the step's tail
        for c in (c for c in mine if c.kind != "tail"):
            assert (c.stage, c.kind, c.microbatch) in events, c
            assert 0 <= c.start_s <= c.end_s, c
        spans = sorted((c.start_s, c.end_s) for c in mine)
        assert all(a[1] <= b[0] + 1e-6 for a, b in zip(spans, spans[1:])), "one rank's collectives overlap"
    per_pp = comm_per_pp_rank(report, plan)
    assert set(per_pp) == {0, 1} and all(v["tp"] > 0 and v["dp"] == 0 for v in per_pp.values()), per_pp


def test_validate_prints_measured_beside_predicted_comm(tp_run):
    _, _, out = tp_run
    for rank in (0, 1):
        line = next((x for x in out.splitlines() if x.startswith(f"rank {rank} tp comm (ms)")), None)
        assert line is not None, out
        predicted, measured = map(float, line.split()[5:7])
        assert predicted > 0 and measured > 0, line


def test_a_report_without_collectives_still_loads(tp_run, tmp_path):
    from executor.cli import compare_table
    from executor.report import load_report
    from simulator.engine import simulate

    plan, path, _ = tp_run
    data = json.loads(path.with_suffix(".run.json").read_text())
    del data["comm"]
    old = tmp_path / "old.run.json"
    old.write_text(json.dumps(data))
    report = load_report(old)
    assert report.comm == () and report.step_s
    assert "no measured collectives" in compare_table(simulate(plan), report, plan=plan)


def test_plain_plans_predict_no_comm_to_compare(tp_run):
    from dataclasses import replace

    from executor.report import predicted_comm
    from simulator.engine import simulate

    plan, _, _ = tp_run
    pred = predicted_comm(plan, simulate(plan))
    assert set(pred) == {0, 1} and all(v["tp"] > 0 for v in pred.values())
    plain = replace(plan, layout=replace(plan.layout, tp=1))
    assert predicted_comm(plain, simulate(plain)) == {}


def test_dashboard_compare_frame_shows_comm(tp_run):
    from dashboard.frames import compare_frame
    from executor.report import load_report
    from simulator.engine import simulate

    plan, path, _ = tp_run
    frame = compare_frame(simulate(plan), load_report(path.with_suffix(".run.json")), plan=plan)
    rows = frame.set_index("quantity")
    assert rows.loc["rank 0 tp comm (ms)", "measured"] > 0 and rows.loc["rank 1 tp comm (ms)", "predicted"] > 0
