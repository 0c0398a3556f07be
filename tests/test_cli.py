"""The command line as users meet it: help, exit codes, one-line errors, nothing half-written."""

from __future__ import annotations

import json

from conftest import run_cli

SUBCOMMANDS = ["profile", "plan", "simulate", "schedule", "run", "validate", "calibrate", "export", "dashboard"]


def test_help_lists_every_subcommand():
    r = run_cli("--help")
    assert r.returncode == 0
    for sub in SUBCOMMANDS:
        assert sub in r.stdout
    for sub in SUBCOMMANDS:
        h = run_cli(sub, "--help")
        assert h.returncode == 0 and "usage: pipeplan " + sub in h.stdout, sub


def test_truncated_plan_given_to_simulate_exits_2_with_one_line(tiny_plan_path):
    bad = tiny_plan_path.parent / "truncated.json"
    bad.write_text(tiny_plan_path.read_text()[:100])
    r = run_cli("simulate", str(bad))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "truncated.json" in r.stderr and "Traceback" not in r.stderr


def test_simulate_plan_prints_step_and_bubbles(tiny_plan_path, tmp_path):
    r = run_cli(
        "simulate", str(tiny_plan_path), "--trace", str(tmp_path / "t.json"), "--gantt", str(tmp_path / "g.png")
    )
    assert r.returncode == 0, r.stderr
    assert "step time" in r.stdout and "rank" in r.stdout and "%" in r.stdout
    trace = json.loads((tmp_path / "t.json").read_text())
    assert {e["pid"] for e in trace["traceEvents"] if e["ph"] == "X"} == {0, 1}
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_infeasible_memory_cap_exits_2_and_names_memory_needed(tiny_profile_path, tmp_path):
    out = tmp_path / "plan.json"
    r = run_cli(
        "plan",
        str(tiny_profile_path),
        "--devices",
        "2",
        "--device-memory",
        "10KiB",
        "--pp",
        "2",
        "--global-batch",
        "4",
        "--microbatch-size",
        "1",
        "-o",
        str(out),
    )
    assert r.returncode == 2
    assert "needs" in r.stderr and "GiB" in r.stderr and r.stderr.count("\n") == 1
    assert not out.exists()


def test_plan_json_is_clean_json(tiny_profile_path, tmp_path):
    r = run_cli(
        "plan",
        str(tiny_profile_path),
        "--devices",
        "2",
        "--device-memory",
        "1GiB",
        "--pp",
        "2",
        "--global-batch",
        "4",
        "--microbatch-size",
        "1",
        "-o",
        str(tmp_path / "p.json"),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["schema"] == "pipeplan.plan/2" and data["pp"] == 2
    assert (tmp_path / "p.csv").exists()


def test_bad_flags_exit_2():
    assert run_cli("schedule", "nope", "--pp", "2", "--microbatches", "2").returncode == 2
    assert run_cli("schedule", "1f1b", "--pp", "x", "--microbatches", "2").returncode == 2
    assert run_cli("profile", "no-such-model").returncode == 2
    r = run_cli("run", "/no/such/plan.json")
    assert r.returncode == 2 and "no such file" in r.stderr


def test_schedule_csv(tmp_path):
    r = run_cli("schedule", "GPIPE", "--pp", "2", "--microbatches", "3", "--csv", str(tmp_path / "g.csv"))
    assert r.returncode == 0
    assert (tmp_path / "g.csv").read_text().splitlines() == ["0F0,0F1,0F2,0B0,0B1,0B2", "1F0,1F1,1F2,1B0,1B1,1B2"]
