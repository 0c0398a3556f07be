"""The dashboard, driven headless with Streamlit's AppTest over tiny synthetic files (nothing is measured)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
pytest.importorskip("altair")

from dashboard_apptest import app as _app  # noqa: E402
from dashboard_apptest import charts as _charts  # noqa: E402
from dashboard_apptest import metric as _metric  # noqa: E402
from dashboard_apptest import ok as _ok  # noqa: E402
from dashboard_apptest import synthetic_root  # noqa: E402
from dashboard_apptest import walk as _walk  # noqa: E402

from dashboard import data, frames  # noqa: E402
from executor.report import load_report  # noqa: E402
from planner import load_plan  # noqa: E402
from simulator import simulate  # noqa: E402

BIG_GIB, SMALL_GIB = (
    4.0,
    0.25,
)  # fixture profile: with room the split is E,t*4|t*2,L (0.27 GiB); at 0.25 GiB it moves a block (E,t*3|t*3,L)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """runs/syn/{profile,plan,plan.run}.json: a synthetic 8-unit profile, a 2-stage plan, a fake run of it."""
    return synthetic_root(tmp_path_factory.mktemp("dash"))


def test_no_profile_explains_how_to_make_one(monkeypatch, tmp_path):
    at = _ok(_app(monkeypatch, tmp_path).run())
    text = " ".join(i.value for i in at.info)
    assert "No profile found" in text and "pipeplan profile" in text
    assert not at.tabs


def test_profile_view_charts_table_and_switches(monkeypatch, root):
    at = _ok(_app(monkeypatch, root, "Profile").run())
    assert _charts(at) == 2
    table = at.dataframe[0].value
    assert list(table["unit"])[:2] == ["embed", "block0"] and len(table) == 8
    assert _metric(at, "forward: units") == "0.95"  # the synthetic whole model is 5 % slower than its units
    f32 = table["F ms"].sum()
    _ok(at.segmented_control(key="profile_dtype").set_value("bf16").run())
    assert at.dataframe[0].value["F ms"].sum() == pytest.approx(f32 / 2)
    _ok(at.segmented_control(key="profile_mbs_bf16").set_value(2).run())
    assert at.dataframe[0].value["F ms"].sum() == pytest.approx(f32)


def test_plan_view_ranks_candidates_and_memory_cap_changes_the_choice(monkeypatch, root):
    at = _ok(_app(monkeypatch, root, "Plan").run())
    rows = at.dataframe[0].value
    assert {"schedule", "step ms", "bubble %", "peak GiB", "peak / cap %", "vs even split"} <= set(rows.columns)
    assert list(rows["step ms"]) == sorted(rows["step ms"])
    assert _charts(at) == 3  # split strip, peak memory vs cap, bubbles
    roomy = rows.iloc[0]
    _ok(at.number_input(key="mem").set_value(SMALL_GIB).run())
    tight = at.dataframe[0].value.iloc[0]
    assert (roomy["schedule"], roomy["peak GiB"]) != (tight["schedule"], tight["peak GiB"])
    assert (at.dataframe[0].value["peak GiB"] <= SMALL_GIB).all()
    at.number_input(key="mem").set_value(0.02).run()
    assert at.error and "GiB" in at.error[0].value  # the planner's reason (raise memory...), not a traceback
    assert not at.exception


def test_plan_controls_follow_the_planner_and_the_profile(monkeypatch, root):
    at = _ok(_app(monkeypatch, root, "Plan").run())
    assert set(at.multiselect(key="dtypes").options) == {"fp32", "bf16"}
    from simulator import SCHEDULES

    assert set(at.multiselect(key="schedules").options) == set(SCHEDULES) | {"Custom"}
    assert at.multiselect(key="recompute").options == ["none", "selective", "full"]
    assert at.multiselect(key="tp").options == ["1"]  # the synthetic model has no attention heads
    assert set(at.multiselect(key="dp_modes").options) == {"ddp", "zero1", "zero2", "fsdp"}
    # one pipeline rank on the 2 devices: the replicas shard as the sidebar says
    at.multiselect(key="pp").set_value([1]).run()
    _ok(at.multiselect(key="dp_modes").set_value(["fsdp"]).run())
    rows = at.dataframe[0].value
    assert len(rows) and set(rows["dp"]) == {2} and set(rows["dp mode"]) == {"fsdp"}
    at.multiselect(key="dp_modes").set_value([]).run()
    assert not at.exception and any("Choose at least one recompute mode" in e.value for e in at.error)
    at.multiselect(key="dp_modes").set_value(["ddp"]).run()
    at.multiselect(key="schedules").set_value([]).run()
    assert not at.exception and any("at least one schedule" in e.value for e in at.error)


def test_pipeline_view_follows_the_chosen_candidate_and_zooms(monkeypatch, root):
    at = _ok(_app(monkeypatch, root, "Plan").run())
    radio = at.radio[0]
    assert len(radio.options) >= 2
    _ok(radio.set_value(radio.options[1]).run())
    at.query_params["view"] = "Pipeline"
    _ok(at.run())
    assert _charts(at) == 3  # Gantt, bubble share, memory over time
    assert any("candidate #2" in str(getattr(n, "proto", "")) for n in _walk(at.main))
    slider = at.slider[0]
    lo, hi = slider.value
    _ok(slider.set_value((lo, hi / 4)).run())
    assert at.slider[0].value[1] == pytest.approx(hi / 4, rel=0.01)


def test_pipeline_view_64_ranks_whatif_and_saved_plan(monkeypatch, root):
    at = _app(monkeypatch, root, "Pipeline", pipe_source="what-if")
    t0 = time.perf_counter()
    _ok(at.run())
    assert time.perf_counter() - t0 < 20
    assert _metric(at, "ranks") == "64" and _charts(at) == 3
    _ok(at.radio(key="pipe_source").set_value("saved plan").run())
    assert _metric(at, "ranks") == "2" and _charts(at) == 3


def test_compare_view_two_gantts_and_error_table(monkeypatch, root):
    at = _ok(_app(monkeypatch, root, "Compare").run())
    assert _charts(at) == 2
    table = at.dataframe[0].value
    assert table.iloc[0]["quantity"] == "step time (ms)"
    assert table.iloc[0]["error %"] == pytest.approx(25.0)
    assert {"rank 0 busy (ms)", "rank 1 peak (MiB)", "replayed step (ms)"} <= set(table["quantity"])
    assert any("replayed step: the plan simulated with the run's own action times" in c.value for c in at.caption)
    assert _metric(at, "numerics check") == "passed"
    assert any("Rank 1 was ready but off the CPU for 20%" in w.value for w in at.warning)
    assert len(at.get("download_button")) == 2


def test_export_view_downloads_and_torchrun_command(monkeypatch, root, tmp_path):
    at = _ok(_app(monkeypatch, root, "Export").run())
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels[:3] == ["plan JSON", "schedule CSV (torch)", "simulated trace (Perfetto JSON)"]
    assert "launch lines, one per node (bash)" in labels
    # an engine that cannot express the plan says why in one line instead of offering a download
    for label in ("torchtitan 0.3.0 config (Python)", "Megatron-LM arguments (bash)"):
        captions = [c.value.replace("\\", "") for c in at.caption]  # shown escaped for Markdown
        reasons = [c for c in captions if c.startswith(f"{label}: ")]
        assert (label in labels) != bool(reasons), (label, labels, reasons)
        assert all(len(r.splitlines()) == 1 and "field " in r for r in reasons)
    assert "torchrun" in at.code[0].value and "-m executor" in at.code[0].value
    _ok(at.radio(key="export_source").set_value("saved plan").run())
    assert "--nproc_per_node 2" in at.code[0].value


def test_exported_files_load_elsewhere(root, tmp_path):
    """The plan JSON the Export view offers loads from any folder; the CSV and trace are well formed."""
    saved = load_plan(root / "syn" / "plan.json")
    out = tmp_path / "elsewhere" / "plan.json"
    out.parent.mkdir()
    out.write_text(data.plan_json(saved, root / "syn"))
    again = load_plan(out)
    assert again.split == saved.split and again.table == saved.table
    csv_rows = data.schedule_csv(saved).strip().splitlines()
    assert len(csv_rows) == saved.pp and csv_rows[0].startswith("0F0")
    trace = json.loads(data.trace_json(simulate(saved), "simulated"))
    assert {e["ph"] for e in trace["traceEvents"]} == {"M", "X"}


def test_compare_frame_matches_the_report(root):
    rep = load_report(root / "syn" / "plan.run.json")
    predicted = simulate(load_plan(root / "syn" / "plan.json"))
    df = frames.compare_frame(predicted, rep)
    assert df.iloc[0]["measured"] == pytest.approx(rep.step_s_median * 1e3)
    busy = df[df["quantity"] == "rank 1 busy (ms)"].iloc[0]
    assert busy["error %"] == pytest.approx(25.0)
    replayed = frames.compare_frame(predicted, rep, 0.5 * rep.step_s_median)
    row = replayed[replayed["quantity"] == "replayed step (ms)"].iloc[0]
    assert row["predicted"] == pytest.approx(0.5 * rep.step_s_median * 1e3) and row["error %"] == pytest.approx(100.0)


def test_interaction_after_the_first_solve_is_fast(monkeypatch, root):
    """Each interaction (pick another candidate, zoom, change view) reruns within 2 s once solved."""
    at = _ok(_app(monkeypatch, root, "Plan").run())
    timings = []
    for step in ("pick", "view", "zoom", "back"):
        t0 = time.perf_counter()
        if step == "pick":
            at.radio[0].set_value(at.radio[0].options[-1]).run()
        elif step == "view":
            at.query_params["view"] = "Pipeline"
            at.run()
        elif step == "zoom":
            lo, hi = at.slider[0].value
            at.slider[0].set_value((lo, hi / 2)).run()
        else:
            at.query_params["view"] = "Plan"
            at.run()
        timings.append(time.perf_counter() - t0)
        _ok(at)
    assert max(timings) < 2.0, timings


def test_url_sets_profile_settings_and_pipeline_degrees(monkeypatch, root):
    """A shared link reproduces the view: profile, devices, batch and the allowed pipeline degrees."""
    at = _app(monkeypatch, root, "Plan", profile=str(root / "syn" / "profile.json"), devices=4, batch=16, pp=4)
    _ok(at.run())
    rows = at.dataframe[0].value
    assert set(rows["pp"]) == {4} and set(rows["dp"]) == {1}
    assert at.multiselect(key="pp").value == [4]
