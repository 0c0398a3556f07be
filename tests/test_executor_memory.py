"""Each rank builds only its own stages: its host memory grows with them, not with the model,
and ``--check`` (a reference run a unit at a time) keeps that true."""

from __future__ import annotations

import json

from test_executor_schedules import torchrun


def test_rank_host_memory_follows_its_own_stages(tmp_path):
    """Two MLPs of 2 MiB units, 16 and 64 units deep, each cut 1 | rest, one launch with --check.
    Rank 0 holds one unit of either: running the 4x bigger model (100 MiB more weights) may raise
    its peak resident set by a quarter of that difference at most, the cap this test checks (the
    bigger model's extra weights alone would not fit under it). Rank 1 holds the rest, with
    gradients and AdamW state: its peak grows by more than twice the extra weights."""
    from executor.plans import validation_plan
    from planner.cluster import Cluster
    from profiles.analytic import analytic_profile

    paths, whole = [], []
    for depth in (16, 64):
        prof = analytic_profile(
            "mlp-tiny", device_spec_name="h100", dtypes=("fp32",), seq_len=8, overrides={"width": 256, "depth": depth}
        )
        prof_path = prof.save(tmp_path / f"profile{depth}.json")
        whole.append(sum(u.param_bytes for u in prof.entries[0].units))
        plan = validation_plan(prof, prof_path, Cluster(devices=2), "1F1B", 2, 2, bounds=[(0, 1), (1, depth)])
        paths.append(plan.save(tmp_path / f"plan{depth}.json"))
    r, _ = torchrun(2, *map(str, paths), "--check", "--steps", "1", "--warmup", "0")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-4000:]
    small, big = (json.loads(p.with_suffix(".run.json").read_text()) for p in paths)
    assert small["check"]["passed"] and big["check"]["passed"], (small["check"], big["check"])
    grew = [b["host_peak_bytes"] - a["host_peak_bytes"] for a, b in zip(small["ranks"], big["ranks"])]
    extra = whole[1] - whole[0]
    assert grew[0] < extra / 4, (grew, extra)
    assert grew[1] > 2 * extra, (grew, extra)


def test_saved_bytes_are_counted_until_autograd_lets_them_go():
    """The run's memory count (saved tensors live, the CPU stand-in for the allocator's peak) drops
    to zero once the graph is gone, also for tensors a node saves from its own output (exp): held
    by the count as themselves, they would point back at their node and never be freed."""
    import torch

    from executor.runtime import _LiveSaved

    w = torch.nn.Parameter(torch.randn(64, 64))
    x = torch.randn(8, 64, requires_grad=True)
    tracker = _LiveSaved([w])
    with tracker.hooks():
        y = (x @ w).exp().sum()  # mm saves x (and w, a parameter: not counted); exp saves its output
    assert tracker.live == 2 * 8 * 64 * 4
    del y
    assert tracker.live == 0 and tracker.peak == 2 * 8 * 64 * 4
    with tracker.hooks():
        y = (x @ w).exp().sum()
    y.backward()
    assert tracker.live == 0  # the backward frees them
