"""Memory per rank of ddp, zero1, zero2 and fsdp plans against hand-computed bytes, and the
data-parallel collectives on the communication track."""

from __future__ import annotations

import pytest
from planner_synthetic import synthetic_profile

from planner import Cluster, Job
from planner.candidate import Candidate
from planner.scoring import Context, build_plan
from profiles.types import load_profile
from simulator import simulate
from simulator.costs import DPMode, Layout, Option

P, A, OUT = 1_000_000, 3_000_000, 10_000  # parameters, saved bytes and output bytes per unit
D = 4  # data-parallel replicas


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    units = [{"f": 1e-3, "b": 2e-3, "params": P, "saved": A, "out": OUT} for _ in range(4)]
    path = synthetic_profile(units, tmp_path_factory.mktemp("shard") / "p.json")
    return load_profile(path), path


#: fp32 AdamW bytes per parameter per rank: weights 4, gradients 4, optimizer 8 (no master copy)
PER_PARAM = {
    DPMode.DDP: 4 + 4 + 8,
    DPMode.ZERO1: 4 + 4 + 8 / D,
    DPMode.ZERO2: 4 + (4 + 8) / D,
    DPMode.FSDP: (4 + 4 + 8) / D + 4 + 4,  # + the stage gathered and its gradients unsharded (under pp)
}
#: bytes a rank holds besides its state and activations: zero2 reduces each microbatch's gradient
#: unit by unit, so at most one unit's whole gradient waits for its reduce-scatter
TRANSIENT = {DPMode.ZERO2: P * 4}


@pytest.mark.parametrize("mode", list(DPMode))
def test_memory_per_rank_by_dp_mode(profile, mode):
    prof, path = profile
    job = Job(global_batch=4 * D, microbatch_size=1, dp_modes=(mode.value,))
    cluster = Cluster(devices=2 * D, memory_bytes=2**40, devices_per_node=8)
    layout = Layout(dp=D, dp_mode=mode)
    c = Candidate.named("1F1B", pp=2, m=4, layout=layout)
    plan = build_plan(Context(prof, str(path), cluster, job), c, [(0, 2), (2, 4)], [Option()] * 2)
    # 1F1B: stage 0 holds 2 microbatches' activations at its peak, stage 1 one; 2 units per stage
    extra = TRANSIENT.get(mode, 0)
    assert plan.predicted.peak_bytes[0] == pytest.approx(2 * P * PER_PARAM[mode] + extra + 2 * 2 * A, abs=4)
    assert plan.predicted.peak_bytes[1] == pytest.approx(2 * P * PER_PARAM[mode] + extra + 1 * 2 * A, abs=4)


def test_fsdp_without_pipelining_gathers_the_largest_unit_only(profile):
    prof, path = profile
    job = Job(global_batch=4 * 8, microbatch_size=1, dp_modes=("fsdp",))
    cluster = Cluster(devices=8, memory_bytes=2**40, devices_per_node=8)
    layout = Layout(dp=8, dp_mode=DPMode.FSDP, reshard_after_forward=True)
    c = Candidate.named("1F1B", pp=1, m=4, layout=layout)
    plan = build_plan(Context(prof, str(path), cluster, job), c, [(0, 4)], [Option()])
    # 4 units' sharded state, one unit gathered + one prefetched + its unsharded gradient, 1 in flight
    assert plan.predicted.peak_bytes[0] == pytest.approx(4 * P * 16 / 8 + 3 * P * 4 + 4 * A, abs=4)


def test_collectives_sit_on_the_communication_track(profile):
    prof, path = profile
    cluster = Cluster(devices=2 * D, memory_bytes=2**40, devices_per_node=8, intra_bandwidth_Bps=1e9)
    for mode, kinds in ((DPMode.DDP, {"ALL_REDUCE"}), (DPMode.FSDP, {"UNSHARD", "REDUCE_GRAD"})):
        job = Job(global_batch=4 * D, microbatch_size=1, dp_modes=(mode.value,))
        c = Candidate.named("1F1B", pp=2, m=4, layout=Layout(dp=D, dp_mode=mode))
        plan = build_plan(Context(prof, str(path), cluster, job), c, [(0, 2), (2, 4)], [Option()] * 2)
        tl = simulate(plan)
        assert {c.kind for c in tl.collectives} == kinds
        # a ring over D ranks: reduce-scatter (D-1)/D of the 2P fp32 gradient bytes at 1 GB/s
        grad = 2 * P * 4
        rs = (D - 1) * (50e-6 + grad / D / 1e9)
        reduce = next(c for c in tl.collectives if c.kind in ("ALL_REDUCE", "REDUCE_GRAD") and c.rank == 0)
        assert reduce.end_s - reduce.start_s == pytest.approx(2 * rs if mode is DPMode.DDP else rs, rel=1e-9)
        if mode is DPMode.FSDP:  # the first forward waits for the gather
            first = min(e.start_s for e in tl.events if e.rank == 0)
            assert first == pytest.approx(next(c.end_s for c in tl.collectives if c.kind == "UNSHARD" and c.rank == 0))


