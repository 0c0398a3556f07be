"""The executor under torchrun: every schedule's loss and gradients equal one process's, on
2 ranks (all seven schedules, one launch) and 4 ranks (1F1B and Interleaved1F1B, one
launch); a plan that does not fit the launch fails before compute; an exception on one
rank brings every rank down within 60 s. Few launches: each costs ~10 s of start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from simulator.actions import flat_actions, parse_action

SCHEDULES_2 = [
    ("GPipe", 1),
    ("1F1B", 1),
    ("Interleaved1F1B", 2),
    ("LoopedBFS", 2),
    ("InterleavedZeroBubble", 2),
    ("ZBVZeroBubble", 2),
    ("DualPipeV", 2),
]


def torchrun(nproc: int, *args: str, timeout: float = 240) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    t = time.monotonic()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "executor",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    return r, time.monotonic() - t


@pytest.fixture(scope="module")
def deep_profile(tmp_path_factory) -> Path:
    """gpt2-tiny with 6 blocks: 8 units, enough for 4 ranks x 2 stages."""
    from profiles import profile_model

    path = tmp_path_factory.mktemp("exec") / "profile.json"
    profile_model("gpt2-tiny", seq_len=16, overrides={"n_layer": 6}, repeats=2, warmup=1).save(path)
    return path


def _plans(profile_path: Path, pp: int, cases: list[tuple[str, int]], microbatches: int) -> list[Path]:
    from executor.plans import validation_plan
    from planner.cluster import Cluster
    from profiles import load_profile

    profile = load_profile(profile_path)
    out = []
    for name, v in cases:
        plan = validation_plan(profile, profile_path, Cluster(devices=pp), name, pp, microbatches, virtual=v)
        out.append(plan.save(profile_path.parent / f"{name}-pp{pp}.json"))
    return out


def _assert_checked(r: subprocess.CompletedProcess, plans: list[Path], expect_actions) -> None:
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-4000:]
    for path in plans:
        data = json.loads(path.with_suffix(".run.json").read_text())
        check = data["check"]
        assert check["passed"] and check["max_rel_diff"] <= 1e-4, (path.name, check)
        assert check["loss_rel_diff"] <= 1e-5, (path.name, check)
        plan = json.loads(path.read_text())
        table = {
            (int(r), str(a))
            for r, acts in plan["schedule"]["table"].items()
            for a in flat_actions([parse_action(x) for x in acts])
        }  # a pair ran as its F and its B
        ran = {(e["rank"], f"{e['stage']}{e['kind']}{e['microbatch']}") for e in data["events"]}
        assert ran == table, path.name  # every action of the table ran, on its rank, and nothing else
        assert data["predicted_step_s"] > 0 and len(data["step_s"]) == 1
        expect_actions(plan)


def test_all_seven_schedules_on_two_ranks_match_one_process(deep_profile):
    """Plus a forward-only (inference) plan in the same launch: its output vs one process."""
    from executor.plans import validation_plan
    from planner.cluster import Cluster
    from profiles import load_profile

    plans = _plans(deep_profile, 2, SCHEDULES_2, 4)
    fwd = validation_plan(
        load_profile(deep_profile), deep_profile, Cluster(devices=2), "GPipe", 2, 4, forward_only=True
    ).save(deep_profile.parent / "forward-only.json")
    r, _ = torchrun(2, *map(str, plans), str(fwd), "--check", "--steps", "1", "--warmup", "0")
    _assert_checked(r, plans, lambda plan: None)
    assert r.stdout.count("check passed") == len(plans) + 1
    data = json.loads(fwd.with_suffix(".run.json").read_text())
    assert data["check"]["passed"] and {e["kind"] for e in data["events"]} == {"F"} and not data["losses"]


def test_precision_recompute_data_torch_schedule_and_profiler(tmp_path):
    """bf16 and fp16 (loss-scaled) stages, per-unit recompute, --data, torch's Schedule1F1B
    on the same stages, and --torch-profiler traces: one launch, every plan checked."""
    from dataclasses import replace

    from executor.plans import validation_plan
    from planner.cluster import Cluster
    from profiles import load_profile, profile_model

    prof_path = tmp_path / "profile.json"
    profile_model("gpt2-tiny", seq_len=8, dtypes=("fp32", "bf16", "fp16"), repeats=1, warmup=0).save(prof_path)
    prof, cluster = load_profile(prof_path), Cluster(devices=2)
    bf16 = validation_plan(prof, prof_path, cluster, "1F1B", 2, 2, dtype="bf16")
    fp16 = replace(bf16, stages=tuple(replace(s, dtype="fp16") for s in bf16.stages))
    recompute = validation_plan(prof, prof_path, cluster, "1F1B", 2, 2, recompute=True)
    plans = [p.save(tmp_path / f"{n}.json") for n, p in [("bf16", bf16), ("fp16", fp16), ("recompute", recompute)]]
    text = tmp_path / "text.txt"
    text.write_text("pipeplan runs the plan for real and holds the prediction to it. " * 4)
    r, _ = torchrun(
        2,
        *map(str, plans),
        "--check",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--data",
        str(text),
        "--torch-schedule",
        "1F1B",
        "--torch-profiler",
        str(tmp_path / "prof"),
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-4000:]
    for p in plans:
        data = json.loads(p.with_suffix(".run.json").read_text())
        assert data["check"]["passed"], (p.name, data["check"])
        assert data["extra"]["runtime"] == "torch Schedule1F1B" and data["extra"]["data"] == str(text)
        tol = 2e-2 if p.stem != "recompute" else 1e-4
        assert data["check"]["rtol"] == tol
        assert {e["kind"] for e in data["events"]} == {"F", "B"}
    assert len(list((tmp_path / "prof").glob("*.trace.json"))) == 2 * len(plans)


def test_interleaved_on_four_ranks_match_one_process(deep_profile):
    """1F1B and Interleaved1F1B on 4 pipeline ranks, and the planner's pp 2 x dp 2 plan."""
    from planner import Cluster, Job, plan
    from profiles import load_profile

    plans = _plans(deep_profile, 4, [("1F1B", 1), ("Interleaved1F1B", 2)], 8)
    pp_dp = plan(
        load_profile(deep_profile),
        Cluster(devices=4, memory_bytes=2**30),
        Job(global_batch=8, microbatch_size=1, schedules=("1F1B",), pp=(2,)),
        top=1,
        profile_path=deep_profile,
    )[0]
    assert (pp_dp.pp, pp_dp.dp) == (2, 2)
    dp_path = pp_dp.save(deep_profile.parent / "pp2-dp2.json")
    r, _ = torchrun(4, *map(str, plans), str(dp_path), "--check", "--steps", "1", "--warmup", "0")
    _assert_checked(r, plans, lambda plan: None)
    dp_report = json.loads(dp_path.with_suffix(".run.json").read_text())
    assert dp_report["check"]["passed"] and dp_report["world_size"] == 4
    assert {e["rank"] for e in dp_report["events"]} == {0, 1, 2, 3}


