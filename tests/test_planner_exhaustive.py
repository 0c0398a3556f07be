"""The planner against exhaustive search over its whole space on small instances: tensor-parallel
degree x data-parallel mode x schedule x stages per rank x split x each stage's precision or
recompute, every combination the job allows simulated. The planner's best plan is within 0.5%
of the fastest that fits, and never over the memory cap."""

from __future__ import annotations

import itertools
import random

from planner_synthetic import random_units, synthetic_profile

from planner import Cluster, InfeasibleError, Job, search
from planner.pricing import cost_model, job_options
from planner.scoring import build_plan, fits
from profiles.types import load_profile
from simulator.actions import ScheduleError
from simulator.costs import DPMode, Layout
from simulator.schedules import SCHEDULES, schedule_spec

INSTANCES = 200
FIRST_SEED = 5000
TOLERANCE = 0.005
DEVICES = 4  # pp 2 x (tp 1, dp 2 | tp 2, dp 1)
CONFIG = {"num_attention_heads": 4, "num_key_value_heads": 4, "hidden_size": 64, "vocab_size": 256}


def _layouts(job: Job, pp: int):
    for tp in job.tp:
        dp = DEVICES // (pp * tp)
        for mode in job.dp_modes if dp > 1 else ("ddp",):
            yield Layout(tp=tp, dp=dp, dp_mode=DPMode(mode), sequence_parallel=tp > 1, reshard_after_forward=pp == 1)


def exhaustive(profile, path, cluster, job, pp):
    """Every layout, schedule, virtual, contiguous split and per-stage option the job allows, simulated."""
    U, best = profile.num_units, None
    options = job_options(job)
    for layout in _layouts(job, pp):
        m = job.global_batch // layout.dp
        costs = cost_model(profile, cluster, job, 1, layout=layout)
        for name in job.schedules:
            spec = schedule_spec(name)
            for v in job.virtual:
                try:
                    spec.check(pp, m, v)
                except ScheduleError:
                    continue
                S = spec.num_stages(pp, v)
                if S > U:
                    continue
                for cuts in itertools.combinations(range(1, U), S - 1):
                    edges = [0, *cuts, U]
                    bounds = list(zip(edges[:-1], edges[1:]))
                    for chosen in itertools.product(options, repeat=S):
                        p = build_plan(
                            profile, str(path), cluster, job, bounds, name, pp, layout.dp, m, 1, list(chosen), v,
                            costs=costs,
                        )  # fmt: skip
                        if fits(p) and (best is None or p.predicted.step_s < best.predicted.step_s):
                            best = p
    return best


def instance(seed: int, tmp_path):
    rng = random.Random(seed)
    U = rng.randint(3, 5)
    per_stage = rng.choice(["recompute", "dtype"])  # each stage chooses one of two (2^S combinations)
    path = synthetic_profile(
        random_units(rng, U),
        tmp_path / f"full_{seed}.json",
        config={**CONFIG, "num_hidden_layers": U},
        dtypes=("fp32", "bf16") if per_stage == "dtype" else ("fp32",),
    )
    job = Job(
        global_batch=8,
        microbatch_size=1,
        pp=(2,),
        schedules=tuple(rng.sample(list(SCHEDULES), 2)),
        virtual=(1, 2),
        tp=rng.choice([(1,), (2,), (1, 2)]),
        dp_modes=tuple(rng.sample(["ddp", "zero1", "zero2", "fsdp"], rng.randint(1, 2))),
        recompute=("none", "full") if per_stage == "recompute" else ("none",),
        dtypes=("fp32", "bf16") if per_stage == "dtype" else ("fp32",),
    )
    links = dict(
        intra_bandwidth_Bps=rng.choice([1e8, 1e9, 1e10]),
        intra_latency_s=rng.choice([0.0, 5e-5]),
        devices_per_node=DEVICES,
    )
    return rng, path, job, links


def test_planner_matches_exhaustive_search_over_the_whole_space(tmp_path):
    compared, binding, ratios, seed = 0, 0, [], FIRST_SEED - 1
    while compared < INSTANCES:
        seed += 1
        rng, path, job, links = instance(seed, tmp_path)
        profile = load_profile(path)
        free = exhaustive(profile, path, Cluster(devices=DEVICES, memory_bytes=10**15, **links), job, 2)
        if free is None:
            continue  # no schedule of the job runs on these units
        peak = max(free.predicted.peak_bytes)
        cap = int(peak * rng.uniform(0.6, 1.05)) if rng.random() < 0.6 else 10**15
        cluster = Cluster(devices=DEVICES, memory_bytes=cap, **links)
        ref = exhaustive(profile, path, cluster, job, 2) if cap < 10**15 else free
        if ref is None:
            try:
                search(profile, cluster, job, top=1, profile_path=path)
            except InfeasibleError:
                continue
            raise AssertionError(f"seed {seed}: the planner found a plan where exhaustive search found none")
        best = search(profile, cluster, job, top=1, profile_path=path)[0][0]
        assert max(best.predicted.peak_bytes) <= cap, f"seed {seed}: over the memory cap"
        ratio = best.predicted.step_s / ref.predicted.step_s
        assert ratio <= 1 + TOLERANCE, (
            f"seed {seed}: planner {best.schedule} v{best.virtual} tp{best.tp} {best.dp_mode.value} {best.split} "
            f"{[s.option for s in best.stages]} is {ratio:.4f}x the exhaustive best {ref.schedule} v{ref.virtual} "
            f"tp{ref.tp} {ref.dp_mode.value} {ref.split} {[s.option for s in ref.stages]}"
        )
        ratios.append(ratio)
        binding += cap < peak
        compared += 1
    assert binding >= 20, "the memory cap should bind in a good share of the instances"
    print(f"{compared} compared ({binding} with a binding cap), worst ratio {max(ratios):.4f}")
