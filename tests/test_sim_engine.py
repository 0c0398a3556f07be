"""Tiny simulator cases with answers worked out by hand: transfers, memory, deadlocks, outputs."""

from __future__ import annotations

import gc
import json

import pytest

from simulator import Links, ScheduleError, SimInput, StageCost, load_timeline, make_schedule, simulate, write_trace
from simulator.actions import parse_action, validate_table


def T(rows: dict[int, str]):
    return {r: [parse_action(x) for x in text.split()] for r, text in rows.items()}


def cost(f=1.0, b=2.0, i=1.0, w=1.0, act=0, static=0, out=1, inp=1, param=0, keep=0.5):
    return StageCost(f, b, i, w, act, static, out, inp, param_bytes=param, keep_bytes=int(act * keep))


def test_transfer_delays_the_consumer():
    # 0F0 [0,1] -> +0.5 -> 1F0 [1.5,2.5], 1B0 [2.5,4.5] -> +0.5 -> 0B0 [5,7]
    tl = simulate(SimInput(T({0: "0F0 0B0", 1: "1F0 1B0"}), [cost()] * 2, Links(latency_s=0.5)))
    assert tl.step_s == pytest.approx(7.0)
    assert [(e.start_s, e.end_s) for e in tl.events] == [(0, 1), (5, 7), (1.5, 2.5), (2.5, 4.5)]
    assert [(t.src, t.dst, t.kind, t.start_s, t.end_s) for t in tl.transfers] == [
        (0, 1, "F", 1, 1.5),
        (1, 0, "B", 4.5, 5.0),
    ]
    assert tl.critical_path == ("0F0", "send F0 0->1", "1F0", "1B0", "send B0 1->0", "0B0")


def test_intra_and_inter_node_links():
    # 4 ranks, 2 per node, GPipe m=1, F=B=1: hops 0-1 and 2-3 take 0.1, the hop 1-2 takes 1.0.
    links = Links(latency_s=0.1, inter_latency_s=1.0, devices_per_node=2)
    tl = simulate(SimInput(make_schedule("GPipe", 4, 1), [cost(b=1.0)] * 4, links))
    # forward: 1 + .1 + 1 + 1 + 1 + .1 + 1 = 5.2 ; backward: 1 + .1 + 1 + 1 + 1 + .1 + 1 = 5.2
    assert tl.step_s == pytest.approx(10.4)


def test_bandwidth_term():
    links = Links(latency_s=0.0, bandwidth_Bps=100.0)
    tl = simulate(SimInput(T({0: "0F0 0B0", 1: "1F0 1B0"}), [cost(out=50, inp=25)] * 2, links))
    # 0F0 [0,1] +0.5 ; 1F0 [1.5,2.5] 1B0 [2.5,4.5] +0.25 ; 0B0 [4.75,6.75]
    assert tl.step_s == pytest.approx(6.75)


@pytest.mark.parametrize("overlap,expected", [(True, 7.0), (False, 8.0)])
def test_overlap_option(overlap, expected):
    # GPipe p=2 m=2, F=B=1, transfer 0.5. Without overlap the sender is busy while sending:
    # rank 0: 0F0 [0,1] send..1.5, 0F1 [1.5,2.5] send..3; rank 1: 1F0 [1.5,2.5], 1F1 [3,4],
    # 1B0 [4,5] send..5.5, 1B1 [5.5,6.5] send..7; rank 0: 0B0 [5.5,6.5], 0B1 [7,8].
    links = Links(latency_s=0.5, inter_latency_s=0.5, overlap=overlap)
    tl = simulate(SimInput(make_schedule("GPipe", 2, 2), [cost(b=1.0)] * 2, links))
    assert tl.step_s == pytest.approx(expected)


def test_critical_path_counts_a_blocking_send_as_the_rank_being_busy():
    # The case above without overlap: 1B1 starts at 5.5, when 1B0's send lets rank 1 go, so it
    # waited for its rank, not for an input; 1F1 waited for 0F1's output, 0B1 for 1B1's gradient.
    links = Links(latency_s=0.5, inter_latency_s=0.5, overlap=False)
    tl = simulate(SimInput(make_schedule("GPipe", 2, 2), [cost(b=1.0)] * 2, links))
    assert tl.critical_path == ("0F0", "0F1", "send F1 0->1", "1F1", "1B0", "1B1", "send B1 1->0", "0B1")


