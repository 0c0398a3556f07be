"""Serving objectives: ``throughput`` (samples/s) and ``latency`` (one microbatch through an idle
pipeline) rank forward-only plans differently, the latency the plan reports is the simulator's
for one microbatch, and the latency MILP cuts where the hand-offs are cheapest."""

from __future__ import annotations

import pytest
from conftest import run_cli
from planner_synthetic import record_model

from planner import Cluster, Job, search
from planner.memory import memory_pattern
from planner.milp import StepModel, solve_split
from profiles.types import Profile, ProfileEntry, UnitCost, WholeModel
from simulator import SimInput, make_schedule, simulate


def _profile(path):
    """8 units; a microbatch of 4 takes twice a microbatch of 1 (per sample, twice as efficient)."""
    entries = []
    for b, scale in ((1, 1.0), (4, 2.0)):
        fs = [scale * (1 + i % 3) * 1e-3 for i in range(8)]
        units = tuple(
            UnitCost(f"block{i}", "block", f, 2 * f, f, f, 10**5, 4 * 10**5, 10**6 * b, 10**5 * b, 1e9)
            for i, f in enumerate(fs)
        )
        entries.append(ProfileEntry("fp32", b, units, WholeModel(sum(fs), 2 * sum(fs), 8 * 10**6 * b)))
    Profile("serving", {}, "synthetic", "cpu", 16, "analytic", tuple(entries), {"note": "test"}).save(path)
    return path


@pytest.fixture()
def serving(tmp_path):
    from profiles.types import load_profile

    path = _profile(tmp_path / "serving.json")
    return (
        load_profile(path),
        path,
        Cluster(devices=2, memory_bytes=2**30, intra_bandwidth_Bps=1e9, intra_latency_s=1e-4),
    )


def _job(objective: str) -> Job:
    return Job(global_batch=8, schedules=("1F1B",), forward_only=True, objective=objective)


def test_latency_and_throughput_choose_differently(serving):
    profile, path, cluster = serving
    fast, _ = search(profile, cluster, _job("throughput"), top=3, profile_path=path)
    quick, _ = search(profile, cluster, _job("latency"), top=3, profile_path=path)
    assert fast[0].microbatch_size == 4  # fewer, more efficient microbatches
    assert quick[0].microbatch_size == 1 and quick[0].pp == 1  # the smallest pass, no hand-offs
    assert quick[0].predicted.latency_s < fast[0].predicted.latency_s
    assert fast[0].predicted.throughput > quick[0].predicted.throughput
    assert [p.predicted.latency_s for p in quick] == sorted(p.predicted.latency_s for p in quick)
    assert [p.predicted.throughput for p in fast] == sorted((p.predicted.throughput for p in fast), reverse=True)


def test_reported_latency_is_one_simulated_microbatch(serving):
    profile, path, cluster = serving
    plans, _ = search(
        profile,
        cluster,
        Job(global_batch=8, schedules=("1F1B",), forward_only=True, pp=(2,), objective="latency"),
        top=1,
        profile_path=path,
    )
    p = plans[0]
    one = {r: [a for a in acts if a.kind.value == "F"] for r, acts in make_schedule("1F1B", p.pp, 1).items()}
    inp = p.sim_input()
    alone = simulate(SimInput(one, inp.costs, inp.links, forward_only=True))
    assert p.predicted.latency_s == pytest.approx(alone.step_s, rel=1e-12)
    assert p.predicted.latency_s < p.predicted.step_s  # the batch takes longer than one microbatch


def test_latency_milp_cuts_at_the_cheapest_hand_off():
    # uneven work (a step-time split would cut near the middle) but one tiny output at unit 1
    sends = [5000, 1, 5000, 5000, 5000, 5000]  # bytes, at 1 MB/s: 5 ms and 1 us
    units = record_model([(f, 0.0, 0.0, 10, 0, s) for f, s in zip([1, 1, 1, 1, 1, 1], sends)], 1e6)
    table = {r: [a for a in acts if a.kind.value == "F"] for r, acts in make_schedule("1F1B", 2, 4).items()}
    common = dict(microbatches=4, rank_of=(0, 1), memory=memory_pattern(table, True), forward_only=True)
    latency = solve_split(units, StepModel(**common, latency=True), 10**6)
    step = solve_split(units, StepModel(**common), 10**6)
    assert latency.bounds == [(0, 2), (2, 6)]
    assert step.bounds == [(0, 3), (3, 6)]


def test_latency_objective_needs_forward_only(tiny_profile_path, tmp_path):
    r = run_cli("plan", str(tiny_profile_path), "--objective", "latency", "-o", str(tmp_path / "p.json"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "--forward-only" in r.stderr and "--objective latency" in r.stderr


def test_search_tells_its_phases_as_it_goes(serving):
    """What ``pipeplan plan`` shows beside its progress bar: the screen, each MILP, the recipes
    joining the candidates, then the refinement, in that order."""
    profile, path, cluster = serving
    said: list[str] = []
    search(profile, cluster, _job("throughput"), top=2, profile_path=path, progress=said.append)
    phases = [s.split()[0] for s in said]
    assert phases[0] == "screening" and phases[-1] == "refining", said
    assert phases.index("MILP") < phases.index("the") < phases.index("refining"), said
