"""Faults a user meets: torchrun's agent killed, Ctrl-C to ``pipeplan run``, ``--json`` output,
a failed check, a launch outside torchrun, a plan bigger than this host, and two torchrun agents
acting as two nodes. Each launch costs ~10 s of start-up: few launches."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def _workers(marker: str) -> list[int]:
    """Live (not zombie) executor workers whose command line names ``marker``."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            state = next(x for x in (d / "status").read_text().splitlines() if x.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if b"executor" in cmd and marker.encode() in b" ".join(cmd) and "zombie" not in state:
            if b"torch.distributed.run" not in cmd and b"pipeplan.py" not in cmd:
                pids.append(int(d.name))
    return pids


def _wait_for(fn, timeout: float, step: float = 0.25):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = fn()
        if got:
            return got
        time.sleep(step)
    return fn()


def _long_plan(tiny_plan_path: Path, name: str) -> Path:
    """A copy of the tiny 2-rank plan under its own name (to find its workers)."""
    path = tiny_plan_path.with_name(f"{name}.json")
    path.write_text(tiny_plan_path.read_text())
    return path


def _started(marker: str, n: int = 2) -> list[int]:
    """Workers of ``marker`` once ``n`` exist and have had time to reach their steps."""
    pids = _wait_for(lambda: len(_workers(marker)) >= n and _workers(marker), 60) or []
    assert len(pids) >= n, "workers did not start"
    time.sleep(5)  # imports and process groups done: the ranks are in their steps
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds workers through /proc (Linux)")
def test_killed_agent_leaves_no_worker(tiny_plan_path):
    plan = _long_plan(tiny_plan_path, "agent-killed")
    agent = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "executor"]
        + [str(plan), "--steps", "10000", "--warmup", "0"],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _started(plan.stem)
        agent.kill()
        agent.wait()
        assert _wait_for(lambda: not _workers(plan.stem), 30), _workers(plan.stem)
    finally:
        for pid in _workers(plan.stem):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds workers through /proc (Linux)")
