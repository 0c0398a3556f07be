"""The search is bounded by work, not by the clock: the same inputs give the same plans however
fast or busy the machine is, and a MILP without an answer never drops its candidate."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from planner import PRESET_CLUSTERS, Job, search
from planner.milp import SolverError
from profiles.types import load_profile
from simulator.schedules import CUSTOM, SCHEDULES

GPT2 = Path(__file__).resolve().parent / "data" / "gpt2-demo-cpu.json"
SEARCH = importlib.import_module("planner.search")
REFINE = importlib.import_module("planner.refine")
SOLVERS = importlib.import_module("planner.solvers")


def _job() -> Job:
    return Job(global_batch=8, schedules=(*SCHEDULES, CUSTOM.name), recompute=("none", "full"))


def _plans() -> list[dict]:
    profile = load_profile(GPT2)
    cluster = PRESET_CLUSTERS["cpu-local"]
    plans, _ = search(profile, cluster, _job(), top=3, profile_path=GPT2)
    return [json.dumps(p.to_dict(), sort_keys=True) for p in plans]


class _SlowClock:
    """A clock on which every reading is ``step`` seconds after the last: a machine so busy that
    any wall-clock budget would be spent at once."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def perf_counter(self) -> float:
        self.now += self.step
        return self.now

    def __getattr__(self, name):  # everything else as the time module has it
        import time

        return getattr(time, name)


def test_a_busy_machine_gets_the_same_plans_byte_for_byte(monkeypatch):
    quiet = _plans()
    for module in (SEARCH, SOLVERS):  # the refinement reads no clock at all
        monkeypatch.setattr(module, "time", _SlowClock(1000.0))
    busy = _plans()
    assert busy == quiet


def test_plans_carry_no_wall_clock_figure():
    for text in _plans():
        assert '"time_s"' not in text


def test_a_milp_without_an_answer_keeps_its_candidate_at_the_balanced_split(monkeypatch):
    def no_answer(*args, **kwargs):
        raise SolverError("the highs solver ended with status NoSolution for 2 stages, m=8")

    monkeypatch.setattr(SEARCH, "solve_split", no_answer)
    monkeypatch.setattr(REFINE, "solve_split", no_answer)
    profile = load_profile(GPT2)
    plans, stats = search(profile, PRESET_CLUSTERS["cpu-local"], _job(), top=3, profile_path=GPT2)
    assert plans and all(p.solver["status"] == "balanced split" for p in plans)
    assert any("kept its balanced split" in n for n in stats.notes)


@pytest.mark.parametrize("nodes", [0, 1])
def test_a_node_limit_returns_the_start_never_optimal(nodes):
    from planner_synthetic import record_model

    from planner.memory import memory_pattern
    from planner.milp import StepModel, available_solvers, solve_split
    from simulator import make_schedule
    from simulator.costs import Option

    costs = record_model([(1.0 + (i % 5), 2.0 + (i % 3), 1.0, 10**6, 10**6, 1000) for i in range(24)], 1e6)
    table = make_schedule("1F1B", 4, 8)
    model = StepModel(8, tuple(range(4)), memory_pattern(table))
    start = ([(0, 6), (6, 12), (12, 18), (18, 24)], [Option()] * 4)
    for solver in available_solvers():
        res = solve_split(costs, model, 10**12, solver=solver, start=start, nodes=nodes)
        assert res is not None and res.status in ("NodeLimit", "Optimal")
        if res.status == "Optimal":
            assert res.gap is not None and res.gap <= 1e-4
        at_start = solve_split(costs, model, 10**12, solver=solver, start=start, nodes=0)
        assert res.objective <= at_start.objective * (1 + 1e-9)
        again = solve_split(costs, model, 10**12, solver=solver, start=start, nodes=nodes)
        assert (again.bounds, again.objective, again.status) == (res.bounds, res.objective, res.status)
