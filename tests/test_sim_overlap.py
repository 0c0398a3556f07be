"""Data-parallel gradient reduction overlapped with the remaining backward (``Layout.overlap_grad_reduce``),
on the simulator's communication track, against steps worked out by hand."""

import pytest

from planner.cluster import load_cluster
from profiles.analytic import analytic_profile
from simulator.actions import Action, Kind
from simulator.collectives import Link
from simulator.costs import (
    OVERLAP_SLOWDOWN,
    DPComm,
    DPMode,
    Layout,
    Option,
    Recompute,
    StageCost,
    overlap_slowdown_s,
    unit_records,
)
from simulator.engine import SimInput, simulate

LINK = Link(0.0, 1e9)  # 1 GB/s, no latency: a ring all-reduce of G bytes over 2 ranks takes G / 1e9 s


def _one_stage(overlap: bool, grad_bytes: int, microbatches: int = 2):
    """One pipeline rank, F0 F1 B0 B1 (forward 1 s, backward 2 s each), dp 2."""
    table = {
        0: [Action(0, Kind.F, m) for m in range(microbatches)] + [Action(0, Kind.B, m) for m in range(microbatches)]
    }
    cost = StageCost(1.0, 2.0, 1.0, 1.0, 0, 0, 0, 0, param_bytes=grad_bytes)
    comm = DPComm(DPMode.DDP, 2, LINK, overlap=overlap)
    return simulate(SimInput(table, [cost], dp=2, comm=comm))


def test_without_overlap_the_reduction_follows_the_last_backward():
    # compute 2 x 1 + 2 x 2 = 6 s, then 2(n-1)/n x G / 1e9 = 1 s for G = 1e9
    assert _one_stage(False, 10**9).step_s == pytest.approx(7.0)


def test_overlapped_reduction_hides_behind_the_last_backward():
    """The reduction starts with the last backward (at 4 s): 1 s of it fits in its 2 s."""
    tl = _one_stage(True, 10**9)
    assert tl.step_s == pytest.approx(6.0)
    (reduce,) = [c for c in tl.collectives if c.kind == "ALL_REDUCE"]
    assert (reduce.start_s, reduce.end_s) == (pytest.approx(4.0), pytest.approx(6.0))


def test_overlapped_reduction_longer_than_the_backward_shows_its_rest():
    """3 s of reduction from 4 s: the step ends at 7 s, 1 s after the last backward."""
    assert _one_stage(True, 3 * 10**9).step_s == pytest.approx(7.0)
    assert _one_stage(False, 3 * 10**9).step_s == pytest.approx(9.0)


def test_the_layout_option_reaches_the_plan_and_its_file(tmp_path):
    """A plan built with the option prices with it, writes it, and reads it back; without it,
    nothing is written (older plans load unchanged)."""
    from dataclasses import replace

    from planner import Job
    from planner.candidate import Candidate
    from planner.plan import load_plan
    from planner.scoring import Context, build_plan
    from simulator.costs import Layout, Option, Recompute

    prof = analytic_profile("gpt2-tiny", device_spec_name="a100", seq_len=128)
    path = prof.save(tmp_path / "p.json")
    cluster = replace(load_cluster("a100"), devices=2)
    job = Job(global_batch=4, microbatch_size=1, dtypes=("bf16",), schedules=("1F1B",))
    steps = {}
    for overlap in (False, True):
        c = Candidate.named("1F1B", pp=1, m=2, layout=Layout(dp=2, overlap_grad_reduce=overlap))
        plan = build_plan(
            Context(prof, str(path), cluster, job), c, [(0, prof.num_units)], [Option("bf16", Recompute.NONE)]
        )
        assert plan.parallelism.overlap_grad_reduce is overlap and plan.cost_model().dp_comm.overlap is overlap
        assert ("overlap_grad_reduce" in plan.to_dict()) is overlap
        saved = plan.save(tmp_path / f"plan{overlap}.json")
        assert load_plan(saved).overlap_grad_reduce is overlap
        steps[overlap] = plan.predicted.step_s
    assert steps[True] < steps[False]


