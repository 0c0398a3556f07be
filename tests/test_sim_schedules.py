"""Schedule names, the spec API the planner uses, and every generated table running deadlock-free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from profiles.clikit import run_commands
from simulator import SCHEDULES, ScheduleError, SimInput, StageCost, make_schedule, read_csv, simulate, write_csv
from simulator.actions import flat_actions, stage_ranks, table_from_text, table_to_text, validate_table
from simulator.cli import SCHEDULE, SIMULATE
from simulator.schedules import canonical_name, schedule_spec

ROOT = Path(__file__).resolve().parents[1]
TORCH_NAMES = ["GPipe", "1F1B", "Interleaved1F1B", "LoopedBFS", "InterleavedZeroBubble", "ZBVZeroBubble", "DualPipeV"]


def test_every_torch_schedule_is_known_in_any_case():
    assert list(SCHEDULES) == TORCH_NAMES
    for name in TORCH_NAMES:
        assert canonical_name(name.upper()) == name == canonical_name(name.lower())
    with pytest.raises(ScheduleError, match="unknown schedule 'PipeDream'.*GPipe"):
        canonical_name("PipeDream")


def test_spec_facts():
    assert not schedule_spec("1f1b").split_backward and schedule_spec("zbvzerobubble").split_backward
    assert schedule_spec("gpipe").allows_virtual(1) and not schedule_spec("gpipe").allows_virtual(2)
    assert schedule_spec("interleaved1f1b").allows_virtual(4)
    assert [schedule_spec("dualpipev").allows_virtual(v) for v in (1, 2, 3)] == [False, True, False]
    assert schedule_spec("Interleaved1F1B").stage_to_rank(2, 2) == {0: 0, 1: 1, 2: 0, 3: 1}
    assert schedule_spec("ZBVZeroBubble").stage_to_rank(3, 2) == {0: 0, 1: 1, 2: 2, 3: 2, 4: 1, 5: 0}
    assert schedule_spec("DualPipeV").num_stages(4, 2) == 8


@pytest.mark.parametrize(
    "name,pp,m,v,needle",
    [
        ("GPipe", 4, 8, 2, "exactly 1 stages per rank"),
        ("ZBVZeroBubble", 4, 8, 1, "exactly 2 stages per rank"),
        ("DualPipeV", 4, 7, 2, "at least 8 microbatches"),
        ("Interleaved1F1B", 4, 9, 2, "2 equal rounds"),
        ("1F1B", 0, 8, 1, "must be >= 1"),
    ],
)
def test_check_explains_impossible_arguments(name, pp, m, v, needle):
    with pytest.raises(ScheduleError, match=needle):
        schedule_spec(name).check(pp, m, v)
    with pytest.raises(ScheduleError):
        make_schedule(name, pp, m, v)


def _grid():
    for name, spec in SCHEDULES.items():
        for pp in (1, 2, 3, 4, 8):
            for v in range(spec.min_virtual, (spec.max_virtual or 3) + 1):
                for m in sorted({1, 2, 3, pp, pp + 1, 2 * pp, 2 * pp * v, 3 * pp + 1}):
                    try:
                        spec.check(pp, m, v)
                    except ScheduleError:
                        continue
                    yield name, pp, m, v


def test_every_allowed_table_is_valid_placed_and_deadlock_free():
    cost = StageCost(1.0, 2.0, 1.0, 1.0, 1, 0, 1, 1)
    count = 0
    for name, pp, m, v in _grid():
        spec = schedule_spec(name)
        table = make_schedule(name, pp, m, v)
        assert validate_table(table) == (spec.num_stages(pp, v), m), (name, pp, m, v)
        assert stage_ranks(table) == spec.stage_to_rank(pp, v), (name, pp, m, v)
        kinds = {a.kind.value for acts in table.values() for a in flat_actions(acts)}
        assert ("W" in kinds) <= spec.split_backward, (name, pp, m, v)
        tl = simulate(SimInput(table, [cost] * spec.num_stages(pp, v)))
        assert tl.step_s >= 3 * m * v, (name, pp, m, v)
        count += 1
    assert count > 150


def test_text_and_csv_round_trip(tmp_path):
    table = make_schedule("DualPipeV", 3, 7, 2)
    assert table_from_text(table_to_text(table)) == table
    assert read_csv(write_csv(table, tmp_path / "t.csv")) == table


class _Result:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def _cli(capsys):
    """Run ``python -m simulator ARGS`` in this process (the module's entry is just run_commands)."""

    def run(*args: str) -> _Result:
        code = run_commands([SCHEDULE, SIMULATE], list(args), prog="python -m simulator")
        out = capsys.readouterr()
        return _Result(code, out.out, out.err)

    return run


def test_python_m_simulator_runs():
    r = subprocess.run(
        [sys.executable, "-m", "simulator", "schedule", "1f1b", "--pp", "2", "--microbatches", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "rank 0: 0F0 0F1 0B0 0B1"


def test_cli_schedule_writes_torch_csv(tmp_path, _cli):
    out = tmp_path / "zb.csv"
    r = _cli(
        "schedule", "interleavedzerobubble", "--pp", "2", "--microbatches", "4", "--virtual", "2", "--csv", str(out)
    )
    assert r.returncode == 0, r.stderr
    assert read_csv(out) == make_schedule("InterleavedZeroBubble", 2, 4, 2)
    assert out.read_text().splitlines()[0].startswith("0F0,0F1,2F0")


def test_cli_simulate_what_if_and_outputs(tmp_path, _cli):
    r = _cli(
        "simulate",
        "--schedule",
        "1F1B",
        "--pp",
        "4",
        "--microbatches",
        "8",
        "--f",
        "1",
        "--b",
        "2",
        "--trace",
        str(tmp_path / "tr.json"),
        "-o",
        str(tmp_path / "tl.json"),
    )
    assert r.returncode == 0, r.stderr
    assert "step time 33.000" in r.stdout and (tmp_path / "tr.json").exists() and (tmp_path / "tl.json").exists()
    r = _cli(
        "simulate",
        "--schedule",
        "ZBVZeroBubble",
        "--pp",
        "2",
        "--microbatches",
        "4",
        "--virtual",
        "2",
        "--f",
        "1",
        "--i",
        "1",
        "--w",
        "1",
        "--comm",
        "0.5",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.lstrip().startswith("{")
    # DualPipeV, p = 2, I = F = W = 1, F&B = 2.5 (overlapped): each rank runs 3 pairs, busy 2m(F + B) - 3 x 0.5
    # = 22.5, plus the bubble (p-1)(F&B + B - 3W) = 1.5 (DeepSeek-V3 Table 2): step 24
    r = _cli(
        "simulate",
        "--schedule",
        "DualPipeV",
        "--pp",
        "2",
        "--microbatches",
        "4",
        "--virtual",
        "2",
        "--f",
        "1",
        "--i",
        "1",
        "--w",
        "1",
        "--fb",
        "2.5",
    )
    assert r.returncode == 0, r.stderr
    assert "step time 24.000" in r.stdout and "22.500" in r.stdout and "OVERLAP_F_B >" in r.stdout


def test_cli_deadlocking_or_invalid_table_exits_2(tmp_path, _cli):
    dead = tmp_path / "dead.csv"
    dead.write_text("0F0,0B0,0F1,0B1\n1F1,1F0,1B0,1B1\n")
    r = _cli("simulate", "--table", str(dead))
    assert r.returncode == 2
    assert "deadlocks" in r.stderr and "rank 1 at step 0 (1F1) waits for 0F1 on rank 0" in r.stderr
    assert "Traceback" not in r.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("0B0,0F0\n1F0,1B0\n")
    r = _cli("simulate", "--table", str(bad))
    assert r.returncode == 2 and "runs before its forward" in r.stderr and "^ here" in r.stderr
    r = _cli("schedule", "DualPipeV", "--pp", "4", "--microbatches", "4", "--virtual", "2")
    assert r.returncode == 2 and "at least 8 microbatches" in r.stderr


def test_simulator_sources_do_not_import_torch():
    # the simulator (and the planner above it) must run without torch
    for path in (ROOT / "simulator").glob("*.py"):
        text = path.read_text()
        assert "import torch" not in text and "from torch" not in text, path.name
    r = subprocess.run(
        [sys.executable, "-c", "import sys, simulator, planner; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
