"""The file contracts: exact JSON round trips, and one-line errors naming file and field."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from executor.report import CheckResult, RunReport, load_report
from planner import load_plan
from profiles import ContractError, load_profile
from simulator import Action, Kind, Overlap, ScheduleError, make_schedule, parse_action, read_csv, write_csv
from simulator.actions import table_from_text, table_to_text
from simulator.timeline import Event, RankStats, Timeline, load_timeline


def test_profile_round_trip(tiny_profile_path, tmp_path):
    p = load_profile(tiny_profile_path)
    assert p.method == "measured" and p.num_units == 4  # embed, 2 blocks, head
    e = p.entry("fp32", 1)
    assert all(u.forward_s > 0 and u.backward_s > 0 and u.params > 0 for u in e.units)
    assert e.units[0].output_bytes == 1 * 16 * 64 * 4  # batch x seq x hidden x fp32
    p.save(tmp_path / "again.json")
    assert load_profile(tmp_path / "again.json") == p


def test_unit_roles_come_from_the_kind_not_the_name(tiny_profile_path):
    units = load_profile(tiny_profile_path).entry("fp32", 1).units
    roles = [(u.is_embedding, u.is_body, u.is_head) for u in units]
    assert roles == [(True, False, False), (False, True, False), (False, True, False), (False, False, True)]
    assert replace(units[1], name="head_proj").is_body  # a block named like a head is still a block
    assert replace(units[-1], name="lm_out").is_head  # a head by any name
    assert replace(units[0], kind="act").is_body  # a user model's own kind: a body unit
    assert all(type(u.kind) is str for u in units)  # the file's kinds load as plain strings


def test_plan_round_trip(tiny_plan_path, tmp_path):
    plan = load_plan(tiny_plan_path)
    assert plan.pp == 2 and len(plan.stages) == 2 and plan.schedule == "1F1B"
    assert [s.rank for s in plan.stages] == [0, 1]
    # save beside its profile elsewhere: the relative profile path still resolves
    (tmp_path / "profile.json").write_bytes((tiny_plan_path.parent / "profile.json").read_bytes())
    plan.save(tmp_path / "plan.json")
    again = load_plan(tmp_path / "plan.json")
    assert again.to_dict() == load_plan(tmp_path / "plan.json").to_dict()
    assert again.table == plan.table and again.stages == plan.stages and again.predicted == plan.predicted


def test_action_text_round_trip():
    for text in ["0F0", "2I3", "1W3", "12B105"]:
        assert str(parse_action(text)) == text
    assert parse_action("2I3") == Action(2, Kind.I, 3)
    with pytest.raises(ScheduleError):
        parse_action("2X3")
    pair = parse_action("(0F3;7B2)OVERLAP_F_B")  # torch's text for an OVERLAP_F_B pair
    assert pair == Overlap(Action(0, Kind.F, 3), Action(7, Kind.B, 2)) and str(pair) == "(0F3;7B2)OVERLAP_F_B"
    for text in ["(7B2;0F3)OVERLAP_F_B", "(0F3;7I2)OVERLAP_F_B", "(0F3;7B2)"]:
        with pytest.raises(ScheduleError):
            parse_action(text)


def test_csv_with_overlap_pairs_round_trips_and_torch_loads_it(tmp_path):
    table = make_schedule("DualPipeV", 2, 4, 2)
    assert any(isinstance(a, Overlap) for acts in table.values() for a in acts)
    path = write_csv(table, tmp_path / "t.csv")
    assert read_csv(path) == table
    assert table_from_text(json.loads(json.dumps(table_to_text(table)))) == table
    ts = pytest.importorskip("torch.distributed.pipelining.schedules")
    rows = [[ts._Action.from_str(c) for c in line.split(",")] for line in path.read_text().splitlines()]
    assert [[str(a) for a in row] for row in rows] == [[str(a) for a in table[r]] for r in range(2)]
    assert rows[0][7].sub_actions is not None  # a real OVERLAP_F_B, not a parse of its first half


def test_csv_round_trip_matches_torch_format(tmp_path):
    table = make_schedule("1F1B", 3, 5)
    path = write_csv(table, tmp_path / "t.csv")
    assert path.read_text().splitlines()[0].startswith("0F0,0F1,0F2,0B0,0F3")
    assert read_csv(path) == table
    assert table_from_text(json.loads(json.dumps(table_to_text(table)))) == table


def test_timeline_and_report_round_trip(tmp_path):
    tl = Timeline(
        2.0, (RankStats(0, 1.5, 0.25, 100, 0.5),), (Event(0, 0, "F", 0, 0.0, 1.0), Event(0, 0, "B", 0, 1.0, 1.5))
    )
    tl.save(tmp_path / "t.json")
    assert load_timeline(tmp_path / "t.json") == tl
    rep = RunReport(
        plan_path="plan.json",
        plan_sha256="ab" * 32,
        world_size=2,
        backend="gloo",
        device="cpu",
        step_s=(2.0, 2.2, 1.9),
        timeline=tl.with_source("measured"),
        losses=(3.0, 2.5),
        check=CheckResult(passed=False, max_rel_diff=float("inf"), where="stage 0 units.1.w", rtol=1e-4, why="missing"),
        predicted_step_s=1.8,
    )
    rep.save(tmp_path / "r.json")
    back = load_report(tmp_path / "r.json")
    assert back.step_s == rep.step_s and back.check == rep.check and back.error == pytest.approx(2.0 / 1.8 - 1)
    assert back.timeline.events == tl.events


def _broken_copies(src, tmp_path):
    data = json.loads(src.read_text())
    text = src.read_text()
    yield "truncated", text[: len(text) // 2], "not valid JSON"
    yield "other kind", json.dumps({**data, "schema": "pipeplan.profile/1"}), "schema"
    yield "other major", json.dumps({**data, "schema": "pipeplan.plan/9"}), "version"
    bad = json.loads(text)
    bad["microbatches"] = -3
    yield "negative", json.dumps(bad), "microbatches"
    bad = json.loads(text)
    bad["schedule"]["name"] = "Zigzag"
    yield "unknown schedule", json.dumps(bad), "schedule.name"
    bad = json.loads(text)
    bad["stages"][1]["units"] = [1, 1]
    yield "empty stage", json.dumps(bad), "units"


def test_broken_plan_files_fail_with_one_line(tiny_plan_path, tmp_path):
    for name, text, field in _broken_copies(tiny_plan_path, tmp_path):
        path = tiny_plan_path.parent / f"broken-{name.replace(' ', '-')}.json"
        path.write_text(text)
        with pytest.raises(ContractError) as err:
            load_plan(path)
        msg = str(err.value)
        assert str(path) in msg and field in msg and "\n" not in msg, (name, msg)


def test_broken_profile_names_field(tiny_profile_path, tmp_path):
    data = json.loads(tiny_profile_path.read_text())
    data["entries"][0]["units"][1]["forward_s"] = -1.0
    path = tmp_path / "neg.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ContractError, match=r"entries\[0\]\.units\[1\]\.forward_s: must be >= 0"):
        load_profile(path)


def test_writes_are_atomic(tmp_path, monkeypatch):
    from profiles import contract

    target = tmp_path / "x.json"
    contract.write_json(target, {"a": 1})
    with pytest.raises(ValueError):
        contract.write_json(target, {"a": float("nan")})  # fails while encoding: old file intact
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