def test_data_parallel_allreduce_and_optimizer():
    base = simulate(SimInput(make_schedule("1F1B", 2, 4), [cost(param=100)] * 2)).step_s
    dp_links = Links(bandwidth_Bps=100.0, inter_bandwidth_Bps=100.0)
    tl = simulate(
        SimInput(make_schedule("1F1B", 2, 4), [cost(param=100)] * 2, dp=2, dp_links=dp_links, optimizer_s=0.5)
    )
    # ring all-reduce of 100 B over 2 replicas: 2(2-1) * (100/2)/100 = 1.0; then 0.5 optimizer
    assert tl.step_s == pytest.approx(base + 1.5)


@pytest.mark.parametrize("p,m", [(4, 8), (4, 4), (8, 16)])
def test_1f1b_memory_keeps_p_minus_s_microbatches(p, m):
    A, static = 1000, 7
    tl = simulate(SimInput(make_schedule("1F1B", p, m), [cost(act=A, static=static)] * p))
    for s, r in enumerate(tl.ranks):
        assert r.peak_bytes == static + min(m, p - s) * A
    # stage 0 peaks when its p-th forward starts, at (p-1)F
    assert tl.ranks[0].peak_at_s == pytest.approx(min(m, p) - 1.0)
    # every activation is freed by the end of the step
    assert all(pts[-1][1] == static for pts in tl.memory.values())


def test_gpipe_memory_keeps_all_microbatches():
    p, m, A = 4, 6, 10
    tl = simulate(SimInput(make_schedule("GPipe", p, m), [cost(act=A, static=3)] * p))
    assert [r.peak_bytes for r in tl.ranks] == [3 + m * A] * p


def test_zero_bubble_memory_keeps_part_until_w():
    # one stage, one microbatch: F adds 100, I frees 100 - 30, W frees the last 30
    tl = simulate(SimInput(T({0: "0F0 0I0 0W0"}), [cost(act=100, keep=0.3)]))
    assert [b for _, b in tl.memory[0]] == [0, 100, 30, 0]
    assert [t for t, _ in tl.memory[0]] == [0.0, 0.0, 2.0, 3.0]


def test_forward_only_tables_simulate():
    table = {r: [a for a in acts if a.kind.value == "F"] for r, acts in make_schedule("GPipe", 3, 4).items()}
    tl = simulate(SimInput(table, [cost(act=50, static=99, param=10)] * 3, forward_only=True))
    assert tl.step_s == pytest.approx(4 + 3 - 1)  # (m + p - 1) F
    assert {e.kind for e in tl.events} == {"F"}
    assert [r.peak_bytes for r in tl.ranks] == [10] * 3  # weights only: no optimizer, no saved activations
    # a table with no backward at all is forward-only without being told
    assert simulate(SimInput(table, [cost()] * 3)).step_s == pytest.approx(6.0)


def test_deadlock_names_the_cycle():
    table = T({0: "0F0 0B0 0F1 0B1", 1: "1F1 1F0 1B0 1B1", 2: "2F0 2F1 2B0 2B1"})
    with pytest.raises(ScheduleError) as e:
        simulate(SimInput(table, [cost()] * 3))
    msg = str(e.value)
    assert "deadlocks" in msg
    assert "rank 0 at step 1 (0B0) waits for the gradient from stage 1 microbatch 0" in msg
    assert "rank 1 at step 0 (1F1) waits for 0F1 on rank 0" in msg
    assert "also blocked: rank 2" in msg and "^ here" in msg