def test_tied_embeddings_cost_one_all_reduce_between_their_ranks(profile, tmp_path):
    """A parameter tied between the first and the last unit (input and output embeddings) is
    summed between the first and last stages' ranks every step: in the simulator's
    communication track and in the MILP's tail alike; one rank holding both pays nothing."""
    from dataclasses import replace

    from planner.memory import memory_pattern
    from planner.milp import StepModel, stage_terms
    from planner.pricing import cost_model
    from profiles.types import TiedParams
    from simulator import make_schedule

    prof, _ = profile
    tied = replace(prof, tied=(TiedParams(units=("block0", "block3"), params=P),))
    path = tmp_path / "tied.json"
    tied.save(path)
    tied = load_profile(path)
    cluster = Cluster(devices=2, memory_bytes=2**40, devices_per_node=8, intra_bandwidth_Bps=1e9)
    job = Job(global_batch=4, microbatch_size=1)
    plan = build_plan(
        Context(tied, str(path), cluster, job), Candidate.named("1F1B", pp=2, m=4), [(0, 2), (2, 4)], [Option()] * 2
    )
    sync = [c for c in simulate(plan).collectives if c.kind == "TIED_REDUCE"]
    want = 2 * 1 * (50e-6 + P * 4 / 2 / 1e9)  # ring all-reduce over 2 ranks of P fp32 gradients
    assert sorted(c.rank for c in sync) == [0, 1]
    assert all(c.end_s - c.start_s == pytest.approx(want, rel=1e-12) for c in sync)
    costs = cost_model(tied, cluster, job, 1)
    model = StepModel(4, (0, 1), memory_pattern(make_schedule("1F1B", 2, 4)))
    terms = stage_terms(costs, model, [(0, 2), (2, 4)], [Option()] * 2)
    assert terms.tail_s[0] == pytest.approx(want, rel=1e-12) and terms.tail_s[1] == pytest.approx(want, rel=1e-12)
    ctx = Context(tied, str(path), replace(cluster, devices=1), job)
    one = build_plan(ctx, Candidate.named("1F1B", pp=1, m=4), [(0, 4)], [Option()])
    assert not [c for c in simulate(one).collectives if c.kind == "TIED_REDUCE"]


def test_tied_copies_on_one_rank_are_held_and_reduced_once(profile, tmp_path):
    """Both holders of a tied parameter on one rank (one stage, or a V's two ends) share one
    parameter, gradient and optimizer state: the rank's static bytes and its data-parallel
    gradient bytes count it once, where the holders on two ranks each hold a copy."""
    from dataclasses import replace

    from profiles.types import TiedParams

    prof, _ = profile
    tied = replace(prof, tied=(TiedParams(units=("block0", "block3"), params=P),))
    path = tmp_path / "tied.json"
    tied.save(path)
    tied, untied = load_profile(path), prof
    job = Job(global_batch=8, microbatch_size=1)

    def peak(p, pp, dp, name, bounds, devices):
        cluster = Cluster(devices=devices, memory_bytes=2**40, devices_per_node=8)
        c = Candidate.named(name, pp=pp, m=4, layout=Layout(dp=dp, dp_mode=DPMode.DDP), virtual=2 if "V" in name else 1)
        plan = build_plan(Context(p, str(path), cluster, job), c, bounds, [Option()] * len(bounds))
        return plan, simulate(plan)

    # one stage holds both: a copy less than the untied model, in memory and in the dp all-reduce
    (pt, tl_t), (pu, tl_u) = (peak(p, 1, 2, "1F1B", [(0, 4)], 2) for p in (tied, untied))
    assert tl_u.ranks[0].peak_bytes - tl_t.ranks[0].peak_bytes == P * PER_PARAM[DPMode.DDP]
    (red_t,), (red_u,) = ([c for c in tl.collectives if c.kind == "ALL_REDUCE"] for tl in (tl_t, tl_u))
    assert red_u.bytes - red_t.bytes == P * 4
    # a V puts stages 0 and 3 on rank 0: block0 and block3 share one copy there, none is summed
    (pv, tl_v), (_, tl_vu) = (
        peak(p, 2, 1, "ZBVZeroBubble", [(0, 1), (1, 2), (2, 3), (3, 4)], 2) for p in (tied, untied)
    )
    assert {s.rank for s in pv.stages if s.index in (0, 3)} == {0}
    assert tl_vu.ranks[0].peak_bytes - tl_v.ranks[0].peak_bytes == P * PER_PARAM[DPMode.DDP]
    assert tl_vu.ranks[1].peak_bytes == tl_v.ranks[1].peak_bytes
    assert not [c for c in tl_v.collectives if c.kind == "TIED_REDUCE"]


def test_the_runtime_time_per_fsdp_unit_is_priced_where_fully_shard_runs(profile):
    """A calibrated time per FSDP2-sharded unit (forward, backward) is added to every unit with
    parameters under the modes FSDP2 runs (zero2, fsdp) at dp > 1, and nowhere else."""
    from dataclasses import replace

    from planner.pricing import cost_model

    prof, _ = profile
    base = Cluster(devices=D, memory_bytes=2**40, devices_per_node=8)
    taxed = replace(base, fsdp_unit_s=1e-3, fsdp_unit_backward_s=2e-3)
    job = Job(global_batch=8, microbatch_size=1)
    for mode in DPMode:
        for dp in (1, D):
            lay = Layout(dp=dp, dp_mode=mode if dp > 1 else DPMode.DDP)
            plain, taxed_recs = (cost_model(prof, c, job, 1, layout=lay).records[Option()] for c in (base, taxed))
            added = mode.spec.fully_shard and dp > 1
            for a, b in zip(plain, taxed_recs):
                assert b.forward_s - a.forward_s == pytest.approx(1e-3 * added)
                assert b.backward_s - a.backward_s == pytest.approx(2e-3 * added)