def test_prefetching_fsdp_gathers_the_first_unit_before_it_starts():
    """fsdp with overlap: the rank starts after its first unit's gather (1 GB: 0.5 s over 2 ranks at
    1 GB/s), not the whole stage's (4 GB: 2 s); the rest runs beside the compute."""
    table = {0: [Action(0, Kind.F, 0), Action(0, Kind.B, 0)]}
    cost = StageCost(4.0, 8.0, 4.0, 4.0, 0, 0, 0, 0, param_bytes=4 * 10**9, lead_param_bytes=10**9)
    plain = simulate(SimInput(table, [cost], dp=2, comm=DPComm(DPMode.FSDP, 2, LINK)))
    ahead = simulate(SimInput(table, [cost], dp=2, comm=DPComm(DPMode.FSDP, 2, LINK, overlap=True)))
    # plain: gather 2 s, F 4 s, B 8 s, then the reduce-scatter 2 s
    assert plain.step_s == pytest.approx(16.0)
    # prefetching: start at 0.5 s, F to 4.5 s, B to 12.5 s; the reduce-scatter (2 s) fits in B
    assert ahead.step_s == pytest.approx(12.5)


def test_overlap_slowdown_by_hand():
    """Compute beside a collective runs 1.189x slower (arXiv:2507.03114): 1 s of collective
    beside 10 s of compute costs 0.189/1.189 s; one longer than the slowed compute slows all of it."""
    assert OVERLAP_SLOWDOWN == 0.189
    assert overlap_slowdown_s(1.0, 10.0) == pytest.approx(0.189 / 1.189)
    assert overlap_slowdown_s(100.0, 2.0) == pytest.approx(2.0 * 0.189)
    assert overlap_slowdown_s(0.0, 2.0) == 0.0


def test_collectives_beside_each_microbatch_slow_the_compute_on_gpus():
    """zero2's per-microbatch reduce-scatter and resharded fsdp's gathers, overlapped on a GPU
    fabric, add their slowdown to the compute they run beside; a reduction once a step (ddp), the
    same collectives not overlapped (then they sit in the compute's time instead), and CPU ranks'
    measured links add none."""
    from planner.cluster import load_cluster
    from profiles.analytic import analytic_profile

    prof = analytic_profile("llama-tiny", device_spec_name="h100", dtypes=("bf16",), seq_len=128)
    option = Option("bf16", Recompute.NONE)
    gpu = load_cluster("h100:2").links()

    def records(links, **kw):
        return unit_records(prof, option, layout=Layout(dp=16, **kw).on_pipeline(1), links=links)

    plain = unit_records(prof, option, layout=Layout(), links=gpu)
    z2 = records(gpu, dp_mode=DPMode.ZERO2, overlap_grad_reduce=True)
    mode, link = DPMode.ZERO2.spec, gpu.group_link(list(range(16)))
    for p, r in zip(plain, z2):
        if not r.params:
            continue
        rs = mode.each_microbatch_s(16, r.grad_bytes, link)
        assert rs > 0 and r.contention_s == pytest.approx(overlap_slowdown_s(rs, p.backward_s))
        assert r.weight_s == pytest.approx(p.weight_s + r.contention_s) and r.forward_s == pytest.approx(p.forward_s)
    fsdp = records(gpu, dp_mode=DPMode.FSDP, overlap_grad_reduce=True)  # pp 1: resharded after forward
    assert all(r.contention_s > 0 and r.forward_s > p.forward_s for p, r in zip(plain, fsdp) if r.params)
    for quiet in (
        records(gpu, dp_mode=DPMode.DDP, overlap_grad_reduce=True),
        records(gpu, dp_mode=DPMode.ZERO2, overlap_grad_reduce=False),
        records(load_cluster("cpu-local:8").links(), dp_mode=DPMode.ZERO2, overlap_grad_reduce=True),
    ):
        assert all(r.contention_s == 0 for r in quiet)


