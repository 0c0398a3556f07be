"""Precision per stage: under a memory cap the MILP runs different stages in different dtypes,
and the simulator agrees (peaks under the cap, and neither one precision for all fits or is as fast).

Eight equal units; bf16 is *slower* here (as on CPUs) but keeps half the activations. With 1F1B
on two ranks, stage 0 holds two microbatches and stage 1 one: all-fp32 fits no split under the
cap, all-bf16 fits but is slow, bf16 for stage 0 and fp32 for stage 1 fits and is fastest.
"""

from __future__ import annotations

from planner import Cluster, Job, search
from planner.candidate import Candidate
from planner.scoring import Context, build_plan, fits
from profiles.types import Profile, ProfileEntry, UnitCost, WholeModel, load_profile
from simulator.costs import Option

MB = 10**6
CAP = 60 * MB


def _profile(path):
    entries = []
    for dtype, f, saved in (("fp32", 1e-3, 10 * MB), ("bf16", 1.5e-3, 5 * MB)):
        units = tuple(
            UnitCost(
                f"block{i}", "block", f, 2 * f, f, f, 10**5, 10**5 * (4 if dtype == "fp32" else 2), saved, 1000, 1e9
            )
            for i in range(8)
        )
        entries.append(ProfileEntry(dtype, 1, units, WholeModel(8 * f, 16 * f, 8 * saved)))
    Profile("precision", {}, "synthetic", "cpu", 16, "analytic", tuple(entries), {"note": "test"}).save(path)
    return path


def test_memory_cap_mixes_precisions_and_the_simulator_agrees(tmp_path):
    path = _profile(tmp_path / "precision.json")
    profile = load_profile(path)
    cluster = Cluster(devices=2, memory_bytes=CAP)
    job = Job(global_batch=4, microbatch_size=1, schedules=("1F1B",), pp=(2,), dtypes=("fp32", "bf16"))
    best = search(profile, cluster, job, top=1, profile_path=path)[0][0]

    assert [s.dtype for s in best.stages] == ["bf16", "fp32"], best.stages
    assert best.split == [3], best.split  # 3 slow bf16 units against 5 fp32 ones
    assert max(best.predicted.peak_bytes) <= CAP  # simulated, with each stage's own dtype

    def uniform(dtype, cut):
        c = Candidate.named("1F1B", pp=2, m=4)
        return build_plan(Context(profile, str(path), cluster, job), c, [(0, cut), (cut, 8)], [Option(dtype)] * 2)

    # one precision for all: fp32 overflows at every split, bf16 fits but is slower than the mix
    assert not any(fits(uniform("fp32", cut)) for cut in range(1, 8))
    all_bf16 = [p for p in (uniform("bf16", cut) for cut in range(1, 8)) if fits(p)]
    assert all_bf16 and min(p.predicted.step_s for p in all_bf16) > best.predicted.step_s