def test_sigint_to_pipeplan_run_stops_every_rank(tiny_plan_path):
    plan = _long_plan(tiny_plan_path, "interrupted")
    run = subprocess.Popen(
        [sys.executable, str(ROOT / "pipeplan.py"), "run", str(plan), "--steps", "10000", "--warmup", "0"],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _started(plan.stem)
        t = time.monotonic()
        run.send_signal(signal.SIGINT)  # to this process alone, as `kill -INT` or a scheduler sends it
        _, err = run.communicate(timeout=30)
        assert run.returncode == 130, err[-2000:]
        assert _wait_for(lambda: not _workers(plan.stem), 10), _workers(plan.stem)
        assert time.monotonic() - t < 15
    finally:
        if run.poll() is None:
            run.kill()
        for pid in _workers(plan.stem):
            os.kill(pid, signal.SIGKILL)


def test_validate_json_prints_one_object(tiny_plan_path):
    from conftest import run_cli

    plan = _long_plan(tiny_plan_path, "json")
    r = run_cli("validate", str(plan), "--steps", "1", "--warmup", "0", "--json", timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(r.stdout)  # nothing else on stdout: the workers' lines went to stderr
    assert data["schema"] == "pipeplan.runreport/1" and "measured step" in r.stderr
    assert all(rank["host_peak_bytes"] > 0 for rank in data["ranks"])


def test_failed_check_keeps_its_report_and_status(tiny_plan_path):
    """A gradient made infinite: CHECK FAILED, status 3 from the launcher, a report that loads."""
    from executor import load_report
    from executor.cli import launch

    plan = _long_plan(tiny_plan_path, "failed-check")
    report = plan.with_suffix(".run.json")
    args = [str(plan), "--check", "--steps", "1", "--warmup", "0", "--perturb-grad", "inf"]
    assert launch("executor", args, 2, stdout=subprocess.DEVNULL) == 3
    data = json.loads(report.read_text())
    assert data["check"]["passed"] is False and data["check"]["max_rel_diff"] in ("inf", "nan")
    back = load_report(report).check
    assert not back.passed and not math.isfinite(back.max_rel_diff) and back.why


def test_outside_torchrun_says_how_to_launch(tiny_plan_path):
    env = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    r = subprocess.run(
        [sys.executable, "-m", "executor", str(tiny_plan_path)], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 2 and "torchrun --nproc_per_node" in r.stderr and "Traceback" not in r.stderr


def test_plan_bigger_than_this_host_is_refused(tmp_path):
    """The refusal proposes the plan's own nodes (its cluster's devices per node), not this
    host's cores: the lines ``pipeplan plan`` prints, one per node, with a thread setting for
    CPU plans only."""
    from conftest import run_cli

    from executor.cli import OVERSUBSCRIBE_MAX_PER_CORE
    from executor.plans import validation_plan
    from planner.cluster import Cluster, preset_cluster
    from profiles.analytic import analytic_profile

    cores = len(os.sched_getaffinity(0))
    big = OVERSUBSCRIBE_MAX_PER_CORE * cores + 1
    prof = analytic_profile("mlp-tiny", dtypes=("fp32",), seq_len=8, overrides={"depth": max(big, 16)})
    prof_path = prof.save(tmp_path / "profile.json")
    cases = [
        (Cluster(devices=cores + 1, device="cpu", devices_per_node=cores + 1), [], 1),  # one node of the plan's
        (Cluster(devices=big, device="cpu", devices_per_node=1), ["--oversubscribe"], big),  # a rank a node
        (preset_cluster("h100:2"), [], 2),  # 2 nodes of 8 GPUs, whatever this host has
    ]
    for cluster, flags, nodes in cases:
        pp = cluster.devices
        plan = validation_plan(prof, prof_path, cluster, "GPipe", pp, pp)
        path = plan.save(tmp_path / f"plan{pp}.json")
        r = run_cli("run", str(path), *flags, timeout=60)
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and f"needs {pp} processes" in r.stderr, r.stderr
        lines = [x for x in r.stdout.splitlines() if "torchrun" in x]
        assert len(lines) == nodes, r.stdout
        per_node = pp // nodes
        for k, line in enumerate(lines):
            assert f"--nproc_per_node {per_node} " in line and line.rstrip().endswith(
                "--report " + str(path.with_suffix(".run.json"))
            ), line
            assert ("OMP_NUM_THREADS=1" in line) == (cluster.device == "cpu"), line
            if nodes == 1:
                assert "--standalone" in line and "--nnodes" not in line, line
            else:
                assert f"--nnodes {nodes} " in line and f"--node_rank {k} " in line, line
                assert "--rdzv_backend c10d" in line and "--standalone" not in line, line
        assert not path.with_suffix(".run.json").exists()


def test_two_agents_as_two_nodes(tiny_plan_path):
    """Two torchrun agents, one rank each, meeting at a c10d rendezvous on 127.0.0.1; the tokens
    come from a nanoGPT-style uint16 .bin file."""
    import numpy as np

    plan = _long_plan(tiny_plan_path, "two-nodes")
    data = plan.with_name("tokens.bin")
    (np.arange(5000, dtype=np.uint16) % 1000).tofile(data)  # gpt2-tiny: 1000 ids
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agents = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node)]
            + ["--nproc_per_node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}"]
            + ["--rdzv-id", "two-nodes", "-m", "executor", str(plan), "--check", "--steps", "1", "--warmup", "0"]
            + ["--data", str(data)],
            env=ENV,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    try:
        outs = [a.communicate(timeout=240) for a in agents]
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
    assert all(a.returncode == 0 for a in agents), [o[1][-2000:] for o in outs]
    data_path, data = data, json.loads(plan.with_suffix(".run.json").read_text())
    assert data["world_size"] == 2 and data["check"]["passed"], data["check"]
    assert {e["rank"] for e in data["events"]} == {0, 1} and data["extra"]["data"] == str(data_path)
