"""What is written is whole or absent, with the user's mode; first-run conveniences of ``plan``.

In-process checks of the writers and loaders that tests/test_bad_inputs.py drives through
the command line.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
from pathlib import Path

import pytest

import pipeplan
from executor.cli import side_files
from executor.report import load_report
from planner.cluster import Job
from planner.plan import load_plan
from profiles.contract import ContractError, UserError, write_files
from simulator.actions import read_csv, write_csv
from simulator.engine import simulate
from simulator.gantt import write_gantt
from simulator.schedules import make_schedule

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "tests" / "data" / "gpt2-demo-cpu.json"


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_written_files_get_the_umask_mode_and_leave_no_temporary_file(tmp_path):
    old = os.umask(0o027)
    try:
        table = make_schedule("1F1B", 2, 4)
        paths = [
            write_files({tmp_path / "a.json": "{}\n"})[0],
            write_csv(table, tmp_path / "t.csv"),
        ]
        assert all(_mode(p) == 0o640 for p in paths)
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "t.csv"]
    assert read_csv(tmp_path / "t.csv") == table
    os.chmod(tmp_path / "a.json", 0o600)  # a file the user made private stays private when replaced
    write_files({tmp_path / "a.json": "[]\n"})
    assert _mode(tmp_path / "a.json") == 0o600 and (tmp_path / "a.json").read_text() == "[]\n"


def test_a_group_of_files_is_written_whole_or_not_at_all(tmp_path):
    (tmp_path / "plan.json").write_text("old plan")
    (tmp_path / "blocker").write_text("a file where a folder would be needed")
    with pytest.raises(UserError, match="cannot write"):
        write_files({tmp_path / "plan.json": "new plan", tmp_path / "blocker" / "plan.csv": "csv"})
    assert (tmp_path / "plan.json").read_text() == "old plan"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "plan.json"]


def test_write_csv_over_a_folder_fails_in_one_line_and_leaves_no_temporary_file(tmp_path):
    (tmp_path / "t.csv").mkdir()
    with pytest.raises(UserError, match="t.csv"):
        write_csv(make_schedule("1F1B", 2, 2), tmp_path / "t.csv")
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_gantt_png_is_written_without_a_fixed_temporary_name(tmp_path):
    (tmp_path / ".g.png.tmp.png").write_text("another process's file under the old fixed name")
    from simulator.cli import whatif_input

    class Args:
        table = None
        schedule, pp, microbatches, virtual, placement = "1F1B", 2, 4, 1, None
        f, b, i, w, fb, comm = 1.0, None, None, None, None, 0.0

    write_gantt(simulate(whatif_input(Args)), tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG" and _mode(tmp_path / "g.png") == _umask_mode()
    assert (tmp_path / ".g.png.tmp.png").read_text().startswith("another")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".g.png.tmp.png", "g.png"]


def _two_size_profile(path: Path) -> None:
    """The demo profile with a second, measured-looking microbatch size (2: every size-dependent
    figure doubled, plus a constant), so the per-unit fits have two points."""
    d = json.loads(PROFILE.read_text())
    e1 = d["entries"][0]
    e2 = json.loads(json.dumps(e1))
    e2["microbatch_size"] = 2
    for u in e2["units"]:
        for k in ("forward_s", "backward_s", "backward_input_s", "backward_weight_s"):
            u[k] = u[k] * 2 + 1e-4
        for k in ("saved_bytes", "output_bytes"):
            u[k] = u[k] * 2
        u["forward_flops"] = u["forward_flops"] * 2
    d["entries"].append(e2)
    d.pop("fits", None)
    path.write_text(json.dumps(d))


def test_plan_predicts_an_unmeasured_microbatch_size_from_the_fits_and_says_so(tmp_path, monkeypatch, capsys):
    _two_size_profile(tmp_path / "profile.json")
    monkeypatch.chdir(tmp_path)
    argv = ["plan", "profile.json", "--devices", "2", "--pp", "2", "--global-batch", "12", "--microbatch-size", "3"]
    assert pipeplan.main([*argv, "--schedules", "1F1B", "--time-limit", "5", "-o", "plan.json"]) == 0
    out = capsys.readouterr().out
    assert "note: fitted: microbatch size 3 was not measured" in out
    plan = load_plan(tmp_path / "plan.json")
    assert plan.microbatch_size == 3 and any(n.startswith("fitted:") for n in plan.notes)
    three = plan.profile.entry("fp32", 3).units
    one, two = plan.profile.entry("fp32", 1).units, plan.profile.entry("fp32", 2).units
    # on the line through the two measured sizes
    assert three[1].forward_s == pytest.approx(2 * two[1].forward_s - one[1].forward_s)
    assert simulate(plan).step_s > 0


def test_plan_takes_a_stored_profile_by_name_and_quotes_its_torchrun_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "profiles" / "cpu").mkdir(parents=True)
    shutil.copy(PROFILE, tmp_path / "profiles" / "cpu" / "gpt2-demo.json")
    monkeypatch.chdir(tmp_path)
    out_path = "my plans/a;b.json"
    argv = ["plan", "gpt2-demo", "--devices", "2", "--global-batch", "4", "--time-limit", "5", "-o", out_path]
    assert pipeplan.main(argv) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("run it: "))
    assert shlex.split(line)[-1] == out_path  # pasted in a shell, the path stays one argument
    plan = load_plan(tmp_path / out_path)
    assert plan.profile.model_name == "gpt2-demo"
    assert pipeplan.main(["simulate", out_path]) == 0


def test_job_fields_are_typed_one_by_one():
    for bad, field in (
        ({"microbatches": 5}, "microbatches"),
        ({"pp": ["2"]}, "pp[0]"),
        ({"recompute": "yes"}, "recompute"),
        ({"placements": [[0, 99]]}, "placements"),
        ({"global_batch": 2**40}, "global_batch"),
    ):
        with pytest.raises(ContractError, match=field.replace("[", r"\[").replace("]", r"\]")) as e:
            Job.from_dict(bad, "job.json")
        assert "\n" not in str(e.value)


def test_a_run_report_with_wrongly_typed_fields_is_refused_in_one_line(tmp_path):
    good = {
        "schema": "pipeplan.runreport/1",
        "plan": {"path": "plan.json", "sha256": "0" * 64},
        "world_size": 2,
        "backend": "gloo",
        "device": "cpu",
        "step_s": [1.0],
        "ranks": [],
        "events": [],
    }
    (tmp_path / "ok.json").write_text(json.dumps(good))
    assert load_report(tmp_path / "ok.json").step_s == (1.0,)
    for edit, field in (
        ({"extra": 5}, "extra"),
        ({"memory": {"0": [[0.0]]}}, "memory"),
        ({"memory": {"x": []}}, "memory"),
        ({"world_size": 10**9}, "world_size"),
        ({"check": [1]}, "check"),
    ):
        (tmp_path / "bad.json").write_text(json.dumps({**good, **edit}))
        with pytest.raises(ContractError, match=field):
            load_report(tmp_path / "bad.json")


def test_validate_names_its_side_files_beside_the_plan():
    assert [p.name for p in side_files(Path("runs/plan.json"))] == [
        "plan.sim.trace.json",
        "plan.run.trace.json",
        "plan.compare.png",
    ]
