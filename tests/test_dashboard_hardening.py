"""The dashboard against crafted and half-written files, hostile URLs and every schedule's what-if (AppTest)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
pytest.importorskip("altair")

from dashboard_apptest import app, charts, errors, metric, ok, plain, synthetic_root, texts  # noqa: E402

from dashboard import charts as dcharts  # noqa: E402
from dashboard import cli, files, frames  # noqa: E402
from dashboard.synthetic import synthetic_profile  # noqa: E402
from planner import load_plan  # noqa: E402
from simulator import SCHEDULES  # noqa: E402

INJECTION = "**bold** [click](http://evil.example) :red[red] $x^2$ <b>b</b>"


@pytest.fixture
def root(tmp_path) -> Path:
    return synthetic_root(tmp_path)


def _pick(at, key: str, path: Path):
    """Choose the option of selectbox ``key`` that is ``path`` (options are the paths as found)."""
    box = at.selectbox(key=key)
    box.set_value(next(p for p in box.options if Path(p) == path or p.endswith(str(path.name))))
    return box


def _crafted_plans(root: Path) -> dict[str, Path]:
    """Plan files, each broken in one way, beside the good one."""
    good = json.loads((root / "syn" / "plan.json").read_text())
    out = {}

    def write(name: str, text: str) -> None:
        out[name] = root / "syn" / f"{name}.json"
        out[name].write_text(text)

    text = json.dumps(good, indent=1)
    write("truncated", text[: len(text) // 2])
    write("wrong-schema", json.dumps({"schema": "pipeplan.plan/1", "profile": {"path": 5}}))
    write("huge-int", text.replace('"pp": 2', '"pp": ' + "9" * 5000, 1))
    write(
        "huge-microbatches", text.replace(f'"microbatches": {good["microbatches"]}', '"microbatches": 10000000000000')
    )
    write("deep", '{"schema": "pipeplan.plan/1", "job": ' + "[" * 100_000 + "]" * 100_000 + "}")
    outside = dict(good, profile=dict(good["profile"], path="../../outside/profile.json"))
    write("escapes", json.dumps(outside))
    return out


def test_crafted_plans_end_in_error_panels_not_tracebacks(monkeypatch, root):
    (root.parent / "outside").mkdir()
    synthetic_profile(6).save(root.parent / "outside" / "profile.json")
    crafted = _crafted_plans(root)
    at = app(monkeypatch, root, "Pipeline", pipe_source="saved plan").run()
    assert "nested too deeply" in errors(at)[0]  # the first plan file in name order is the crafted deep.json
    expect = {
        "truncated": "not valid JSON",
        "wrong-schema": "field pp: missing",
        "huge-int": "integer string conversion",
        "huge-microbatches": "microbatches",
        "deep": "nested too deeply",
        "escapes": "outside the dashboard's folders",
    }
    for name, path in crafted.items():
        _pick(at, "pipe_plan_file", path).run()
        errs = errors(at)
        assert len(errs) == 1 and expect[name] in errs[0], (name, errs)
        assert charts(at) == 0
    for view, key in (("Export", "export_plan_file"),):
        at.query_params["view"] = view
        at.run()
        at.radio(key="export_source").set_value("saved plan").run()
        _pick(at, key, crafted["escapes"]).run()
        assert "outside the dashboard's folders" in errors(at)[0]
    _pick(at, "export_plan_file", root / "syn" / "plan.json").run()
    ok(at)


def test_crafted_reports_and_a_report_whose_plan_is_outside(monkeypatch, root):
    good = json.loads((root / "syn" / "plan.run.json").read_text())
    (root / "syn" / "cut.run.json").write_text(json.dumps(good)[:300])
    (root / "syn" / "types.run.json").write_text(json.dumps(dict(good, step_s="fast", events=5)))
    (root / "syn" / "injected.run.json").write_text(json.dumps(dict(good, device=INJECTION, backend="*gloo*")))
    away = root.parent / "elsewhere"
    away.mkdir()
    (away / "plan.json").write_text((root / "syn" / "plan.json").read_text().replace('"profile.json"', '"x.json"'))
    other = root / "other"
    other.mkdir()
    (other / "plan.run.json").write_text(json.dumps(dict(good, plan=dict(good["plan"], path=str(away / "plan.json")))))
    at = ok(app(monkeypatch, root, "Compare").run())
    _pick(at, "compare_report", root / "syn" / "cut.run.json").run()
    assert "not valid JSON" in errors(at)[0]
    _pick(at, "compare_report", root / "syn" / "types.run.json").run()
    assert len(errors(at)) == 1
    _pick(at, "compare_report", root / "syn" / "injected.run.json").run()
    assert not errors(at) and plain(metric(at, "ranks")) == f"2 × {INJECTION} (*gloo*)"
    assert "\\*\\*bold" in metric(at, "ranks") and "[click](" not in metric(at, "ranks")
    at.selectbox(key="compare_report").set_value(str(other / "plan.run.json")).run()
    assert not errors(at)
    assert any("outside the dashboard's folders" in plain(w.value) for w in at.warning)
    assert charts(at) == 1  # the measured side only


def test_crafted_profiles_picker_labels_and_markdown_injection(monkeypatch, root):
    bad = root / "bad"
    bad.mkdir()
    text = (root / "syn" / "profile.json").read_text()
    (bad / "a-truncated.json").write_text(text[:400])
    (bad / "b-wrong.json").write_text(json.dumps({"schema": "pipeplan.profile/1", "model": 3}))
    synthetic_profile(4, name=INJECTION).save(bad / "c-injected.json")
    at = ok(app(monkeypatch, root, "Profile").run())
    labels = at.selectbox(key="profile").options
    assert "synthetic · synthetic device · fp32, bf16" in labels  # model · device · dtypes, not a path
    assert sum("(cannot be read)" in x for x in labels) == 2
    # the first readable profile is chosen, though the broken ones sort before it
    assert at.selectbox(key="profile").value == str(bad / "c-injected.json")
    for name, why in (("a-truncated.json", "not valid JSON"), ("b-wrong.json", "model")):
        at.selectbox(key="profile").set_value(str(bad / name)).run()
        assert why in errors(at)[0]
    at.selectbox(key="profile").set_value(str(bad / "c-injected.json")).run()
    ok(at)
    shown = " ".join(texts(at))
    assert "\\*\\*bold\\*\\*" in shown and "\\[click\\]\\(http" in shown  # drawn as the characters themselves
    assert "[click](http" not in shown and "**bold**" not in shown and ":red[" not in shown


def test_profile_with_absurd_numbers_ends_in_error_panels(monkeypatch, root):
    """Times of 1e300 s and 1e30 parameters load (they are numbers) but break tables and the solver: each view
    shows an error panel or draws, never a traceback."""
    path = root / "syn" / "profile.json"
    d = json.loads(path.read_text())
    for e in d["entries"]:
        for u in e["units"]:
            u.update(forward_s=1e300, params=10**30, saved_bytes=10**30)
    (root / "syn" / "plan.json").unlink()
    path.write_text(json.dumps(d))
    for view in ("Profile", "Plan", "Pipeline", "Export"):
        at = app(monkeypatch, root, view).run()
        assert len(errors(at)) <= 1, view


def test_files_are_found_by_their_head_only_inside_the_root_and_regular(monkeypatch, root, tmp_path):
    outside = tmp_path / "secret"
    outside.mkdir()
    synthetic_profile(4, name="secret").save(outside / "profile.json")
    (root / "syn" / "link.json").symlink_to(outside / "profile.json")
    os.mkfifo(root / "syn" / "fifo.json")  # opening it would block: it must not be opened
    (root / "syn" / "big.trace.json").write_text('{"traceEvents": [' + "1," * 200_000 + "1]}")
    found = files.find_files((str(root),))
    assert found["profile"] == [str(root / "syn" / "profile.json")]
    assert found["plan"] == [str(root / "syn" / "plan.json")] and len(found["runreport"]) == 1
    monkeypatch.setattr(files, "MAX_FILE_BYTES", 100_000)
    found = files.find_files.__wrapped__((str(root),))
    assert any("big.trace.json" in n and "not read" in n for n in found["notes"])
    # a file is read again only when its stamp changes: the kind cache is keyed on (mtime_ns, size)
    calls = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: calls.append(p) or real_open(p, *a, **k))
    files.find_files.__wrapped__((str(root),))
    assert not calls
    (root / "syn" / "plan.json").touch()
    files.find_files.__wrapped__((str(root),))
    assert calls == [str(root / "syn" / "plan.json")]


def test_url_cannot_start_unbounded_work(monkeypatch, root):
    t0 = time.perf_counter()
    at = app(monkeypatch, root, "Plan", devices=1, batch=1048576).run()
    assert time.perf_counter() - t0 < 10
    assert "at most 1024" in errors(at)[0] and "lower the global batch" in errors(at)[0]
    at = app(monkeypatch, root, "Plan", devices=100000, batch="lots").run()
    assert at.number_input(key="devices").value == 4096 and at.number_input(key="batch").value == 8
    notes = [plain(w.value) for w in at.sidebar.warning]
    assert any("devices=100000 is outside 1..4096" in w for w in notes) and any("not a number" in w for w in notes)
    assert not at.exception


def test_whatif_every_schedule(monkeypatch, root):
    """Every schedule draws a what-if; ZBV and DualPipeV place two stages per rank in a V."""
    at = ok(app(monkeypatch, root, "Pipeline", pipe_source="what-if").run())
    at.number_input(key="pipe_wi_pp").set_value(4)
    at.number_input(key="pipe_wi_m").set_value(8)
    steps = {}
    for name, spec in SCHEDULES.items():
        ok(at.selectbox(key="pipe_wi_sched").set_value(name).run())
        assert metric(at, "ranks") == "4" and charts(at) == 3, name
        assert f"4 ranks x {spec.min_virtual} stages" in str(at.main), name
        steps[name] = float(metric(at, "step time"))
    assert steps["ZBVZeroBubble"] < steps["1F1B"] and steps["DualPipeV"] < steps["GPipe"]
    ok(at.selectbox(key="pipe_wi_sched").set_value("Interleaved1F1B").run())
    ok(at.number_input(key="pipe_wi_v_Interleaved1F1B").set_value(2).run())
    assert "4 ranks x 2 stages" in str(at.main)
    at.number_input(key="pipe_wi_m").set_value(9).run()  # not a multiple of the rounds: the schedule's own reason
    assert "microbatches" in errors(at)[0]


def test_cluster_presets_and_files_from_the_root(monkeypatch, root):
    (root / "syn" / "cluster.yaml").write_text(
        "name: lab\ndevices: 4\nmemory_bytes: 2GiB\ndevices_per_node: 4\nintra_bandwidth_Bps: 10e9\n"
    )
    (root / "syn" / "broken.yaml").write_text("devices_per_node: [\n")
    at = ok(app(monkeypatch, root, "Plan").run())
    box = at.selectbox(key="cluster")
    assert box.value == "cpu-local" and {"h100 (preset)", "cpu-local (preset)"} <= set(box.options)
    assert "syn/cluster.yaml" in box.options and "syn/broken.yaml" in box.options  # labels: paths in the root
    assert at.number_input(key="devices").value == 2 and at.number_input(key="mem").value == 8.0
    ok(box.set_value(str(root / "syn" / "cluster.yaml")).run())
    assert at.number_input(key="devices").value == 4 and at.number_input(key="mem").value == 2.0
    assert at.number_input(key="per_node").value == 4
    at.selectbox(key="cluster").set_value(str(root / "syn" / "broken.yaml")).run()
    assert not at.exception and any("not valid YAML" in plain(e.value) for e in at.sidebar.error)
    assert "per stage" in at.multiselect(key="dtypes").help and "the first" not in at.multiselect(key="dtypes").help
    assert at.multiselect(key="schedules").value == list(SCHEDULES)


def test_split_chart_axis_names_the_units(root):
    saved = load_plan(root / "syn" / "plan.json")
    names = saved.profile.unit_names
    spec = dcharts.split_strip(frames.split_frame([saved], names, [1.0] * len(names)), 1).to_dict()
    x = spec["layer"][0]["encoding"]["x"]
    assert x["field"] == "unit name" and x["sort"] == names and names[0] == "embed" and names[-1] == "head"


def test_dashboard_command_hides_the_deploy_toolbar():
    cmd = cli.streamlit_command(8502, ["runs"])
    assert cmd[cmd.index("--client.toolbarMode") + 1] == "minimal"
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1" and cmd[-2:] == ["--root", "runs"]
