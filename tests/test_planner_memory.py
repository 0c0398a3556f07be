"""The MILP's memory model per schedule equals the simulator's memory timeline: the peak per
rank computed from the schedule's memory pattern is the simulated peak, byte for byte."""

from __future__ import annotations

import random

import pytest

from planner.memory import memory_pattern, peak_bytes
from simulator import ScheduleError, SimInput, StageCost, make_schedule, simulate
from simulator.schedules import SCHEDULES


def _accepts(name: str, pp: int, m: int, v: int) -> bool:
    try:
        SCHEDULES[name].check(pp, m, v)
    except ScheduleError:
        return False
    return True


# every (schedule, pp, m, v) the schedule accepts; e.g. DualPipeV needs m >= 2 pp, so pp=3, m=4 is not a case
CASES = sorted(
    {
        (name, pp, m, v if SCHEDULES[name].allows_virtual(v) else SCHEDULES[name].min_virtual)
        for name in SCHEDULES
        for pp in (2, 3, 4)
        for m in (4, 8, 12)
        for v in ((1, 2) if SCHEDULES[name].max_virtual != 1 else (1,))
    }
)
CASES = [c for c in CASES if _accepts(*c)]


def _costs(rng: random.Random, S: int) -> list[StageCost]:
    out = []
    for _ in range(S):
        f = rng.uniform(1, 3)
        act = rng.randint(10**5, 10**7)
        out.append(
            StageCost(
                f,
                2 * f,
                f,
                f,
                act,
                rng.randint(10**6, 10**8),
                1000,
                1000,
                10**6,
                keep_bytes=int(act * rng.choice([0.5, 0.3])),
            )
        )
    return out


@pytest.mark.parametrize("name,pp,m,v", CASES)
def test_pattern_peak_equals_simulated_peak(name, pp, m, v):
    spec = SCHEDULES[name]
    table = make_schedule(name, pp, m, v)
    rng = random.Random(hash((name, pp, m, v)) & 0xFFFF)
    S = spec.num_stages(pp, v)
    costs = _costs(rng, S)
    timeline = simulate(SimInput(table, costs))
    predicted = peak_bytes(memory_pattern(table), costs)
    assert {r.rank: r.peak_bytes for r in timeline.ranks} == predicted


def test_known_patterns():
    # 1F1B keeps p - s microbatches on stage s; GPipe keeps all m
    pat = memory_pattern(make_schedule("1F1B", 4, 8))
    assert [pat.max_in_flight(s) for s in range(4)] == [4, 3, 2, 1]
    pat = memory_pattern(make_schedule("GPipe", 4, 8))
    assert [pat.max_in_flight(s) for s in range(4)] == [8] * 4


def test_forward_only_holds_weights_only():
    table = {r: [a for a in acts if a.kind.value == "F"] for r, acts in make_schedule("GPipe", 2, 4).items()}
    costs = [StageCost(1, 2, 1, 1, 10**6, 4 * 10**6, 10, 10, 10**6) for _ in range(2)]
    assert peak_bytes(memory_pattern(table, True), costs, True) == {0: 10**6, 1: 10**6}


def test_milp_memory_equals_the_simulated_peak_when_stage_0_defers_its_w(tmp_path):
    """Stage 0 has no input gradient, so it keeps all its activations from I until W (the
    cost layer's first-stage rule): a table that defers stage 0's W holds them, and the MILP's
    least memory is the simulated peak of its split. (The built-in schedules run stage 0's W
    before its next forward, so only a table of one's own shows it.)"""
    from planner_synthetic import random_units, synthetic_profile

    from planner import Cluster, Job
    from planner.candidate import Candidate
    from planner.milp import StepModel, min_memory_split
    from planner.pricing import cost_model
    from planner.scoring import Context, build_plan
    from profiles.types import load_profile
    from simulator.actions import table_from_text
    from simulator.costs import Option

    path = synthetic_profile(random_units(random.Random(7), 6), tmp_path / "p.json")
    profile = load_profile(path)
    table = table_from_text({"0": ["0F0", "0F1", "1F0", "1I0", "0I0", "1F1", "1I1", "0I1", "1W0", "1W1", "0W0", "0W1"]})
    job = Job(global_batch=2, microbatch_size=1, schedules=("1F1B",), pp=(1,))
    cluster = Cluster(devices=1, memory_bytes=10**15)
    model = StepModel(2, (0, 0), memory_pattern(table), split_backward=True)
    need, bounds = min_memory_split(cost_model(profile, cluster, job, 1), model)
    c = Candidate.named("1F1B", pp=1, m=2, virtual=2)
    p = build_plan(Context(profile, str(path), cluster, job), c, bounds, [Option()] * 2, table=table)
    assert max(p.predicted.peak_bytes) == need  # both read the same records
