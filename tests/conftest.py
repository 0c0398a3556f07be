"""Shared fixtures: one tiny measured profile and a 2-stage plan of it, made once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python pipeplan.py ARGS`` as a user would; returns the completed process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, str(ROOT / "pipeplan.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd or ROOT,
    )


@pytest.fixture(scope="session")
def tiny_profile_path(tmp_path_factory) -> Path:
    from profiles import profile_model

    path = tmp_path_factory.mktemp("profile") / "profile.json"
    profile_model("gpt2-tiny", seq_len=16, microbatch_sizes=(1, 2), repeats=2, warmup=1).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_plan_path(tiny_profile_path, tmp_path_factory) -> Path:
    from planner import Cluster, Job, plan
    from profiles import load_profile

    profile = load_profile(tiny_profile_path)
    plans = plan(
        profile,
        Cluster(devices=2, memory_bytes=2**30),
        Job(global_batch=4, microbatch_size=1, schedules=("1F1B",), pp=(2,)),
        top=1,
        profile_path=tiny_profile_path,
    )
    path = tiny_profile_path.parent / "plan.json"
    plans[0].save(path)
    return path
