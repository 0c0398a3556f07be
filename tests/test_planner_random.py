"""The planner against exhaustive search: on random small chains (<= 16 units, p <= 4, three or
four schedules, memory caps that bind in most), its best plan is within 0.5% of the best
contiguous split found by simulating every one, and it never exceeds the memory cap."""

from __future__ import annotations

import random

import pytest
from planner_synthetic import exhaustive, random_units, synthetic_profile

from planner import Cluster, InfeasibleError, Job, search
from profiles.types import load_profile

INSTANCES = 50
FIRST_SEED = 1000
TOLERANCE = 0.005


def instance(seed: int, tmp_path):
    rng = random.Random(seed)
    pp = rng.choice([2, 3, 4])
    U = rng.randint(max(2 * pp if pp == 2 else pp, 4), 16 if pp < 4 else 12)
    m = pp * rng.choice([1, 2, 3]) if pp > 2 else rng.choice([4, 6, 8])
    path = synthetic_profile(random_units(rng, U), tmp_path / f"synthetic_{seed}.json")
    schedules = ("GPipe", "1F1B", "InterleavedZeroBubble") + (("ZBVZeroBubble",) if pp == 2 else ())
    job = Job(global_batch=m, microbatch_size=1, schedules=schedules, pp=(pp,), virtual=(1, 2) if pp == 2 else (1,))
    links = dict(intra_bandwidth_Bps=rng.choice([1e8, 1e9, 1e10]), intra_latency_s=rng.choice([0.0, 5e-5, 3e-4]))
    return rng, path, job, pp, m, links


def test_planner_matches_exhaustive_search(tmp_path):
    compared, binding, infeasible, ratios = 0, 0, 0, []
    seed = FIRST_SEED
    while compared < INSTANCES:
        rng, path, job, pp, m, links = instance(seed, tmp_path)
        seed += 1
        profile = load_profile(path)
        free = exhaustive(profile, path, Cluster(devices=pp, memory_bytes=10**15, **links), job, pp)
        peak = max(free.predicted.peak_bytes)
        cap = int(peak * rng.uniform(0.75, 1.1)) if rng.random() < 0.6 else 10**15
        cluster = Cluster(devices=pp, memory_bytes=cap, **links)
        ref = exhaustive(profile, path, cluster, job, pp) if cap < 10**15 else free
        if ref is None:
            with pytest.raises(InfeasibleError):
                search(profile, cluster, job, top=1, profile_path=path)
            infeasible += 1
            continue
        plans, _ = search(profile, cluster, job, top=1, profile_path=path)
        best = plans[0]
        assert max(best.predicted.peak_bytes) <= cap, f"seed {seed - 1}: over the memory cap"
        ratio = best.predicted.step_s / ref.predicted.step_s
        assert ratio <= 1 + TOLERANCE, (
            f"seed {seed - 1}: planner {best.schedule} {best.split} is {ratio:.4f}x "
            f"the exhaustive best {ref.schedule} v{ref.virtual} {ref.split}"
        )
        ratios.append(ratio)
        binding += cap < peak
        compared += 1
    assert binding >= 10, "the memory cap should bind in a good share of the instances"
    print(
        f"{compared} instances ({binding} with a binding memory cap, {infeasible} infeasible skipped): "
        f"max ratio {max(ratios):.5f}, exact {sum(r <= 1 + 1e-9 for r in ratios)}"
    )