@pytest.mark.parametrize("fb,pair,step", [(None, (5.0, 6.0, 8.0), 18.0), (2.5, (5.0, 5.0 + 2.5 / 3, 7.5), 17.5)])
def test_overlap_pair_is_one_action(fb, pair, step):
    # V placement, 2 ranks: stages 0, 3 on rank 0 and 1, 2 on rank 1; F = 1, B = 2, no transfer time.
    # rank 0: 0F0 [0,1] 0F1 [1,2]; rank 1: 1F0 [1,2] 2F0 [2,3] 1F1 [3,4] 2F1 [4,5]; rank 0: 3F0 [3,4].
    # The pair (3F1;3B0) waits for 2F1 (5) and lasts F&B: 3 = F + B by default (torch runs the two
    # back to back), 2.5 when measured overlapped. Its events split the span as F : B = 1 : 2.
    # 3B0's gradient leaves when the pair ends, not when its backward half would: rank 1's 2B0 starts
    # at the pair's end e, then 1B0, 2B1 (after 3B1 [e, e+2]), 1B1; rank 0: 0B0, 0B1 after each 1B.
    table = T({0: "0F0 0F1 3F0 (3F1;3B0)OVERLAP_F_B 3B1 0B0 0B1", 1: "1F0 2F0 1F1 2F1 2B0 1B0 2B1 1B1"})
    c = StageCost(1.0, 2.0, 1.0, 1.0, 1, 0, 0, 0, overlap_f_b_s=fb)
    tl = simulate(SimInput(table, [c] * 4))
    ev = {(e.stage, e.kind, e.microbatch): (e.start_s, e.end_s) for e in tl.events}
    b, mid, e = pair
    assert ev[(3, "F", 1)] == pytest.approx((b, mid)) and ev[(3, "B", 0)] == pytest.approx((mid, e))
    assert ev[(2, "B", 0)][0] == pytest.approx(e)
    assert tl.step_s == pytest.approx(step)
    assert tl.ranks[0].busy_s == pytest.approx(2 + 1 + (e - b) + 2 + 2 + 2)
    assert "(3F1;3B0)OVERLAP_F_B" in tl.critical_path
    sends = {(x.stage, x.kind, x.microbatch): x.start_s for x in tl.transfers}
    assert sends[(3, "B", 0)] == pytest.approx(e)  # stage 3's gradient goes to rank 1 at the pair's end


def test_deadlock_through_an_overlap_pair():
    # rank 0's pair waits for stage 2's gradient of microbatch 0; rank 1 first wants 1F1, queued behind the pair
    table = T({0: "0F0 1F0 (0F1;1B0)OVERLAP_F_B 1F1 1B1 0B0 0B1", 1: "2F1 2F0 2B0 2B1"})
    with pytest.raises(ScheduleError) as e:
        simulate(SimInput(table, [cost()] * 3))
    msg = str(e.value)
    assert "rank 0 at step 2 ((0F1;1B0)OVERLAP_F_B) waits for the gradient from stage 2 microbatch 0" in msg
    assert "rank 1 at step 0 (2F1) waits for 1F1 on rank 0" in msg


@pytest.mark.parametrize(
    "rows,needle",
    [
        ({0: "0B0 0F0", 1: "1F0 1B0"}, "runs before its forward"),
        ({0: "0F0 0B0 1F0", 1: "1F0 1B0"}, "stage 1 appears on rank 0 and rank 1"),
        ({0: "0F0 0F0 0B0", 1: "1F0 1B0"}, "runs twice"),
        ({0: "0F0 0W0 0I0", 1: "1F0 1B0"}, "before its input gradient"),
        ({0: "0F0 0I0", 1: "1F0 1B0"}, "0W0 is missing"),
        ({0: "0F0 0F1 0B0", 1: "1F0 1B0 1F1 1B1"}, "backward of stage 0 microbatch 1"),
        ({0: "0F0 (1F0;1B0)OVERLAP_F_B 0B0"}, "a pair cannot hold the backward of its own forward"),
    ],
)
def test_invalid_tables_raise_with_a_picture(rows, needle):
    with pytest.raises(ScheduleError) as e:
        simulate(SimInput(T(rows), [cost()] * 2))
    assert needle in str(e.value)
    with pytest.raises(ScheduleError):
        validate_table(T(rows))


def test_timeline_json_trace_and_determinism(tmp_path):
    inp = SimInput(
        make_schedule("InterleavedZeroBubble", 4, 8, 2),
        [cost(act=5, static=1)] * 8,
        Links(latency_s=0.01, inter_latency_s=0.1, devices_per_node=2),
    )
    a, b = simulate(inp), simulate(inp)
    ja, jb = json.dumps(a.to_dict()), json.dumps(b.to_dict())
    assert ja == jb
    path = a.save(tmp_path / "t.json")
    assert load_timeline(path).to_dict() == a.to_dict()
    trace = json.loads(write_trace(a, tmp_path / "trace.json").read_text())["traceEvents"]
    compute = [e for e in trace if e.get("ph") == "X" and e["tid"] == 0]
    sends = [e for e in trace if e.get("ph") == "X" and e["tid"] == 1]
    assert len(compute) == len(a.events) and len(sends) == len(a.transfers) > 0
    assert {e["pid"] for e in compute} == {0, 1, 2, 3}


