"""Prototype: tensor parallelism and FSDP inside pipeline stages (hidden worker flags ``--tp`` and
``--dp-mode``, until the Plan carries them): pp 2 x tp 2 and pp 2 x dp 2 (fsdp) of a tiny Llama
on 4 CPU ranks (gloo) match one process."""

from __future__ import annotations

import json

import pytest
from test_executor_schedules import torchrun


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from profiles import profile_model

    prof_path = tmp_path_factory.mktemp("tp") / "profile.json"
    prof = profile_model("llama-tiny", seq_len=16, repeats=1, warmup=0)
    prof.save(prof_path)
    return prof, prof_path


def test_pp2_tp2_llama_matches_one_process(llama):
    from executor.plans import validation_plan
    from planner.cluster import Cluster

    prof, prof_path = llama
    tmp_path = prof_path.parent
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


def test_pp2_dp2_fsdp_llama_and_gpt2_match_one_process(llama):
    """FSDP2 per unit and per stage over the dp mesh dimension (Llama and GPT-2, one launch): each
    rank holds half its stage's parameters, and the gathered gradients equal one process's over
    both replicas' batches."""
    from planner import Cluster, Job, plan
    from profiles import profile_model

    prof, prof_path = llama
    gpt2_path = prof_path.with_name("gpt2-profile.json")
    profile_model("gpt2-tiny", seq_len=16, repeats=1, warmup=0).save(gpt2_path)
    runs = []
    for name, path in [("llama", prof_path), ("gpt2", gpt2_path)]:
        from profiles import load_profile

        p = load_profile(path)
        pp_dp = plan(
            p,
            Cluster(devices=4, memory_bytes=2**30),
            Job(global_batch=4, microbatch_size=1, schedules=("1F1B",), pp=(2,)),
            top=1,
            profile_path=path,
        )[0]
        assert (pp_dp.pp, pp_dp.dp) == (2, 2)
        runs.append((p, pp_dp, pp_dp.save(prof_path.with_name(f"{name}-fsdp.json"))))
    r, _ = torchrun(4, *(str(x) for *_, x in runs), "--dp-mode", "fsdp", "--check", "--steps", "1", "--warmup", "0")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-4000:]
    for p, pp_dp, path in runs:
        data = json.loads(path.with_suffix(".run.json").read_text())
        check = data["check"]
        assert data["world_size"] == 4 and check["passed"] and check["max_rel_diff"] <= 1e-4, (path.name, check)
        units = [u.params for u in p.entries[0].units]
        stage_params = [sum(units[s.first : s.end]) for s in pp_dp.stages]
        # mesh layout, pp outermost: ranks 0 and 1 run stage 0, each holding half of it
        assert {(e["rank"], e["stage"]) for e in data["events"]} == {(0, 0), (1, 0), (2, 1), (3, 1)}
        assert data["extra"]["params"] == [stage_params[0] // 2] * 2 + [stage_params[1] // 2] * 2, path.name
