"""Decoder families (units from their pp plan), a tied model and a user's own nn.Module: each
profiled, planned on 2 stages and run on 2 ranks with --check against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, run_cli
from test_profiles_zoo import FAMILIES, TINY

#: what runs on 2 ranks: Llama, Mistral (sliding window), Qwen2, Gemma 2 (tied, soft-capped, eager
#: attention), Phi-3, GPT-NeoX (embed_in, parallel residual), Mixtral (MoE), and a user nn.Module
#: with a ModuleList and a tied head
RUN = ["llama", "mistral", "qwen2", "gemma2", "phi3", "gpt_neox", "mixtral"]
USER = "tests.user_model:build_module"


def _profile_and_plan(name: str, overrides: dict, folder):
    from planner import Cluster, Job, plan
    from profiles import profile_model

    path = folder / f"{name.replace(':', '__')}.profile.json"
    profile = profile_model(name, seq_len=8, overrides=overrides, repeats=1, warmup=0)
    profile.save(path)
    job = Job(global_batch=2, microbatch_size=1, schedules=("1F1B",), pp=(2,))
    (best,) = plan(profile, Cluster(devices=2, memory_bytes=2**30), job, top=1, profile_path=path)
    out = folder / f"{name.replace(':', '__')}.plan.json"
    best.save(out)
    return profile, best, out


@pytest.fixture(scope="module")
def family_plans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("families")
    made = {f: _profile_and_plan(f, {**TINY, **FAMILIES[f]}, folder) for f in RUN}
    made["user"] = _profile_and_plan(USER, {}, folder)
    return made


def test_profiles_record_tie_moe_and_units(family_plans):
    for family, (profile, _, _) in family_plans.items():
        assert profile.unit_names[0] == "embed" and profile.unit_names[-1] == "head", family
        assert profile.model_config.get("model_type", "user") in (family, "user")
    gemma, user = family_plans["gemma2"][0], family_plans["user"][0]
    assert [(g.units, g.params) for g in gemma.tied] == [(("embed", "head"), 1000 * 64)]
    assert [g.units for g in user.tied] == [("embed", "head")]
    mix = family_plans["mixtral"][0].entries[0].units[1]
    assert mix.active_params < mix.params and mix.forward_flops > 0
    from profiles import load_profile

    for family in ("gemma2", "mixtral"):  # the tie and the active counts survive the file
        profile, best, _ = family_plans[family]
        again = load_profile(best.profile_path)
        assert again.tied == profile.tied and again.entries[0].units == profile.entries[0].units
    assert not family_plans["llama"][0].tied


def test_every_family_runs_on_two_ranks_and_matches_one_process(family_plans):
    """One torchrun launch runs every plan in turn (the executor's own multi-plan mode)."""
    plans = [str(p) for _, _, p in family_plans.values()]
    assert all(b.pp == 2 for _, b, _ in family_plans.values())
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "executor"]
    cmd += [*plans, "--steps", "1", "--warmup", "0", "--check", "--trust-remote-code"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    for family, (_, _, path) in family_plans.items():
        check = json.loads(path.with_suffix(".run.json").read_text())["check"]
        assert check["passed"] and check["tensors"] > 3, (family, check)
        assert abs(check["loss"] - check["loss_reference"]) <= 1e-4 * abs(check["loss_reference"]), family
    # the tied weight sits on both ranks: the embedding on the first stage, the head on the last
    gemma = family_plans["gemma2"][1]
    assert gemma.stages[0].first == 0 and gemma.stages[-1].end == 4 and gemma.stages[0].rank != gemma.stages[-1].rank


def test_code_named_in_a_profile_needs_trust_remote_code(family_plans):
    _, _, path = family_plans["user"]
    r = run_cli("run", str(path), "--steps", "1", timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "--trust-remote-code" in lines[0], r.stderr
    assert USER in lines[0]
