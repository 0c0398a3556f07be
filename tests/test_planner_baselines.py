"""What the plan table tells a trainer: the baselines people run, each priced with its own options,
the words that compare a plan with them, the rates (tokens/s, TFLOP/s, MFU) and one row per
distinct plan; and the cluster a profile implies when none is given."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from planner_synthetic import synthetic_profile

from planner import Cluster, Job, load_plan
from planner.baselines import compare
from planner.candidate import Candidate
from planner.cli import format_plans
from planner.cluster import PRESET_CLUSTERS, cluster_for_device
from planner.figures import figures, versus
from planner.scoring import Context, build_plan, fits
from profiles.contract import UserError
from profiles.types import load_profile
from simulator.costs import Option, Recompute

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "pipeplan.py"), *args], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def heavy(tmp_path_factory):
    """Eight blocks whose activations need recompute on 2 stages under a 1 GiB cap."""
    units = [{"f": 1e-3, "b": 2e-3, "params": 1_000_000, "saved": 200 * 2**20, "out": 2**20} for _ in range(8)]
    path = synthetic_profile(units, tmp_path_factory.mktemp("heavy") / "p.json")
    return load_profile(path), path


def _plan(profile, path, pp: int, rc: Recompute, schedule: str = "1F1B", cap: float = 1.0, m: int = 4):
    cluster = Cluster(devices=pp, memory_bytes=int(cap * GIB))
    bounds = [(s * 8 // pp, (s + 1) * 8 // pp) for s in range(pp)]
    job = Job(global_batch=m, microbatch_size=1)
    c = Candidate.named(schedule, pp=pp, m=m)
    return build_plan(Context(profile, str(path), cluster, job), c, bounds, [Option("fp32", rc)] * pp)


def test_a_hand_split_that_ooms_without_recompute_is_priced_with_the_cheapest_that_fits(heavy):
    profile, path = heavy
    assert not fits(_plan(profile, path, 2, Recompute.NONE))  # what the baseline used to show: OOM
    plan = _plan(profile, path, 2, Recompute.FULL)
    assert fits(plan)
    rows = {b["name"]: b for b in compare(plan)}
    even = rows["even-1F1B"]
    assert even["fits_memory"] and "recompute=full" in even["config"]
    assert even["speedup"] == pytest.approx(even["step_s"] / plan.predicted.step_s)
    assert "cheapest recompute" in even["recipe"]


def test_a_plan_without_a_pipeline_has_no_hand_split_and_is_listed_once(heavy):
    profile, path = heavy
    same = [_plan(profile, path, 1, Recompute.FULL, s, cap=8.0) for s in ("1F1B", "GPipe", "InterleavedZeroBubble")]
    same = [replace(p, baselines=compare(p)) for p in same]
    assert not any(b["name"].endswith("-1F1B") for b in same[0].baselines)  # one stage: no split to compare
    rows = [line for line in format_plans(same).splitlines() if line[:2].strip().isdigit()]
    assert len(rows) == 1 and "no pipeline" in rows[0]


def test_wording_faster_slower_and_oom():
    assert versus({"speedup": 1.3, "fits_memory": True}) == "1.30× faster than"
    assert versus({"speedup": 0.76, "fits_memory": True}) == "0.76× (slower)"
    assert versus({"speedup": 9.0, "fits_memory": False, "peak_bytes": 214 * GIB}) == "OOM (214 GiB)"


def test_the_table_says_slower_for_a_baseline_faster_than_the_plan(heavy):
    profile, path = heavy
    plan = _plan(profile, path, 2, Recompute.FULL)
    quick = {"name": "megatron", "recipe": "r", "config": "c", "step_s": 0.76 * plan.predicted.step_s}
    text = format_plans([replace(plan, baselines=({**quick, "speedup": 0.76, "fits_memory": True},))])
    assert "0.76× (slower)" in text and "0.76× faster" not in text and "0.76x" not in text


def test_figures_follow_the_prediction(heavy):
    profile, path = heavy
    plan = _plan(profile, path, 2, Recompute.FULL)
    fig = figures(plan)
    assert fig.tokens_per_s == pytest.approx(4 * profile.seq_len / plan.predicted.step_s)
    assert fig.tokens_per_s_per_device == pytest.approx(fig.tokens_per_s / 2)
    assert fig.mfu is None  # no device peak in this profile: MFU is not made up
    assert "mfu" not in plan.to_dict()["predicted"] and plan.to_dict()["predicted"]["tokens_per_s"] > 0


def test_the_cluster_follows_the_profile_device():
    assert cluster_for_device("h100") == PRESET_CLUSTERS["h100"] and PRESET_CLUSTERS["h100"].devices == 8
    assert cluster_for_device("cpu").name == "cpu-local"
    assert cluster_for_device("cuda", "NVIDIA A100-SXM4-80GB").name == "a100"
    with pytest.raises(UserError, match="--cluster"):
        cluster_for_device("cuda", "Some Other GPU")


# -- Llama 3 70B on 8 H100 nodes, the README's example ------------------------------------------------


@pytest.fixture(scope="module")
def l70(tmp_path_factory):
    d = tmp_path_factory.mktemp("l70")
    out = _cli(
        "profile", "llama3-70b", "--analytic", "--device-spec", "h100", "--seq-len", "8192", "-o", "l70.json", cwd=d
    )
    assert out.returncode == 0, out.stderr
    return d


def test_70b_plan_table_recipes_and_simulate(l70):
    out = _cli(
        "plan", "l70.json", "--cluster", "h100:8x8", "--global-batch", "512", "-o", "p.json", "--explain", cwd=l70
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    rows = [line for line in text.splitlines() if line[:2].strip().isdigit()]
    # a pp=1 plan once, not under three schedule names: no two rows the same but for the schedule
    shapes = [r.split()[2:] for r in rows if "no pipeline" in r]
    assert len(shapes) == len({tuple(x) for x in shapes})
    assert "cluster: h100:8x8, 64 x h100" in text and "MFU" in text
    plan = load_plan(l70 / "p.json")
    base = {b["name"]: b for b in plan.baselines}
    titan = base["torchtitan"]  # torchtitan's llama3_70b.toml: FSDP + TP 8, full AC
    assert "llama3_70b.toml" in titan["recipe"] and "tp=8+sp" in titan["config"] and "fsdp" in titan["config"]
    assert "recompute=full" in titan["config"] and titan["fits_memory"]
    mega = base["megatron"]
    assert "tp=8+sp" in mega["config"] and "zero1" in mega["config"] and mega["fits_memory"]
    for b in plan.baselines:
        assert versus(b) in text
    pred = json.loads((l70 / "p.json").read_text())["predicted"]
    assert 0 < pred["mfu"] < 1 and pred["model_tflops_per_device"] > 0
    # 6·N per token (N without the embedding, a lookup) plus attention's 12·l·h·s, within 2 %
    prof = plan.profile
    n = sum(u.params for u in prof.entries[0].units if u.kind != "embedding")
    cfg = prof.model_config
    per_token = 6 * n + 12 * cfg["num_hidden_layers"] * cfg["hidden_size"] * prof.seq_len
    assert pred["model_flops_per_step"] == pytest.approx(per_token * 512 * prof.seq_len, rel=0.02)
    sim = _cli("simulate", "p.json", cwd=l70)
    assert sim.returncode == 0, sim.stderr


def test_without_cluster_an_h100_profile_is_planned_on_an_h100_node(tmp_path):
    out = _cli(
        "profile", "llama3-8b", "--analytic", "--device-spec", "h100", "--seq-len", "128", "-o", "l8.json", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    out = _cli(
        "plan", "l8.json", "--global-batch", "32", "--pp", "2", "--tp", "1", "--dp-mode", "ddp",
        "--schedules", "1F1B", "--recompute", "none", "-o", "node.json", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    plan = load_plan(tmp_path / "node.json")
    assert plan.cluster.name == "h100" and plan.cluster.devices == 8 and plan.world_size == 8  # not cpu-local's 2
    assert plan.cluster.inter_bandwidth_Bps == PRESET_CLUSTERS["h100"].inter_bandwidth_Bps
    assert any(n.startswith("cluster: h100 assumed") for n in plan.notes)
    assert "cluster: h100 assumed from the profile's device" in out.stdout
