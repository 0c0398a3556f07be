"""The head-heavy default GPT-2 (gpt2-demo, vocab 50257) on 2 stages: the planner's split beats
the even split by the margin the profile allows (the best any split can do, found by simulating
all of them). The profile is a stored CPU measurement (tests/data/gpt2-demo-cpu.json, made once
with ``python -m profiles gpt2-demo``) so the test is deterministic and fast."""

from __future__ import annotations

from pathlib import Path

from planner import Cluster, Job, plan, score_split
from planner.candidate import Candidate
from planner.scoring import Context, build_plan
from profiles.types import load_profile
from simulator.costs import Option

GPT2 = Path(__file__).resolve().parent / "data" / "gpt2-demo-cpu.json"


def test_gpt2_demo_two_stages_beats_even_by_the_available_margin():
    profile = load_profile(GPT2)
    cluster = Cluster(devices=2, memory_bytes=4 * 2**30)
    job = Job(global_batch=8, microbatch_size=1, schedules=("1F1B",), pp=(2,))
    best = plan(profile, cluster, job, top=1, profile_path=GPT2)[0]
    U = profile.num_units
    ctx, two = Context(profile, str(GPT2), cluster, job), Candidate.named("1F1B", pp=2, m=8)
    every = [build_plan(ctx, two, [(0, c), (c, U)], [Option()] * 2) for c in range(1, U)]
    optimum = min(p.predicted.step_s for p in every)
    even = score_split(profile, cluster, job, "even", "1F1B", pp=2, profile_path=GPT2)
    available = even.predicted.step_s / optimum
    achieved = even.predicted.step_s / best.predicted.step_s
    assert available > 1.1, "the stored profile should be head-heavy"
    assert achieved >= available / 1.005
    base = {b["name"]: b for b in best.baselines}
    assert abs(base["even-1F1B"]["speedup"] - achieved) < 1e-9
    assert {"torchtitan-1F1B", "deepspeed-parameters-1F1B"} <= set(base)
    print(
        f"gpt2-demo pp=2 1F1B: split {best.split} {best.predicted.step_s * 1e3:.1f} ms vs even "
        f"{even.predicted.step_s * 1e3:.1f} ms: {achieved:.3f}x (best possible {available:.3f}x)"
    )


def test_gpt2_demo_more_schedules_never_worse():
    profile = load_profile(GPT2)
    cluster = Cluster(devices=2, memory_bytes=4 * 2**30)
    one = plan(
        profile, cluster, Job(global_batch=8, microbatch_size=1, schedules=("1F1B",), pp=(2,)), top=1, profile_path=GPT2
    )[0]
    many = plan(
        profile,
        cluster,
        Job(
            global_batch=8,
            microbatch_size=1,
            pp=(2,),
            schedules=(
                "GPipe",
                "1F1B",
                "Interleaved1F1B",
                "InterleavedZeroBubble",
                "ZBVZeroBubble",
                "DualPipeV",
                "LoopedBFS",
            ),
        ),
        top=3,
        profile_path=GPT2,
    )
    assert many[0].predicted.step_s <= one.predicted.step_s * (1 + 1e-9)
    assert [p.predicted.step_s for p in many] == sorted(p.predicted.step_s for p in many)
    for p in many:  # Plan.table is the single source of truth for stage -> rank
        from simulator.actions import stage_ranks

        assert stage_ranks(p.table) == {s.index: s.rank for s in p.stages}
