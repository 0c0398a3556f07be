"""Solver-status handling: infeasible models, time limits (never reported as Optimal), gaps,
the HiGHS banner kept off stdout, and the exit-2 contract of ``python -m planner plan``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pulp
import pytest
from planner_synthetic import record_model

from planner.memory import memory_pattern
from planner.milp import StepModel, available_solvers, min_memory_split, solve_split
from planner.solvers import solve as _solve
from simulator import make_schedule
from simulator.costs import Option

ROOT = Path(__file__).resolve().parent.parent
GPT2 = ROOT / "tests" / "data" / "gpt2-demo-cpu.json"
SOLVERS = available_solvers()


def _units(n: int = 8):
    return record_model([(1.0 + (i % 3), 2.0 + (i % 3), 1.0, 10**6, 10**6, 1000) for i in range(n)], 1e6)


def _model(pp: int = 2, m: int = 4) -> StepModel:
    table = make_schedule("1F1B", pp, m)
    return StepModel(m, tuple(range(pp)), memory_pattern(table))


@pytest.mark.parametrize("solver", SOLVERS)
def test_optimal_answer_reports_zero_gap(solver):
    res = solve_split(_units(), _model(), 10**9, solver=solver)
    assert res.status == "Optimal" and res.solver == solver
    assert res.gap is not None and res.gap <= 1e-4
    assert [e - f for f, e in res.bounds] and res.bounds[0][0] == 0 and res.bounds[-1][1] == 8


@pytest.mark.parametrize("solver", SOLVERS)
def test_infeasible_memory_gives_none_and_the_least_memory(solver):
    units, model = _units(), _model()
    assert solve_split(units, model, 10**6, solver=solver) is None
    need, bounds = min_memory_split(units, model, solver=solver)
    assert need > 10**6
    assert solve_split(units, model, int(need) + 1, solver=solver) is not None


def _hard_knapsack(n: int = 60) -> pulp.LpProblem:
    prob = pulp.LpProblem("knapsack", pulp.LpMaximize)
    x = [prob.add_variable(f"x_{i}", cat="Binary") for i in range(n)]
    w = [1000 + (i * 7919) % 997 for i in range(n)]
    prob += pulp.lpSum((wi + (i * 31) % 17) * xi for i, (wi, xi) in enumerate(zip(w, x))), "value"
    for k in range(5):
        prob += pulp.lpSum(((wi * (k + 3)) % 1009 + 1) * xi for wi, xi in zip(w, x)) <= 12000 + 17 * k, f"cap_{k}"
    return prob


@pytest.mark.parametrize("solver", SOLVERS)
def test_time_limit_is_never_optimal(solver):
    facts = _solve(_hard_knapsack(), time_limit=0.05, solver=solver)
    if facts.status == "Optimal":  # solved within the limit: then the gap must be closed
        assert facts.gap is not None and facts.gap <= 1e-4
    else:
        assert facts.status in ("TimeLimit", "NoSolution")
        if facts.status == "TimeLimit":
            assert facts.gap is not None


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "planner", "plan", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )


def test_json_stdout_is_one_object(tmp_path):
    r = _cli(str(GPT2), "--devices", "2", "--pp", "2", "--json", "--solver", "auto", "-o", str(tmp_path / "p.json"))
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)  # the HiGHS banner would break this
    assert plan["schema"] == "pipeplan.plan/2" and plan["solver"]["status"] in (
        "Optimal",
        "TimeLimit",
        "balanced split",
    )


def test_infeasible_job_exits_2_with_one_line(tmp_path):
    r = _cli(str(GPT2), "--devices", "2", "--device-memory", "100MiB", "-o", str(tmp_path / "p.json"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "GiB" in lines[0] and "lever" in lines[0]


def test_split_over_memory_exits_2_naming_the_stage(tmp_path):
    # --recompute none: with recompute allowed (the default), the split fits by recomputing its stages
    r = _cli(
        str(GPT2), "--devices", "2", "--device-memory", "300MiB", "--split", "1", "--recompute", "none",
        "-o", str(tmp_path / "p.json"),
    )  # fmt: skip
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert "stage 1" in r.stderr and "over by" in r.stderr


def test_given_split_scores(tmp_path):
    r = _cli(
        str(GPT2),
        "--devices",
        "2",
        "--split",
        "even",
        "--pp",
        "2",
        "--schedules",
        "GPipe",
        "-o",
        str(tmp_path / "p.json"),
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p.csv").exists() and "torchrun" in r.stdout


def test_one_stage_one_microbatch_plans(tmp_path):
    """pp = 1 with a single microbatch per replica (a MILP with no split to choose) plans, not crashes."""
    from planner import Cluster, Job, plan
    from profiles import load_profile

    profile = load_profile(GPT2)
    plans = plan(
        profile,
        Cluster(devices=8, memory_bytes=8 * 2**30),
        Job(global_batch=8, microbatch_size=1, pp=(1,)),
        top=1,
        profile_path=GPT2,
    )
    assert plans[0].pp == 1 and plans[0].dp == 8 and plans[0].microbatches == 1


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_start_is_an_answer_even_when_the_time_limit_hits_first(solver):
    """A MIP start (the screened split) is the solver's first incumbent: a time limit too short to
    find any split still returns one (the start or better), never NoSolution."""
    units = record_model([(1.0 + (i * 7) % 5, 2.0 + (i * 3) % 4, 1.0, 10**6, 10**6, 1000) for i in range(60)], 1e6)
    model = StepModel(16, tuple(range(16)), memory_pattern(make_schedule("1F1B", 16, 16)))
    edges = [0, *range(4, 60, 4)] + [60]  # 15 cuts: 16 stages of 4 units (the last of 4 too)
    start = (list(zip(edges[:-1], edges[1:])), [Option()] * 16)
    res = solve_split(units, model, 10**9, time_limit=0.001, solver=solver, start=start)
    assert res is not None and res.status in ("Optimal", "TimeLimit")
    assert res.bounds[0][0] == 0 and res.bounds[-1][1] == 60 and len(res.bounds) == 16
