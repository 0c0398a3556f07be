"""Custom placements: ``placement_table`` for any stage -> rank map, and the ``Custom`` name.

Tables for random placements are valid, deadlock-free under any costs, keep the in-flight
cap, and on the 1F1B placement with unit durations are 1F1B's table action for action."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator import Links, ScheduleError, SimInput, StageCost, simulate
from simulator.actions import Kind, read_csv, stage_ranks, validate_table, write_csv
from simulator.generators import one_f_one_b
from simulator.placement import check_placement, most_stages_per_rank, parse_placement, placement_table
from simulator.schedules import SCHEDULES, canonical_name, make_schedule, schedule_spec


@st.composite
def placements(draw):
    """Any map where every rank 0..p-1 holds at least one stage, stages in any order."""
    p = draw(st.integers(1, 4))
    extra = draw(st.lists(st.integers(0, p - 1), max_size=5))
    stages = list(range(p)) + extra
    return draw(st.permutations(stages))


def _uniform(S: int, f: float = 1.0, b: float = 2.0) -> list[StageCost]:
    return [
        StageCost(f, b, b / 2, b / 2, activation_bytes=1, static_bytes=0, output_bytes=1, input_bytes=1)
        for _ in range(S)
    ]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(placements(), st.integers(1, 9), st.lists(st.integers(1, 8), min_size=16, max_size=16), st.booleans())
def test_random_placements_give_valid_tables_that_run_under_any_costs(placement, m, times, ordered):
    S = len(placement)
    durations = [(times[s % 8] / 4, times[8 + s % 8] / 4) for s in range(S)] if ordered else None
    table = placement_table(placement, m, durations)
    assert validate_table(table, S, m) == (S, m)  # every F and B once per microbatch, F before B
    assert stage_ranks(table) == dict(enumerate(placement))
    assert all(a.kind in (Kind.F, Kind.B) for acts in table.values() for a in acts)
    # in flight on stage s (forward started, backward not yet) never above S - s
    for r, acts in table.items():
        live = [0] * S
        for a in acts:
            live[a.stage] += 1 if a.kind is Kind.F else -1
            assert live[a.stage] <= S - a.stage, (placement, r, a)
    # no deadlock whatever the real costs (other than the ones that ordered it) and links
    rng = random.Random(m * 31 + S)
    costs = [
        StageCost(
            rng.uniform(0.1, 3),
            rng.uniform(0.1, 5),
            0.0,
            0.0,
            activation_bytes=1,
            static_bytes=0,
            output_bytes=10,
            input_bytes=10,
        )
        for _ in range(S)
    ]
    tl = simulate(SimInput(table, costs, Links(latency_s=0.25, bandwidth_Bps=100.0)))
    work = max(
        sum(m * (costs[s].forward_s + costs[s].backward_s) for s in range(S) if placement[s] == r) for r in table
    )
    assert tl.step_s >= work - 1e-9


@pytest.mark.parametrize("p", range(1, 7))
def test_the_1f1b_placement_gives_1f1b_and_its_step_time(p):
    for m in range(1, 10):
        table = placement_table(list(range(p)), m)
        assert table == one_f_one_b(p, m, 1), (p, m)
        tl = simulate(SimInput(table, _uniform(p), Links(latency_s=0.0)))
        assert tl.step_s == pytest.approx((m + p - 1) * 3.0)  # (m + p - 1)(f + b)


def test_a_rank_with_two_stages_overlaps_them_when_ordered_by_their_costs():
    """[0, 1, 0]: rank 0 holds a light first and a heavy last stage; rank 1 one middle stage.
    Ordered by the stage times, the table keeps both ranks busier than unit order does."""
    costs = [
        StageCost(1.0, 2.0, 1.0, 1.0, 1, 0, 1, 1),
        StageCost(3.0, 6.0, 3.0, 3.0, 1, 0, 1, 1),
        StageCost(2.0, 4.0, 2.0, 2.0, 1, 0, 1, 1),
    ]
    unit = placement_table([0, 1, 0], 8)
    ordered = placement_table([0, 1, 0], 8, [(c.forward_s, c.backward_s) for c in costs])
    t_unit = simulate(SimInput(unit, costs, Links(latency_s=0.0))).step_s
    t_ordered = simulate(SimInput(ordered, costs, Links(latency_s=0.0))).step_s
    assert t_ordered < t_unit
    # both ranks do 9 per microbatch: 72 of work plus a fill and drain, at most one microbatch's pass
    assert 72.0 <= t_ordered <= 72.0 + 18.0


def test_placements_that_leave_a_rank_idle_are_refused_naming_the_flag():
    for bad, why in (([0, 2], "rank 1 holds no stage"), ([], "empty"), ([-1, 0], "numbered from 0")):
        with pytest.raises(ScheduleError, match="--placement") as e:
            check_placement(bad)
        assert why in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ScheduleError, match="--placement 0,x"):
        parse_placement("0,x")
    assert parse_placement("0, 1,0") == [0, 1, 0] and most_stages_per_rank([0, 1, 0]) == 2
    with pytest.raises(ScheduleError, match="lower --pp"):
        check_placement([0, 1], pp=3)


def test_custom_is_a_schedule_name_whose_placement_is_its_table(tmp_path):
    assert canonical_name("custom") == "Custom" and schedule_spec("CUSTOM").name == "Custom"
    assert "Custom" not in SCHEDULES  # the search does not make it from (pp, m, v)
    with pytest.raises(ScheduleError, match="--placement"):
        make_schedule("Custom", 2, 4)
    with pytest.raises(ScheduleError, match="stage_ranks"):
        schedule_spec("Custom").stage_to_rank(2, 1)
    table = placement_table([0, 0, 1, 0], 5)
    assert read_csv(write_csv(table, tmp_path / "custom.csv")) == table
    assert stage_ranks(read_csv(tmp_path / "custom.csv")) == {0: 0, 1: 0, 2: 1, 3: 0}


def test_schedule_and_simulate_commands_take_a_placement(tmp_path):
    from conftest import run_cli

    r = run_cli("schedule", "custom", "--placement", "0,1,0", "--microbatches", "2", "--csv", str(tmp_path / "c.csv"))
    assert r.returncode == 0, r.stderr
    assert read_csv(tmp_path / "c.csv") == placement_table([0, 1, 0], 2)
    assert r.stdout.splitlines()[1] == "rank 1: 1F0 1F1 1B0 1B1"
    r = run_cli("simulate", "--schedule", "Custom", "--placement", "0,1", "--microbatches", "3", "--f", "1", "--b", "2")
    assert r.returncode == 0 and r.stdout.startswith("step time 12.000"), r.stdout + r.stderr  # 1F1B: (3+1)(1+2)
    for args, why in (
        (["Custom", "--microbatches", "2"], "Custom needs --placement"),
        (["1F1B", "--placement", "0,1", "--microbatches", "2"], "--placement goes with the Custom"),
        (["Custom", "--placement", "0,1", "--pp", "3", "--microbatches", "2"], "rank 2 holds no stage"),
    ):
        r = run_cli("schedule", *args)
        assert r.returncode == 2 and why in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)


@pytest.mark.parametrize("placement", [[0, 1, 0], [0, 0, 1], [1, 0, 1, 0], [0, 1, 2, 0], [2, 0, 1, 1, 0]])
def test_torch_accepts_custom_csvs_and_lowers_them_with_communication(placement, tmp_path):
    """torch 2.13's own checks on our CSV, rank by rank: ``_validate_schedule`` (every F/B, the
    stage -> rank map it infers) and ``_add_send_recv``, the lowering its runtime runs, which
    fails when a receive could never be matched by a send."""
    ts = pytest.importorskip("torch.distributed.pipelining.schedules")
    import csv

    m = 4
    path = write_csv(
        placement_table(placement, m, [(1.0 + s, 2.0 + s) for s in range(len(placement))]), tmp_path / "custom.csv"
    )
    with open(path, newline="") as f:
        actions = {r: [ts._Action.from_str(x) for x in row] for r, row in enumerate(csv.reader(f))}
    ranks = max(placement) + 1
    assert ts._validate_schedule(actions, ranks, len(placement), m) == dict(enumerate(placement))
    lowered = ts._add_send_recv(actions, lambda s: placement[s], len(placement))
    sends = sum(a.computation_type == ts._ComputationType.SEND_F for acts in lowered.values() for a in acts)
    assert sends == m * sum(placement[s] != placement[s + 1] for s in range(len(placement) - 1))