def test_critical_path_ends_at_the_last_finisher_and_is_contiguous():
    tl = simulate(SimInput(make_schedule("1F1B", 4, 8), [cost()] * 4, Links(latency_s=0.1)))
    assert tl.critical_path[0] == "0F0"
    last = max(tl.events, key=lambda e: e.end_s)
    assert tl.critical_path[-1] == f"{last.stage}{last.kind}{last.microbatch}"
    # busy time along the path + its sends adds up to the step time (no gaps on a critical path)
    by_name = {f"{e.stage}{e.kind}{e.microbatch}": e for e in tl.events}
    total = sum(by_name[n].end_s - by_name[n].start_s if not n.startswith("send") else 0.1 for n in tl.critical_path)
    assert total == pytest.approx(tl.step_s)


def test_plan_like_objects_are_accepted():
    class FakePlan:
        def sim_input(self):
            return SimInput(make_schedule("GPipe", 2, 2), [cost()] * 2)

    assert simulate(FakePlan()).step_s == pytest.approx(9.0)


def test_cost_count_must_match_stages():
    with pytest.raises(ScheduleError, match="4 stages but 2 stage costs"):
        simulate(SimInput(make_schedule("1F1B", 4, 4), [cost()] * 2))


def test_costs_from_a_profile_drive_the_engine():
    from profiles.types import Profile, ProfileEntry, UnitCost, WholeModel
    from simulator import stage_costs

    unit = UnitCost(
        "block",
        "block",
        forward_s=1.0,
        backward_s=2.0,
        backward_input_s=1.0,
        backward_weight_s=1.0,
        params=10,
        param_bytes=40,
        saved_bytes=100,
        output_bytes=1000,
        forward_flops=0.0,
    )
    entry = ProfileEntry("fp32", 1, (unit,) * 4, WholeModel(4.0, 8.0, 400))
    profile = Profile("toy", {}, "cpu", "cpu", 8, "analytic", (entry,))
    costs = stage_costs(profile, [(0, 2), (2, 4)])
    # per stage: F = 2, B = 4, saved 200 B; static = weights 80 + grads 80 + AdamW 8 B x 20 params = 320
    assert (costs[0].forward_s, costs[0].backward_s, costs[0].activation_bytes, costs[0].static_bytes) == (
        2.0,
        4.0,
        200,
        320,
    )
    assert (costs[0].output_bytes, costs[1].input_bytes, costs[1].output_bytes) == (1000, 1000, 0)
    links = Links(bandwidth_Bps=1000.0, inter_bandwidth_Bps=1000.0)  # 1 s per boundary crossing
    tl = simulate(SimInput(make_schedule("1F1B", 2, 4), costs, links))
    # 1F1B, p=2, m=4, F=2, B=4, one-second hops:
    # rank 0: 0F0 [0,2] 0F1 [2,4] 0B0 [10,14] 0F2 [14,16] 0B1 [16,20] 0F3 [20,22] 0B2 [24,28] 0B3 [30,34]
    # rank 1: 1F0 [3,5] 1B0 [5,9] 1F1 [9,11] 1B1 [11,15] 1F2 [17,19] 1B2 [19,23] 1F3 [23,25] 1B3 [25,29]
    assert [(e.start_s, e.end_s) for e in tl.events if e.rank == 0] == [
        (0, 2),
        (2, 4),
        (10, 14),
        (14, 16),
        (16, 20),
        (20, 22),
        (24, 28),
        (30, 34),
    ]
    assert tl.step_s == pytest.approx(34.0)
    assert [r.peak_bytes for r in tl.ranks] == [320 + 2 * 200, 320 + 1 * 200]


def test_simulate_leaves_the_garbage_collector_as_it_found_it():
    inp = SimInput(make_schedule("1F1B", 2, 4), [cost()] * 2)
    was_on = gc.isenabled()
    try:
        gc.enable()
        simulate(inp)
        assert gc.isenabled()
        with pytest.raises(ScheduleError):
            simulate(SimInput(T({0: "0F0 0B0", 1: "1B0 1F0"}), [cost()] * 2))  # deadlocks
        assert gc.isenabled()
        gc.disable()
        simulate(inp)
        assert not gc.isenabled()
    finally:
        if was_on:
            gc.enable()
