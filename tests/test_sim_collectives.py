"""The α-β collective formulas and the rank layout, against values worked out by hand."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.collectives import (
    Link,
    all_gather_s,
    all_reduce_s,
    coords_of,
    group_link,
    group_ranks,
    rank_of,
    reduce_scatter_s,
    ring_all_reduce_s,
    tp_block_comm_s,
    tree_all_reduce_s,
)

NVLINK = Link(5e-6, 450e9)
IB = Link(10e-6, 50e9)


def test_ring_all_reduce_by_hand():
    # 8 ranks, 1 GB on NVLink: 2*7*(5us + 1e9/(8*450e9)) = 14*(5e-6 + 2.7778e-4) = 3.95889e-3 s
    assert ring_all_reduce_s(8, 1e9, NVLINK) == pytest.approx(14 * (5e-6 + 1e9 / 3.6e12), rel=1e-12)
    assert ring_all_reduce_s(8, 1e9, NVLINK) == pytest.approx(3.958889e-3, rel=1e-6)
    # 2 ranks, 100 MB over IB: 2*(10us + 1e8/1e11) = 2.02e-3 s
    assert ring_all_reduce_s(2, 1e8, IB) == pytest.approx(2.02e-3, rel=1e-12)


def test_tree_all_reduce_by_hand():
    # 64 ranks: 2*6*10us + 2*1e8/50e9 = 1.2e-4 + 4e-3
    assert tree_all_reduce_s(64, 1e8, IB) == pytest.approx(4.12e-3, rel=1e-12)
    # 5 ranks: ceil(log2 5) = 3 hops
    assert tree_all_reduce_s(5, 0, IB) == pytest.approx(6 * 10e-6, rel=1e-12)


def test_tree_wins_small_messages_ring_wins_large_ones():
    # 1 KB over 1024 ranks: latency dominates, 2*10*a << 2*1023*a
    assert tree_all_reduce_s(1024, 1e3, IB) < ring_all_reduce_s(1024, 1e3, IB)
    # 1 GB over 4 ranks: ring moves 2*(3/4)M, tree 2M
    assert ring_all_reduce_s(4, 1e9, IB) < tree_all_reduce_s(4, 1e9, IB)
    best = all_reduce_s(1024, 1e3, IB, "best")
    assert best == tree_all_reduce_s(1024, 1e3, IB)


def test_reduce_scatter_and_all_gather_by_hand():
    # 4 ranks, 400 MB on IB: 3*(10us + 1e8/50e9) = 3*(1e-5 + 2e-3) = 6.03e-3
    assert reduce_scatter_s(4, 4e8, IB) == pytest.approx(6.03e-3, rel=1e-12)
    assert all_gather_s(4, 4e8, IB) == pytest.approx(6.03e-3, rel=1e-12)
    # a ring all-reduce is exactly one reduce-scatter plus one all-gather
    assert ring_all_reduce_s(4, 4e8, IB) == pytest.approx(reduce_scatter_s(4, 4e8, IB) + all_gather_s(4, 4e8, IB))


def test_one_rank_costs_nothing():
    for f in (ring_all_reduce_s, tree_all_reduce_s, reduce_scatter_s, all_gather_s):
        assert f(1, 1e9, IB) == 0.0


def test_bad_arguments_refused():
    with pytest.raises(ValueError):
        ring_all_reduce_s(0, 1, IB)
    with pytest.raises(ValueError):
        all_reduce_s(2, 1, IB, "butterfly")
    with pytest.raises(ValueError):
        Link(1e-6, 0)


def test_rank_layout_tp_innermost_pp_outermost():
    # pp=2, dp=2, tp=4: rank = (p*2 + d)*4 + t
    assert rank_of(0, 0, 3, dp=2, tp=4) == 3
    assert rank_of(0, 1, 0, dp=2, tp=4) == 4
    assert rank_of(1, 0, 0, dp=2, tp=4) == 8
    assert rank_of(1, 1, 2, dp=2, tp=4) == 14
    for r in range(16):
        assert rank_of(*coords_of(r, dp=2, tp=4), dp=2, tp=4) == r
    assert group_ranks("tp", 13, pp=2, dp=2, tp=4) == [12, 13, 14, 15]
    assert group_ranks("dp", 13, pp=2, dp=2, tp=4) == [9, 13]
    assert group_ranks("pp", 13, pp=2, dp=2, tp=4) == [5, 13]


def test_group_link_inside_and_across_nodes():
    # 64 ranks, 8 per node, tp=8 dp=2 pp=4: a tp group is one node, a dp group spans two nodes
    tp_group = group_ranks("tp", 17, pp=4, dp=2, tp=8)
    dp_group = group_ranks("dp", 17, pp=4, dp=2, tp=8)
    assert tp_group == list(range(16, 24))
    assert dp_group == [17, 25]
    assert group_link(tp_group, 8, NVLINK, IB) is NVLINK
    assert group_link(dp_group, 8, NVLINK, IB) is IB
    # tp=2, dp=4 on 8 per node: a dp group (stride 2) of 4 ranks stays on one node
    assert group_link(group_ranks("dp", 0, pp=8, dp=4, tp=2), 8, NVLINK, IB) is NVLINK
    # the α-β model (no collective bandwidth) keeps the per-GPU share whatever the group
    assert group_link(group_ranks("dp", 0, pp=1, dp=32, tp=1), 8, NVLINK, IB) is IB


def test_a_group_spanning_nodes_uses_a_nic_per_rank_on_each_node():
    """NCCL's rings cross the node boundary through as many NICs as the group has ranks per node,
    up to the node's NVLink bus bandwidth; one rank per node gets its own NIC's share."""
    nvlink, nic = Link(5e-6, 300e9, 229e9), Link(10e-6, 25e9, 25e9)
    whole_nodes = group_link(group_ranks("dp", 0, pp=1, dp=64, tp=1), 8, nvlink, nic)
    assert whole_nodes.collective_Bps == pytest.approx(8 * 25e9)  # below the 229 of NVLink
    four = group_link(group_ranks("dp", 0, pp=1, dp=32, tp=2), 8, nvlink, nic)  # 4 of each node's 8
    assert four.collective_Bps == pytest.approx(100e9) and four.latency_s == nic.latency_s
    assert group_link(group_ranks("dp", 0, pp=1, dp=8, tp=8), 8, nvlink, nic) is nic  # one per node
    fast_nics = Link(10e-6, 50e9, 50e9)  # 8 x 50 GB/s would pass NVLink's 229: capped there
    assert group_link(list(range(16)), 8, nvlink, fast_nics).collective_Bps == pytest.approx(229e9)
    # fewer bytes per second, longer collectives: a whole-node group's all-reduce is 8x faster
    m = 1e9
    assert ring_all_reduce_s(64, m, nic) == pytest.approx(8 * ring_all_reduce_s(64, m, whole_nodes))


def test_megatron_block_comm_same_bytes_with_sequence_parallel():
    # s=4096, b=1, h=8192, bf16: one activation is 64 MiB
    m = 4096 * 1 * 8192 * 2
    fwd, bwd = tp_block_comm_s(8, m, NVLINK, sequence_parallel=False)
    assert fwd == bwd == pytest.approx(2 * 2 * 7 * (5e-6 + m / (8 * 450e9)), rel=1e-12)
    sp_fwd, sp_bwd = tp_block_comm_s(8, m, NVLINK, sequence_parallel=True)
    assert sp_fwd == pytest.approx(fwd, rel=1e-12) and sp_bwd == pytest.approx(bwd, rel=1e-12)
    assert tp_block_comm_s(1, m, NVLINK, sequence_parallel=True) == (0.0, 0.0)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 4096),
    nbytes=st.integers(0, 10**11),  # whole bytes (denormal floats break the ordering by rounding)
    latency=st.floats(0, 1e-4),
    bandwidth=st.floats(1e8, 1e12),
)
def test_collective_invariants(n, nbytes, latency, bandwidth):
    link = Link(latency, bandwidth)
    ring = ring_all_reduce_s(n, nbytes, link)
    assert ring == pytest.approx(reduce_scatter_s(n, nbytes, link) + all_gather_s(n, nbytes, link))
    assert all_reduce_s(n, nbytes, link, "best") == min(ring, tree_all_reduce_s(n, nbytes, link))
    # more ranks never make a ring collective cheaper; more bytes never make any cheaper
    assert reduce_scatter_s(n + 1, nbytes, link) >= reduce_scatter_s(n, nbytes, link)
    assert tree_all_reduce_s(n, 2 * nbytes, link) >= tree_all_reduce_s(n, nbytes, link)


# -- as NCCL runs them on a GPU fabric ---------------------------------------------------------


def test_nccl_collectives_reproduce_the_measured_bus_bandwidths():
    """With a fabric's large-message bus bandwidth, an 8-rank all-reduce takes the time the measured
    A100 NVLink table gives at each of its sizes; all-gather and reduce-scatter use (n-1)/n."""
    from simulator.collectives import bus_bandwidth_share

    nvlink = Link(5e-6, 300e9, collective_Bps=229e9)
    for size, busbw in ((2**20, 19.8e9), (8 * 2**20, 109e9), (128 * 2**20, 202e9), (2**30, 229e9)):
        assert ring_all_reduce_s(8, size, nvlink) == pytest.approx(2 * 7 / 8 * size / busbw)
    assert all_gather_s(8, 2**30, nvlink) == pytest.approx(ring_all_reduce_s(8, 2**30, nvlink) / 2)
    assert reduce_scatter_s(8, 2**30, nvlink) == pytest.approx(7 / 8 * 2**30 / 229e9)
    assert tree_all_reduce_s(8, 2**30, nvlink) == ring_all_reduce_s(8, 2**30, nvlink)  # NCCL's own choice
    shares = [bus_bandwidth_share(2.0**k) for k in range(14, 33)]
    assert shares == sorted(shares) and shares[-1] == 1.0  # larger messages reach more of the fabric
    assert ring_all_reduce_s(8, 2**19, nvlink) == pytest.approx(ring_all_reduce_s(8, 2**20, nvlink))  # latency-bound
    assert ring_all_reduce_s(1, 2**30, nvlink) == 0.0 and all_gather_s(8, 0, nvlink) == 0.0


def test_links_without_a_collective_bandwidth_keep_alpha_beta():
    plain = Link(1e-4, 1e9)
    assert ring_all_reduce_s(4, 1e6, plain) == pytest.approx(2 * 3 * (1e-4 + 1e6 / (4 * 1e9)))


def test_gloo_calls_cost_a_fixed_time_and_ring_steps_their_own_bandwidth():
    """An α-β link with a calibrated call time and ring bandwidth (gloo): each collective call
    costs the call time once, whatever its size, and its ring steps move bytes at ``ring_Bps``."""
    gloo = Link(20e-6, 3e9, call_s=0.5e-3, ring_Bps=1.5e9)
    # 2 ranks, 4 MB: 0.5 ms + 2 * (20 us + 2 MB / 1.5 GB/s)
    assert ring_all_reduce_s(2, 4e6, gloo) == pytest.approx(0.5e-3 + 2 * (20e-6 + 2e6 / 1.5e9), rel=1e-12)
    assert all_gather_s(2, 4e6, gloo) == pytest.approx(0.5e-3 + 20e-6 + 2e6 / 1.5e9, rel=1e-12)
    assert reduce_scatter_s(4, 4e6, gloo) == pytest.approx(0.5e-3 + 3 * (20e-6 + 1e6 / 1.5e9), rel=1e-12)
    # a tiny message still pays the call; one rank pays nothing
    assert ring_all_reduce_s(2, 4, gloo) > 0.5e-3
    assert ring_all_reduce_s(1, 4e6, gloo) == all_gather_s(1, 4e6, gloo) == 0.0
    # without them, the point-to-point figures (as before)
    assert ring_all_reduce_s(2, 4e6, Link(20e-6, 3e9)) == pytest.approx(2 * (20e-6 + 2e6 / 3e9), rel=1e-12)


def test_gloo_reduce_scatters_and_all_gathers_move_bytes_at_their_own_bandwidth():
    """gloo runs reduce-scatter and all-gather apart from its all-reduce, slower per byte: with a
    calibrated ``scatter_gather_Bps`` their ring steps move bytes at it, the all-reduce's at
    ``ring_Bps``; the call time is the same."""
    gloo = Link(20e-6, 3e9, call_s=0.5e-3, ring_Bps=1.5e9, scatter_gather_Bps=0.7e9)
    assert reduce_scatter_s(2, 4e6, gloo) == pytest.approx(0.5e-3 + 20e-6 + 2e6 / 0.7e9, rel=1e-12)
    assert all_gather_s(4, 4e6, gloo) == pytest.approx(0.5e-3 + 3 * (20e-6 + 1e6 / 0.7e9), rel=1e-12)
    assert ring_all_reduce_s(2, 4e6, gloo) == pytest.approx(0.5e-3 + 2 * (20e-6 + 2e6 / 1.5e9), rel=1e-12)
    with pytest.raises(ValueError):
        Link(20e-6, 3e9, scatter_gather_Bps=-1.0)
