"""One cost model: the MILP's terms, the simulator's stage costs and the planner's memory checks
are the same numbers, for random profiles, splits, schedules, options, clusters and placements.

For each drawn case the MILP's per-stage terms (forward, backward, I, W, static, activation and
kept bytes, hand-offs, gradient bytes, optimizer time) and its per-rank peak memory and tail are
evaluated at the drawn split (``planner.milp.stage_terms``: the very expressions of its rows and
objective) and held against what the shared cost layer gives the event simulator, to 1e-9
relative. The screen (static bytes and memory pattern), the refinement (``fits`` on the
simulated plan) and the MILP's memory rows accept exactly the same splits.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from planner_synthetic import random_units

from planner import Cluster, Job
from planner.candidate import Candidate
from planner.memory import memory_pattern, peak_bytes, static_bytes
from planner.milp import stage_terms
from planner.pricing import cost_model
from planner.scoring import Context, Schedules, build_plan, fits
from profiles.types import Profile, ProfileEntry, UnitCost, WholeModel
from simulator import SimInput, simulate
from simulator.actions import stage_ranks
from simulator.costs import DPMode, Layout, Option, Recompute
from simulator.schedules import CUSTOM, SCHEDULES, ScheduleError

REL = 1e-9


def _profile(rng: random.Random, n: int, path) -> Profile:
    """Random units in fp32 and bf16 (bf16: other times, half the bytes), saved to ``path``."""
    rows = random_units(rng, n)
    entries = []
    for dtype, t, size in (("fp32", 1.0, 4), ("bf16", rng.uniform(0.5, 1.5), 2)):
        units = tuple(
            UnitCost(
                f"block{i}",
                "embedding" if i == 0 else "head" if i == n - 1 else "block",
                r["f"] * t,
                r["b"] * t,
                r["b"] * t * r["i_share"],
                r["b"] * t * (1 - r["i_share"]),
                r["params"],
                r["params"] * size,
                r["saved"] * size // 4,
                r["out"] * size // 4,
                0.0,
                loss_saved_bytes=r["saved"] * size // 8 if i == n - 1 else 0,  # freed with I (the loss's)
            )
            for i, r in enumerate(rows)
        )
        whole = WholeModel(*(sum(getattr(u, k) for u in units) for k in ("forward_s", "backward_s", "saved_bytes")))
        entries.append(ProfileEntry(dtype, 1, units, whole))
    config = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000}
    prof = Profile("random", config, "random", "cpu", 16, "analytic", tuple(entries), {})
    prof.save(path)
    return prof


@st.composite
def cases(draw):
    seed = draw(st.integers(0, 2**20))
    rng = random.Random(seed)
    n = draw(st.integers(3, 9))
    custom = draw(st.booleans())
    if custom:
        S = draw(st.integers(2, n))
        pp = draw(st.integers(2, min(S, 4)))
        placement = list(range(pp)) + [draw(st.integers(0, pp - 1)) for _ in range(S - pp)]
        rng.shuffle(placement)
        name, v = CUSTOM.name, None
    else:
        name = draw(st.sampled_from(sorted(SCHEDULES)))
        spec = SCHEDULES[name]
        pp = draw(st.integers(1, 3))
        v = draw(st.integers(spec.min_virtual, spec.max_virtual or 2))
        S = spec.num_stages(pp, v)
        if S > n:
            pp, v, S = 1, spec.min_virtual, spec.min_virtual
        placement = None
    m = draw(st.integers(1, 6))
    cuts = sorted(rng.sample(range(1, n), S - 1))
    edges = [0, *cuts, n]
    bounds = list(zip(edges[:-1], edges[1:]))
    options = [
        Option(draw(st.sampled_from(["fp32", "bf16"])), draw(st.sampled_from(list(Recompute)))) for _ in range(S)
    ]
    dp = draw(st.integers(1, 3))
    tp = draw(st.sampled_from([1, 2]))
    layout = Layout(
        tp=tp,
        dp=dp,
        dp_mode=draw(st.sampled_from(list(DPMode))),
        sequence_parallel=tp > 1 and draw(st.booleans()),
        reshard_after_forward=pp == 1,
        overlap_grad_reduce=draw(st.booleans()),
        grads_fp32=draw(st.booleans()),
    )
    cluster = Cluster(
        devices=pp * dp * tp,
        memory_bytes=10**15,
        devices_per_node=draw(st.integers(1, 4)),
        intra_bandwidth_Bps=draw(st.sampled_from([1e9, 5e10])),
        intra_latency_s=draw(st.sampled_from([0.0, 5e-6])),
        inter_bandwidth_Bps=draw(st.sampled_from([1e8, 1e9])),
        inter_latency_s=draw(st.sampled_from([0.0, 2e-5])),
        action_overhead_s=draw(st.sampled_from([0.0, 3e-4])),
        optimizer_s_per_param=draw(st.sampled_from([0.0, 2e-9])),
    )
    return seed, n, name, pp, v, m, placement, bounds, options, layout, cluster


def _close(a: float, b: float) -> bool:
    return a == pytest.approx(b, rel=REL, abs=1e-12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases())
def test_milp_terms_equal_the_simulators_costs(case, tmp_path):
    seed, n, name, pp, v, m, placement, bounds, options, layout, cluster = case
    dp = layout.dp
    path = tmp_path / f"p{seed}.json"
    profile = _profile(random.Random(seed), n, path)
    job = Job(
        global_batch=m * dp,
        microbatch_size=1,
        schedules=(name,),
        dtypes=("fp32", "bf16"),
        recompute=("none", "selective", "full"),
    )
    schedules = Schedules(job)
    try:
        table = schedules.table(name, pp, m, v, tuple(placement) if placement else None)
    except ScheduleError:
        return  # e.g. microbatches that do not split into the schedule's rounds
    model = schedules.model(name, pp, m, v, tuple(placement) if placement else None)
    costs = cost_model(profile, cluster, job, 1, layout=layout)
    stage_costs = costs.stage_costs(bounds, options)

    def plan_at(cap: int):
        tight = Cluster(**{**cluster.to_dict(), "memory_bytes": max(1, cap)})
        where = tuple(placement) if placement else None
        c = Candidate.named(name, pp=pp, m=m, virtual=v or 1, layout=layout, placement=where)
        return build_plan(Context(profile, str(path), tight, job), c, bounds, options, table=table, costs=costs)

    if placement:  # Custom orders its table by the split's own costs: hold the MILP to that table
        table = plan_at(10**15).table
        model = replace(model, memory=memory_pattern(table))
    owner = stage_ranks(table)

    # the per-stage terms
    terms = stage_terms(costs, model, bounds, options)
    links = costs.links
    for s, (t, c) in enumerate(zip(terms.stages, stage_costs)):
        assert _close(t.forward_s, c.forward_s) and _close(t.backward_s, c.backward_s)
        assert _close(t.backward_input_s, c.backward_input_s) and _close(t.backward_weight_s, c.backward_weight_s)
        assert t.static_bytes == c.static_bytes and t.activation_bytes == c.activation_bytes
        assert t.keep_bytes == c.keep_bytes and t.grad_bytes == c.param_bytes
        assert _close(t.optimizer_s, c.optimizer_s)
        if s + 1 < len(stage_costs) and owner[s] != owner[s + 1]:
            # the engine's hand-offs: the output forward, the next stage's input gradient back
            hand = links.transfer_s(owner[s], owner[s + 1], c.output_bytes)
            hand += links.transfer_s(owner[s + 1], owner[s], stage_costs[s + 1].input_bytes)
            assert _close(t.sends_s, hand)

    # per-rank memory and the end-of-step tail, against the simulated step
    held_once = costs.held_once(bounds, options, owner)  # per-rank bytes its stages count more than once
    timeline = simulate(
        SimInput(
            table,
            stage_costs,
            links,
            dp=dp,
            comm=costs.dp_comm,
            held_once=held_once,
            per_rank_bytes=costs.per_rank_bytes,
        )
    )
    for r in timeline.ranks:
        assert _close(terms.peak_bytes[r.rank], r.peak_bytes)
        mine = [s for s, o in owner.items() if o == r.rank]
        grad = sum(stage_costs[s].param_bytes for s in mine)
        reduced = sum(stage_costs[s].reduced_bytes for s in mine)
        opt = sum(stage_costs[s].optimizer_s for s in mine)
        assert _close(terms.tail_s[r.rank], costs.tail_s(grad, opt, reduced))
        assert _close(terms.head_s[r.rank], costs.head_s(grad))

    # the screen, the refinement and the MILP's memory rows accept the same splits
    peak = max(r.peak_bytes for r in timeline.ranks)
    for cap in (peak - 1, peak, peak + 1, int(peak * 0.9)):
        cap = max(1, cap)
        admitted = stage_terms(costs, model, bounds, options, cap).admitted
        screened = (
            max(static_bytes(dict(owner), stage_costs, per_rank=costs.per_rank_bytes).values()) <= cap
            and max(peak_bytes(model.memory, stage_costs, per_rank=costs.per_rank_bytes).values()) <= cap
        )
        assert admitted == fits(plan_at(cap)) == screened, (cap, peak)
