"""Step times of uniform, communication-free pipelines against the published formulas.

Notation: p ranks, m microbatches, v stages per rank; F, B (= I + W), I, W are the
times of one microbatch on one stage. Every stage costs the same; transfers take 0.
Each test names the paper, the formula and the case (the paper's own assumptions).
"""

from __future__ import annotations

import pytest

from simulator import SimInput, StageCost, Timeline, make_schedule, simulate


def timeline(
    name: str, p: int, m: int, v: int = 1, f: float = 1.0, i: float = 1.0, w: float = 1.0, fb: float | None = None
) -> Timeline:
    table = make_schedule(name, p, m, v)
    cost = StageCost(
        f, i + w, i, w, activation_bytes=1, static_bytes=0, output_bytes=0, input_bytes=0, overlap_f_b_s=fb
    )
    return simulate(SimInput(table, [cost] * (p * v)))


def step(name: str, p: int, m: int, v: int = 1, f: float = 1.0, i: float = 1.0, w: float = 1.0) -> float:
    return timeline(name, p, m, v, f, i, w).step_s


def spans(tl: Timeline) -> dict[int, tuple[float, float]]:
    """rank -> (start of its first action, end of its last)."""
    out: dict[int, tuple[float, float]] = {}
    for e in tl.events:
        a, b = out.get(e.rank, (e.start_s, e.end_s))
        out[e.rank] = (min(a, e.start_s), max(b, e.end_s))
    return out


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


@pytest.mark.parametrize("p,m", [(2, 4), (3, 6), (4, 8), (4, 12), (4, 16), (8, 16), (8, 32)])
@pytest.mark.parametrize(
    "f,i,w", [(1.0, 1.0, 1.0), (1.0, 2.0, 1.0), (2.0, 1.0, 1.0), (2.0, 0.5, 0.5), (1.0, 1.0, 0.25), (2.0, 2.0, 1.5)]
)
@pytest.mark.parametrize("v", [1, 2, 3])
def test_zero_bubble_h1(p, m, f, i, w, v):
    """ZB-H1: Qi et al., "Zero Bubble Pipeline Parallelism" (ICLR 2024), section 2.1: bubble
    (p - 1)(T_F + T_B - T_W), T_B being the input gradient only (our I). The same as the DeepSeek-V3
    report's Table 2 row ZB1P, (PP - 1)(F + B - 2W) with B the full backward (I + W).

    torch's ScheduleInterleavedZeroBubble with one stage per rank (v = 1) is ZB-H1: 1F1B with the
    backward split and rank r's W delayed by r slots. Case: uniform stages, zero transfer time,
    m >= p, and T_W <= min(T_F, T_B), so that each delayed W fits the gap it fills (the paper draws
    T_F = T_B = T_W, the first case here; with it the bubble is a third of 1F1B's).
    Step = m(T_F + T_B + T_W) + bubble, exactly.

    With v looped chunks per rank (times per chunk), torch's order keeps the bubble at one chunk's
    (p - 1)(F + I - W): ZB-H1's bubble for the rank's whole share divided by v, as interleaving
    divides 1F1B's (Narayanan et al. 2021). That combination is ours, not a published formula.
    """
    got = step("InterleavedZeroBubble", p, m, v, f=f, i=i, w=w)
    assert got == pytest.approx(v * m * (f + i + w) + (p - 1) * (f + i - w), abs=1e-9)
    if f == i == w and v == 1:
        one_f_one_b = step("1F1B", p, m, f=f, i=i, w=w)
        assert (got - 3 * m * f) == pytest.approx((one_f_one_b - 3 * m * f) / 3)


@pytest.mark.parametrize("p,m", [(2, 3), (2, 4), (3, 6), (4, 7), (4, 8), (4, 16), (8, 16), (8, 32)])
def test_zbv_has_zero_bubble_in_the_papers_sense(p, m):
    """ZB-V: Qi et al., "Zero Bubble Pipeline Parallelism" (ICLR 2024), section 6, and the table of
    their "Pipeline Parallelism with Controllable Memory" (NeurIPS 2024) code release: bubble rate 0.

    Case (the paper's): T_F = T_B = T_W per chunk (T_B is our I, input gradient only), two chunks
    per rank in a V, zero transfer time, any m (torch builds the order for max(m, 2p - 1)).

    Their bubble is idle time *inside* each device's span, first action to last: the schedule is a
    parallelogram, each device starting one forward after the previous one, and the paper's
    optimizer post-validation (section 4) lets each device start its next step as soon as it ends.
    torch's order has exactly that: no rank idles between its first and last action. Measured from
    a common start, as our step is, the step is (p - 1) T_F longer: rank p-1 cannot start before
    p - 1 chunk forwards have run, and it has 2m(T_F + T_B + T_W) of work. No order can do better,
    so torch's order is optimal on both measures and needs no improved variant.
    """
    t = 0.5
    tl = timeline("ZBVZeroBubble", p, m, 2, f=t, i=t, w=t)
    for r, (first, last) in spans(tl).items():
        assert last - first - tl.ranks[r].busy_s == 0.0  # exactly: times are multiples of 1/2
    assert tl.step_s == 2 * m * 3 * t + (p - 1) * t


