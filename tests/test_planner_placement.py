"""Custom placements in the planner: a placement scored (given or MILP split), the search's
Custom family winning only where its simulated step is faster, plans that save and load, and
the command line's ``--placement`` with its one-line errors."""

from __future__ import annotations

import itertools
import json

import pytest
from conftest import run_cli
from planner_synthetic import synthetic_profile

from planner import Cluster, Job, search
from planner.candidate import Candidate
from planner.given import score_split
from planner.plan import load_plan
from planner.scoring import Context, build_plan
from profiles.types import load_profile
from simulator.actions import read_csv, stage_ranks
from simulator.costs import Option

CLUSTER = Cluster(devices=2, memory_bytes=2**30)


def _profile(tmp_path, ms: tuple[float, ...], name: str):
    units = [{"f": f * 1e-3, "b": 2 * f * 1e-3, "params": 1000, "saved": 1000, "out": 100} for f in ms]
    path = synthetic_profile(units, tmp_path / f"{name}.json", name)
    return load_profile(path), path


def _best_contiguous_1f1b(profile, path, m: int) -> float:
    job = Job(global_batch=m, microbatch_size=1)
    U = profile.num_units
    ctx, two = Context(profile, str(path), CLUSTER, job), Candidate.named("1F1B", pp=2, m=m)
    return min(build_plan(ctx, two, [(0, c), (c, U)], [Option()] * 2).predicted.step_s for c in range(1, U))


def test_a_heavy_middle_unit_makes_the_wrap_placement_win(tmp_path):
    """Units 1,3,1,1 on 2 ranks: any contiguous split leaves one rank 4 of 6; the wrap [0, 1, 0]
    gives rank 0 the first and last units (1 + 2) and rank 1 the heavy one (3)."""
    profile, path = _profile(tmp_path, (1, 3, 1, 1), "heavy-middle")
    plans, _ = search(
        profile,
        CLUSTER,
        Job(global_batch=8, microbatch_size=1, schedules=("1F1B", "Custom"), pp=(2,)),
        top=3,
        profile_path=path,
    )
    best = plans[0]
    assert best.schedule == "Custom" and [s.rank for s in best.stages] == [0, 1, 0]
    assert best.virtual == 2 and stage_ranks(best.table) == {0: 0, 1: 1, 2: 0}
    assert best.predicted.step_s < 0.9 * _best_contiguous_1f1b(profile, path, 8)
    assert any(p.schedule == "1F1B" for p in plans)  # simulated beside it, and slower
    saved = load_plan(best.save(tmp_path / "custom.json"))
    assert saved.schedule == "Custom" and saved.table == best.table and saved.stages == best.stages


def test_the_custom_family_does_not_win_where_contiguous_stages_balance(tmp_path):
    profile, path = _profile(tmp_path, (1, 1, 1, 1, 1, 1), "uniform")
    plans, _ = search(
        profile,
        CLUSTER,
        Job(global_batch=8, microbatch_size=1, schedules=("1F1B", "Custom"), pp=(2,)),
        top=4,
        profile_path=path,
    )
    assert plans[0].schedule == "1F1B"
    custom = [p for p in plans if p.schedule == "Custom"]
    assert custom and all(p.predicted.step_s > plans[0].predicted.step_s for p in custom)


def test_score_split_with_a_placement(tmp_path):
    profile, path = _profile(tmp_path, (1, 3, 1, 1), "given")
    job = Job(global_batch=8, microbatch_size=1)
    p = score_split(profile, CLUSTER, job, [1, 2], placement=[0, 1, 0], profile_path=path)
    assert p.schedule == "Custom" and p.pp == 2 and p.bounds == [(0, 1), (1, 2), (2, 4)]
    # ordered by the stage times: within one microbatch's pass of the 9 ms per microbatch both ranks do
    assert 8 * 9e-3 <= p.predicted.step_s <= 8 * 9e-3 + 18e-3
    every = min(
        score_split(profile, CLUSTER, job, list(c), placement=[0, 1, 0], profile_path=path).predicted.step_s
        for c in itertools.combinations(range(1, 4), 2)
    )
    assert every == pytest.approx(p.predicted.step_s)  # the best of the three splits
    with pytest.raises(Exception, match="--split has 2 stages but --placement 0,1,0 makes 3"):
        score_split(profile, CLUSTER, job, [2], placement=[0, 1, 0], profile_path=path)


def test_cli_placement_scores_it_and_refuses_bad_ones_in_one_line(tmp_path):
    _, path = _profile(tmp_path, (1, 3, 1, 1), "cli")
    out = tmp_path / "plan.json"
    r = run_cli(
        "plan",
        str(path),
        "--devices",
        "2",
        "--global-batch",
        "8",
        "--microbatch-size",
        "1",
        "--placement",
        "0,1,0",
        "-o",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert "Custom" in r.stdout
    data = json.loads(out.read_text())
    assert data["schedule"]["name"] == "Custom" and [s["rank"] for s in data["stages"]] == [0, 1, 0]
    assert stage_ranks(read_csv(out.with_suffix(".csv"))) == {0: 0, 1: 1, 2: 0}
    for bad, why in (
        ("0,2", "rank 1 holds no stage"),
        ("0,a", "comma-separated"),
        ("0,1,2", "--devices 3"),
        ("0,1,0,1,0", "at most 4 stages"),
    ):
        r = run_cli(
            "plan",
            str(path),
            "--devices",
            "2",
            "--global-batch",
            "8",
            "--placement",
            bad,
            "-o",
            str(tmp_path / "bad.json"),
        )
        assert r.returncode == 2 and r.stderr.count("\n") == 1, (bad, r.stderr)
        assert "--placement" in r.stderr and why in r.stderr and "Traceback" not in r.stderr, (bad, r.stderr)


def test_serving_plans_can_be_custom_too(tmp_path):
    """Forward-only throughput: the wrap's rank loads (1 + 1 | 3 of F) beat any contiguous split's."""
    profile, path = _profile(tmp_path, (1, 3, 1, 1), "serving")
    job = Job(
        global_batch=8,
        microbatch_size=1,
        schedules=("1F1B", "Custom"),
        pp=(2,),
        forward_only=True,
        objective="throughput",
    )
    best = search(profile, CLUSTER, job, top=3, profile_path=path)[0][0]
    assert best.schedule == "Custom" and [s.rank for s in best.stages] == [0, 1, 0]
    assert {a.kind.value for acts in best.table.values() for a in acts} == {"F"}