def test_mismatched_launch_and_torch_schedule_fail_before_compute(deep_profile):
    """Wrong world size and a torch class whose placement the plan does not have: one line, exit 2.
    Every rank refuses before compute, but torchrun stops the others once the first has exited, so
    a slower rank may be gone before it prints its line."""
    plans = _plans(deep_profile, 2, [("1F1B", 1), ("ZBVZeroBubble", 2)], 4)
    r, secs = torchrun(2, str(plans[1]), "--torch-schedule", "Interleaved1F1B", "--steps", "1", "--warmup", "0")
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("executor rank")]
    assert 1 <= len(errors) <= 2 and all("ScheduleInterleaved1F1B needs" in line for line in errors), r.stderr[-2000:]
    assert "Traceback" not in r.stderr.split("executor rank")[0]
    four = _plans(deep_profile, 4, [("1F1B", 1)], 8)[0]  # a 4-rank plan launched on 2
    r, _ = torchrun(2, str(four), "--steps", "1", "--warmup", "0")
    errors = [line for line in r.stderr.splitlines() if line.startswith("executor rank")]
    assert r.returncode != 0 and 1 <= len(errors) <= 2, r.stderr[-2000:]
    assert all("needs 4 processes" in e for e in errors), r.stderr[-2000:]


def test_check_beyond_tolerance_fails_loudly(deep_profile):
    """A gradient off by more than the fp32 tolerance: non-zero exit and a one-line reason."""
    plans = _plans(deep_profile, 2, [("1F1B", 1)], 4)
    r, _ = torchrun(2, str(plans[0]), "--check", "--steps", "1", "--warmup", "0", "--perturb-grad", "1e-3")
    assert r.returncode != 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "check FAILED" in r.stdout
    line = next(x for x in r.stderr.splitlines() if x.startswith("executor: CHECK FAILED"))
    assert "tolerance 0.0001" in line, line


def test_exception_on_one_rank_brings_all_ranks_down_within_60s(deep_profile):
    plans = _plans(deep_profile, 2, [("1F1B", 1)], 4)
    r, secs = torchrun(
        2, str(plans[0]), "--steps", "3", "--warmup", "0", "--fail-at-step", "2", "--fail-rank", "1", timeout=120
    )
    assert r.returncode != 0
    assert secs < 60, secs
    line = next(x for x in r.stderr.splitlines() if x.startswith("executor rank 1: step 2 failed"))
    assert "stage 1 action 1F0 (input shapes [(1, 16, 64)])" in line, line