# DeepSeek-V3 Technical Report (arXiv 2412.19437), section 3.2.1 / Table 2, and the DualPipe README
# (github.com/deepseek-ai/DualPipe, "Pipeline Bubbles and Memory Usage Comparison"): DualPipe's
# bubble is (PP/2 - 1)(F&B + B - 3W), where F is a forward chunk, B a *full* backward chunk, W its
# weight-gradient part, F&B two mutually overlapped forward and backward chunks. DualPipeV (the
# README's V variant, torch's ScheduleDualPipeV) runs the same PP stages on PP/2 devices, two per
# device, with the same bubble: with p ranks, PP/2 = p. The bubble is the idle time of the idlest
# rank: step - min over ranks of its busy time (a pair counts F&B).
DUALPIPE_CASES = [(2, 4), (3, 6), (3, 7), (4, 8), (4, 11), (5, 12), (8, 16), (8, 33)]


def dualpipe_bubble(p: int, m: int, f: float, i: float, w: float, fb: float | None) -> float:
    tl = timeline("DualPipeV", p, m, 2, f=f, i=i, w=w, fb=fb)
    return tl.step_s - min(r.busy_s for r in tl.ranks)


@pytest.mark.parametrize("p,m", DUALPIPE_CASES)
@pytest.mark.parametrize("f,w", [(1.0, 1.0), (1.0, 0.5), (1.0, 0.25), (2.0, 1.5), (2.0, 2.0)])
@pytest.mark.parametrize("overlap", [0.0, 0.5, 1.0])
def test_dualpipe_v_matches_deepseek_formula(p, m, f, w, overlap):
    """Exactly (PP/2 - 1)(F&B + B - 3W) on torch's order, pairs run as one OVERLAP_F_B action.

    Case: uniform chunks, zero transfer time, m >= 2p (torch's minimum), the input-gradient part
    of the backward as long as a forward (I = F, the zero-bubble papers' T_F = T_B), W <= F (each
    bubble slot of the cool-down takes the W's the formula credits), and any overlap from none
    (F&B = F + B, how torch runs a pair without a custom overlapped function) to full
    (F&B = max(F, B)).
    """
    b = f + w
    fb = f + b - overlap * min(f, b)
    assert dualpipe_bubble(p, m, f, f, w, fb) == pytest.approx((p - 1) * (fb + b - 3 * w), abs=1e-9)


@pytest.mark.parametrize("p,m", DUALPIPE_CASES)
@pytest.mark.parametrize("w", [1.25, 1.5, 2.0])
def test_dualpipe_v_when_w_exceeds_f(p, m, w):
    """Outside the formula's reach, W > F (I = F = 1, no overlap): the bubble is (p - 1)(F&B + B - 2W - F).

    Each cool-down slot a W fills is one forward long, so a longer W stretches it by W - F: the
    formula's -3W becomes -2W - F. Pinned so that a change of the engine or of torch's order shows.
    """
    f = 1.0
    b = f + w
    assert dualpipe_bubble(p, m, f, f, w, None) == pytest.approx((p - 1) * (f + b + b - 2 * w - f), abs=1e-9)


@pytest.mark.parametrize("p,m,v", [(4, 8, 2), (4, 16, 2), (8, 32, 2)])
def test_looped_bfs_matches_interleaved_bubble(p, m, v):
    # Lamy-Poirier 2022 (Breadth-First Pipeline Parallelism): with v loops per rank and m a
    # multiple of p, the fill-drain bubble is (p - 1)(F + B)/v, as for interleaving.
    F, B = 1.0, 2.0
    got = step("LoopedBFS", p, m, v, f=F / v, i=B / v / 2, w=B / v / 2)
    assert got == pytest.approx(m * (F + B) + (p - 1) * (F + B) / v, abs=1e-9)
