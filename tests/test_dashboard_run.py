"""The dashboard's Run button: ``pipeplan validate`` in the background, its progress, Stop, and the Compare view."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit")

from dashboard_apptest import app, errors, metric, ok, plain, synthetic_root  # noqa: E402

from dashboard import runner  # noqa: E402
from planner import load_plan  # noqa: E402


def _export_saved(monkeypatch, root: Path):
    at = ok(app(monkeypatch, root, "Export").run())
    return ok(at.radio(key="export_source").set_value("saved plan").run())


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_run_button_validates_a_2_rank_plan_and_opens_compare(monkeypatch, tiny_plan_path, tmp_path):
    root = tmp_path / "runs"
    (root / "tiny").mkdir(parents=True)
    shutil.copy(tiny_plan_path.parent / "profile.json", root / "tiny" / "profile.json")
    shutil.copy(tiny_plan_path, root / "tiny" / "plan.json")
    at = _export_saved(monkeypatch, root)
    assert any("2 CPU processes" in plain(c.value) for c in at.caption)
    at.button(key="run_plan").click().run()
    fracs = []
    deadline = time.monotonic() + 240
    while at.query_params.get("view") != "Compare" and time.monotonic() < deadline:
        assert not errors(at)
        fracs += [p.value for p in at.get("progress")]
        time.sleep(1)
        at.run()
    assert at.query_params.get("view") == "Compare", "the run did not finish in 240 s"
    ok(at)
    assert fracs and 0 < fracs[0] < fracs[-1] < 100  # a progress bar (percent) that moved while it ran
    report = root / "tiny" / "plan.run.json"
    assert report.is_file() and at.selectbox(key="compare_report").value == str(report)
    assert float(metric(at, "measured step")) > 0 and metric(at, "ranks").startswith("2 ×")
    assert (root / "tiny" / "plan.sim.trace.json").is_file()  # validate's side files, beside the plan
    run = runner.running(root / "tiny" / "plan.json")
    assert run.proc.returncode == 0 and _group_gone(run.proc.pid)
    run.discard()


def test_stop_ends_the_run_s_process_group_and_a_failed_run_shows_its_log(monkeypatch, tmp_path):
    root = synthetic_root(tmp_path)  # a synthetic model: the executor cannot build it, so the run fails
    at = _export_saved(monkeypatch, root)
    at.button(key="run_plan").click().run()
    run = runner.running(root / "syn" / "plan.json")
    assert run is not None and run.proc.poll() is None and at.get("progress")
    at.button(key="stop_plan").click().run()
    assert run.proc.poll() is not None and _group_gone(run.proc.pid)
    assert not errors(at) and any("stopped after" in p.proto.text for p in at.get("progress"))
    at.button(key="run_plan").click().run()
    run = runner.running(root / "syn" / "plan.json")
    deadline = time.monotonic() + 120
    while run.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    at.run()
    errs = errors(at)
    assert errs and "exit code 2" in errs[0] and at.code[-1].value.strip()  # the log's end is shown
    assert at.query_params.get("view") == "Export"  # no Compare without a report
    run.discard()
    assert not run.err_path.exists()


def test_no_run_button_for_a_plan_this_host_cannot_run(monkeypatch, tmp_path):
    monkeypatch.setattr(runner, "host_cores", lambda: 1)
    at = _export_saved(monkeypatch, synthetic_root(tmp_path))
    assert not [b for b in at.button if b.key == "run_plan"]
    assert any("needs 2 processes" in plain(c.value) and "1 cores" in plain(c.value) for c in at.caption)


def test_a_chosen_candidate_is_saved_under_the_root_before_it_runs(monkeypatch, tmp_path):
    root = synthetic_root(tmp_path)
    at = ok(app(monkeypatch, root, "Export").run())
    assert any("dashboard-runs" in plain(c.value) for c in at.caption)  # says where it will be saved
    at.button(key="run_plan").click().run()
    saved = list((root / "dashboard-runs").glob("*/plan.json"))
    assert len(saved) == 1 and saved[0].parent.name.startswith("synthetic-")
    run = runner.running(saved[0])
    assert run is not None
    run.discard()
    assert _group_gone(run.proc.pid)
    assert load_plan(saved[0]).profile.model_name == "synthetic"  # its profile found from the new folder