def test_gradients_in_fp32_reach_the_records_the_plan_and_its_file(tmp_path):
    """``Layout.grads_fp32`` on bf16 stages: each unit reduces 4 bytes a parameter (zero2's
    per-microbatch reduce-scatter twice the bf16 one's bytes), holds its gradient in fp32, and a
    plan writes the option and reads it back (a plan without it reads as the stage's dtype)."""
    from dataclasses import replace

    from planner import Job
    from planner import plan as make_plans
    from planner.plan import load_plan

    wide = {"n_embd": 1024, "n_head": 16, "n_layer": 2, "vocab_size": 1024, "n_positions": 128}  # MB-sized units
    prof = analytic_profile("gpt2", device_spec_name="a100", dtypes=("bf16",), seq_len=128, overrides=wide)
    gpu = load_cluster("a100:2").links()
    option = Option("bf16", Recompute.NONE)
    link = gpu.group_link(list(range(16)))
    by = {}
    for fp32 in (False, True):
        lay = Layout(dp=16, dp_mode=DPMode.ZERO2, grads_fp32=fp32).on_pipeline(2)
        by[fp32] = unit_records(prof, option, layout=lay, links=gpu)
    for bf, fp in zip(by[False], by[True]):
        assert fp.grad_bytes == bf.grad_bytes == 2 * fp.params
        assert fp.reduced_bytes == 4 * fp.params and bf.reduced_bytes == 2 * fp.params
        if fp.params:
            assert fp.dp_reduce_s == pytest.approx(DPMode.ZERO2.spec.each_microbatch_s(16, 4 * fp.params, link))
            assert fp.dp_reduce_s > bf.dp_reduce_s
            assert fp.static_bytes - bf.static_bytes == pytest.approx(fp.params * 2 / 16, abs=1)  # sharded gradient

    path = prof.save(tmp_path / "p.json")
    cluster = replace(load_cluster("a100"), devices=2)
    for grad_dtype in ("fp32", "stage"):
        job = Job(global_batch=4, microbatch_size=1, dtypes=("bf16",), schedules=("1F1B",), grad_dtype=grad_dtype)
        (best,) = make_plans(prof, cluster, job, 1, profile_path=str(path), time_limit=5)
        fp32 = grad_dtype == "fp32"
        assert best.grads_fp32 is fp32 and ("grads_fp32" in best.to_dict()) is fp32
        again = load_plan(best.save(tmp_path / f"plan-{grad_dtype}.json"))
        assert again.grads_fp32 is fp32 and again.predicted.step_s == pytest.approx(best.predicted.step_s)


def test_the_reduction_moves_the_gradients_bytes_and_the_gather_the_weights():
    """A stage whose gradients are reduced in fp32 (2 GB) over weights of 1 GB: ddp's all-reduce
    takes 2 s over 2 ranks at 1 GB/s and the track says 2 GB; zero2's step-end gather moves the
    1 GB of weights (0.5 s)."""
    table = {0: [Action(0, Kind.F, 0), Action(0, Kind.B, 0)]}
    cost = StageCost(1.0, 2.0, 1.0, 1.0, 0, 0, 0, 0, param_bytes=10**9, reduce_bytes=2 * 10**9)
    ddp = simulate(SimInput(table, [cost], dp=2, comm=DPComm(DPMode.DDP, 2, LINK)))
    assert ddp.step_s == pytest.approx(3.0 + 2.0)
    assert [(c.kind, c.bytes) for c in ddp.collectives] == [("ALL_REDUCE", 2 * 10**9)]
    zero2 = simulate(SimInput(table, [cost], dp=2, comm=DPComm(DPMode.ZERO2, 2, LINK)))
    assert zero2.step_s == pytest.approx(3.0 + 0.5)
    assert [(c.kind, c.bytes) for c in zero2.collectives] == [("UNSHARD", 10**9)]
