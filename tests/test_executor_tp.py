"""Prototype: tensor parallelism inside pipeline stages (hidden worker flag ``--tp``, until the
Plan carries tp): pp 2 x tp 2 of a tiny Llama on 4 CPU ranks (gloo) matches one process."""

from __future__ import annotations

import json

from test_executor_schedules import torchrun


def test_pp2_tp2_llama_matches_one_process(tmp_path):
    from executor.plans import validation_plan
    from planner.cluster import Cluster
    from profiles import profile_model

    prof_path = tmp_path / "profile.json"
    prof = profile_model("llama-tiny", seq_len=16, repeats=1, warmup=0)
    prof.save(prof_path)
    plan = validation_plan(prof, prof_path, Cluster(devices=2), "1F1B", 2, 2, bounds=[(0, 2), (2, 4)])
    path = plan.save(tmp_path / "plan.json")
    r, _ = torchrun(4, str(path), "--tp", "2", "--check", "--steps", "1", "--warmup", "0")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-4000:]
    data = json.loads(path.with_suffix(".run.json").read_text())
    check = data["check"]
    assert data["world_size"] == 4 and check["passed"] and check["max_rel_diff"] <= 1e-4, check
    assert check["loss_rel_diff"] <= 1e-5, check
    # every tp rank ran its stage's actions; each holds half of its block's projections
    assert {e["rank"] for e in data["events"]} == {0, 1, 2, 3}
    units = [u.params for u in prof.entries[0].units]
    params = data["extra"]["params"]
    assert params[0] == params[1] < units[0] + units[1] and params[2] == params[3] < units[2] + units[3]
    assert params[0] > units[0] + units[1] / 2 - 1000  # the block's norms stay whole
