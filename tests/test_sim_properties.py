"""Hypothesis: invariants of every simulated step, for any schedule, costs and links."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator import SCHEDULES, Links, ScheduleError, SimInput, StageCost, simulate
from simulator.actions import flat_actions
from simulator.schedules import make_schedule, schedule_spec

EPS = 1e-9


@st.composite
def sim_inputs(draw):
    name = draw(st.sampled_from(sorted(SCHEDULES)))
    spec = schedule_spec(name)
    p = draw(st.integers(1, 5))
    v = draw(st.integers(spec.min_virtual, spec.max_virtual or 3))
    m = draw(st.integers(1, 12))
    try:
        spec.check(p, m, v)
    except ScheduleError:
        m = 2 * p * v  # a multiple of p, enough for every schedule
        spec.check(p, m, v)
    time = st.integers(0, 8).map(lambda k: k / 4)  # multiples of 1/4: exact in binary
    costs = []
    for _ in range(spec.num_stages(p, v)):
        f, i, w = draw(time), draw(time), draw(time)
        costs.append(
            StageCost(
                f,
                i + w,
                i,
                w,
                activation_bytes=draw(st.integers(0, 50)),
                static_bytes=draw(st.integers(0, 9)),
                output_bytes=draw(st.integers(0, 100)),
                input_bytes=draw(st.integers(0, 100)),
                overlap_f_b_s=draw(st.one_of(st.none(), time)),
            )
        )  # DualPipeV's F&B
    links = Links(
        latency_s=draw(time),
        bandwidth_Bps=draw(st.sampled_from([float("inf"), 100.0])),
        inter_latency_s=draw(time),
        devices_per_node=draw(st.integers(1, 4)),
        overlap=draw(st.booleans()),
    )
    return SimInput(make_schedule(name, p, m, v), costs, links)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sim_inputs())
def test_invariants(inp):
    tl = simulate(inp)
    owner = {a.stage: r for r, acts in inp.table.items() for a in flat_actions(acts)}
    links, costs = inp.links, inp.costs
    # one action at a time per rank, in table order
    by_rank: dict[int, list] = {}
    for e in tl.events:
        by_rank.setdefault(e.rank, []).append(e)
    for r, evs in by_rank.items():
        assert [(e.stage, e.kind, e.microbatch) for e in evs] == [
            (a.stage, a.kind.value, a.microbatch) for a in flat_actions(inp.table[r])
        ]
        for a, b in zip(evs, evs[1:]):
            assert b.start_s >= a.end_s - EPS
    # every dependency respected, transfer time included
    ev = {(e.stage, e.kind, e.microbatch): e for e in tl.events}
    S = len(costs)
    for (s, k, m), e in ev.items():
        if k == "F" and s > 0:
            src = ev[(s - 1, "F", m)]
            assert e.start_s >= src.end_s + links.transfer_s(owner[s - 1], owner[s], costs[s - 1].output_bytes) - EPS
        if k in ("B", "I"):
            assert e.start_s >= ev[(s, "F", m)].end_s - EPS
            if s < S - 1:
                src = ev.get((s + 1, "B", m)) or ev[(s + 1, "I", m)]
                assert e.start_s >= src.end_s + links.transfer_s(owner[s + 1], owner[s], costs[s + 1].input_bytes) - EPS
        if k == "W":
            assert e.start_s >= ev[(s, "I", m)].end_s - EPS
    # the step is at least the busiest rank's work; bubble fractions are fractions
    assert tl.step_s >= max(r.busy_s for r in tl.ranks) - EPS
    assert all(-EPS <= r.bubble_fraction <= 1 + EPS for r in tl.ranks)
    # memory returns to the static level, and the peak is at least it
    for r in tl.ranks:
        assert r.peak_bytes >= tl.memory[r.rank][0][1] == tl.memory[r.rank][-1][1]
    # deterministic: same input, same bytes
    assert json.dumps(simulate(inp).to_dict()) == json.dumps(tl.to_dict())


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 4), st.integers(1, 4), st.randoms(use_true_random=False))
def test_shuffled_tables_either_run_or_explain(p, m, rnd):
    """Any per-rank permutation of a valid table is either simulated or refused with a ScheduleError."""
    table = make_schedule("1F1B", p, m)
    table = {r: rnd.sample(acts, len(acts)) for r, acts in table.items()}
    cost = StageCost(1.0, 2.0, 1.0, 1.0, 1, 0, 1, 1)
    try:
        tl = simulate(SimInput(table, [cost] * p))
    except ScheduleError as e:
        assert "deadlocks" in str(e) or "before its forward" in str(e)
    else:
        assert tl.step_s >= 3 * m
