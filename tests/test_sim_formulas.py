"""Step times of uniform, communication-free pipelines against the published formulas.

Notation: p ranks, m microbatches, v stages per rank; F, B (= I + W), I, W are the
times of one microbatch on one stage. Every stage costs the same; transfers take 0.
"""

from __future__ import annotations

import pytest

from simulator import SimInput, StageCost, make_schedule, simulate


def step(name: str, p: int, m: int, v: int = 1, f: float = 1.0, i: float = 1.0, w: float = 1.0) -> float:
    table = make_schedule(name, p, m, v)
    cost = StageCost(f, i + w, i, w, activation_bytes=1, static_bytes=0, output_bytes=0, input_bytes=0)
    return simulate(SimInput(table, [cost] * (p * v))).step_s


@pytest.mark.parametrize("name", ["GPipe", "1F1B"])
@pytest.mark.parametrize("p,m", [(2, 1), (2, 5), (4, 4), (4, 8), (8, 8), (8, 32), (3, 7)])
def test_gpipe_and_1f1b(name, p, m):
    # GPipe (Huang et al. 2019) and 1F1B (Narayanan et al. 2019): step = (m + p - 1)(F + B)
    f, b = 1.0, 2.0
    assert step(name, p, m, f=f, i=1.0, w=1.0) == pytest.approx((m + p - 1) * (f + b), abs=1e-9)


@pytest.mark.parametrize("p,m,v", [(2, 4, 2), (4, 8, 2), (4, 16, 2), (4, 8, 4), (8, 16, 2), (8, 32, 4)])
def test_interleaved_1f1b(p, m, v):
    # Narayanan et al. 2021, section 2.2.2: with v chunks per rank, each chunk costs F/v
    # and B/v, and the bubble shrinks to (p - 1)(F + B)/v: step = m(F + B) + (p - 1)(F + B)/v.
    # (F, B: the whole rank's share of the model, as in the paper.)
    F, B = 1.0, 2.0
    got = step("Interleaved1F1B", p, m, v, f=F / v, i=B / v / 2, w=B / v / 2)
    assert got == pytest.approx(m * (F + B) + (p - 1) * (F + B) / v, abs=1e-9)


@pytest.mark.parametrize("p,m", [(2, 4), (4, 8), (4, 12), (4, 16), (8, 16), (8, 32)])
def test_zero_bubble_h1(p, m):
    # Qi et al. 2023 (Zero Bubble Pipeline Parallelism), ZB-H1 (torch InterleavedZeroBubble, v = 1):
    # with T_F = T_B = T_W (their assumption; T_B is our I), bubble = (p - 1)(T_F + T_B - T_W),
    # a third of 1F1B's (p - 1)(T_F + T_B + T_W). Step = m(T_F + T_B + T_W) + bubble.
    t = 1.0
    got = step("InterleavedZeroBubble", p, m, 1, f=t, i=t, w=t)
    assert got == pytest.approx(m * 3 * t + (p - 1) * (t + t - t), abs=1e-9)
    one_f_one_b = step("1F1B", p, m, f=t, i=t, w=t)
    assert (got - 3 * m * t) == pytest.approx((one_f_one_b - 3 * m * t) / 3)


@pytest.mark.parametrize("name", ["ZBVZeroBubble", "DualPipeV"])
@pytest.mark.parametrize("p,m", [(2, 4), (4, 8), (4, 16), (8, 16), (8, 32)])
def test_v_schedules_reach_the_fill_bound(name, p, m):
    # ZB-V (Qi et al. 2023, section 6) claims zero bubble in steady state when T_F = T_B = T_W
    # per chunk; the paper's bubble (p - 1)(T_F + T_B - 2T_W) is then 0. What no V schedule
    # can avoid is the fill: rank p-1's first forward (stage p-1) waits for p-1 chunk forwards
    # on ranks 0..p-2, so its 2m(F + I + W) of work ends no earlier than (p - 1)F + 2m(F + I + W).
    # torch's ZBV and DualPipeV orders both reach exactly that bound: zero bubble beyond the fill.
    t = 0.5
    got = step(name, p, m, 2, f=t, i=t, w=t)
    assert got == pytest.approx(2 * m * 3 * t + (p - 1) * t, abs=1e-9)


@pytest.mark.parametrize("f,i,w", [(1.0, 1.0, 1.0), (1.0, 2.0, 1.0), (2.0, 1.0, 1.0), (1.0, 1.0, 0.5)])
@pytest.mark.parametrize("p,m", [(4, 8), (4, 16), (8, 16)])
def test_dualpipe_v_within_deepseek_bound(f, i, w, p, m):
    # DeepSeek-V3 report, table 2 / DualPipe README: DualPipeV on PP/2 = p ranks has bubble
    # (PP/2 - 1)(F&B + B - 3W) per chunk times, F&B being an overlapped forward+backward
    # pair. Our engine runs the pair one after the other (F&B = F + B, no overlap), for
    # which the formula is an upper bound; the simulated bubble stays within it and never
    # below the fill bound (p - 1)F.
    B = i + w
    bubble = step("DualPipeV", p, m, 2, f=f, i=i, w=w) - 2 * m * (f + B)
    assert (p - 1) * f - 1e-9 <= bubble <= (p - 1) * ((f + B) + B - 3 * w) + 1e-9


@pytest.mark.parametrize("p,m,v", [(4, 8, 2), (4, 16, 2), (8, 32, 2)])
def test_looped_bfs_matches_interleaved_bubble(p, m, v):
    # Lamy-Poirier 2022 (Breadth-First Pipeline Parallelism): with v loops per rank and m a
    # multiple of p, the fill-drain bubble is (p - 1)(F + B)/v, as for interleaving.
    F, B = 1.0, 2.0
    got = step("LoopedBFS", p, m, v, f=F / v, i=B / v / 2, w=B / v / 2)
    assert got == pytest.approx(m * (F + B) + (p - 1) * (F + B) / v, abs=1e-9)
