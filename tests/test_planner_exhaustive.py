"""The planner against exhaustive search over its whole space on small instances: tensor-parallel
degree x data-parallel mode x schedule x stages per rank x split x each stage's precision or
recompute, every combination the job allows simulated. The planner's best plan is within 0.5%
of the fastest that fits, and never over the memory cap."""

from __future__ import annotations

import random

from planner_synthetic import exhaustive, random_units, synthetic_profile

from planner import Cluster, InfeasibleError, Job, search
from profiles.types import load_profile
from simulator.schedules import SCHEDULES

INSTANCES = 200
FIRST_SEED = 5000
TOLERANCE = 0.005
DEVICES = 4  # pp 2 x (tp 1, dp 2 | tp 2, dp 1)
#: a llama-shaped model: its blocks run sequence parallelism, so tp 2 plans carry it (auto)
CONFIG = {
    "model_type": "llama",
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "hidden_size": 64,
    "vocab_size": 256,
}


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
