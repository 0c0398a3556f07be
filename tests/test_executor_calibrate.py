"""``pipeplan calibrate`` measures links, per-action runtime overhead and optimizer time, and the
cost model uses them: overhead in every stage's action times, optimizer time in the step's tail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
from conftest import ROOT


def test_action_overhead_and_optimizer_time_enter_the_stage_costs(tiny_plan_path):
    from planner.plan import load_plan
    from simulator.engine import simulate

    plan = load_plan(tiny_plan_path)
    base = simulate(plan)
    tuned = replace(plan, cluster=replace(plan.cluster, action_overhead_s=1e-3, optimizer_s_per_param=1e-9))
    assert tuned.cluster.links() == plan.cluster.links()  # no longer folded into link latency
    costs, base_costs = tuned.sim_input().costs, plan.sim_input().costs
    for c, b in zip(costs, base_costs):
        assert abs(c.forward_s - b.forward_s - 1e-3) < 1e-12 and abs(c.backward_s - b.backward_s - 1e-3) < 1e-12
        assert c.optimizer_s > 0
    params = sum(u.params for u in plan.profile.entry().units)
    tl = simulate(tuned)
    # the busiest rank runs its 2m actions 1 ms longer each and then its optimizer step
    assert tl.step_s > base.step_s + 2 * plan.microbatches * 1e-3
    assert tl.step_s < base.step_s + 2 * plan.microbatches * 1e-3 * 2 + params * 1e-9 + 1e-6


def test_calibrate_writes_the_measured_figures(tmp_path):
    out = tmp_path / "cluster.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PIPEPLAN_CALIBRATE_REPEATS="5")
    r = subprocess.run(
        [sys.executable, str(ROOT / "pipeplan.py"), "calibrate", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["schema"] == "pipeplan.cluster/1"
    assert 0 < data["action_overhead_s"] < 0.01 and 0 < data["optimizer_s_per_param"] < 1e-7
    assert data["intra_latency_s"] >= 0 and data["intra_bandwidth_Bps"] > 0
    assert data["collective_call_s"] >= 0 and data["ring_Bps"] > 0
    assert "runtime overhead per compute action" in r.stdout and "per call" in r.stdout


def test_collective_fit_recovers_a_call_time_and_a_ring_bandwidth():
    from executor.calibrate import fit_collectives

    call, ring, alpha = 0.4e-3, 1.5e9, 25e-6
    for n in (2, 4):
        k = 2 * (n - 1)
        samples = [(m, call + k * alpha + k / n * m / ring) for m in (4096, 256 << 10, 1 << 20, 8 << 20, 32 << 20)]
        got_call, got_ring = fit_collectives(samples, n, alpha)
        assert got_call == pytest.approx(call, rel=1e-6) and got_ring == pytest.approx(ring, rel=1e-6)
    # a latency larger than the intercept leaves no call time, not a negative one
    assert fit_collectives([(4096, 1e-5), (1 << 20, 1e-3), (8 << 20, 8e-3)], 2, 1e-3)[0] == 0.0


def test_scatter_gather_fit_recovers_its_ring_bandwidth():
    from executor.calibrate import fit_scatter_gather

    call, bw = 0.4e-3, 0.7e9
    for n in (2, 4):
        samples = [(m, call + (n - 1) / n * m / bw) for m in (1 << 20, 8 << 20, 32 << 20)]
        assert fit_scatter_gather(samples, n) == pytest.approx(bw, rel=1e-6)


def test_crossing_gaps_count_only_waited_for_dependencies_across_ranks():
    from executor.calibrate import crossing_gaps

    owner = {0: 0, 1: 1}
    # rank 0 runs stage 0, rank 1 stage 1; 1F1B with two microbatches, times in ms
    events = [
        (0, 0, "F", 0, 0.0, 1.0),
        (0, 0, "F", 1, 1.1, 2.0),
        (1, 1, "F", 0, 1.3, 2.3),  # waited for 0F0 (ended 1.0): gap 0.3
        (1, 1, "B", 0, 2.4, 3.4),  # same rank: no crossing
        (1, 1, "F", 1, 3.5, 4.5),  # 0F1 ended at 2.0, before rank 1 was free (3.4): not waited for
        (0, 0, "B", 0, 3.9, 4.9),  # waited for 1B0 (ended 3.4): gap 0.5
        (1, 1, "B", 1, 4.6, 5.6),
        (0, 0, "B", 1, 6.0, 7.0),
    ]  # waited for 1B1 (ended 5.6): gap 0.4
    gaps = crossing_gaps(events, owner)
    assert set(gaps) == {(0, 1), (1, 0)}
    assert [round(g, 6) for g in gaps[(0, 1)]] == [0.3]
    assert [round(g, 6) for g in sorted(gaps[(1, 0)])] == [0.4, 0.5]


def test_validate_table_says_when_other_load_took_a_ranks_cpu(tiny_plan_path):
    from executor.cli import compare_table
    from executor.report import RunReport
    from planner.plan import load_plan
    from simulator.engine import simulate

    tl = simulate(load_plan(tiny_plan_path))
    quiet = RunReport(
        plan_path="plan.json",
        plan_sha256="0" * 64,
        world_size=2,
        backend="gloo",
        device="cpu",
        step_s=(tl.step_s,),
        timeline=tl.with_source("measured"),
        extra={"off_cpu_fraction": [0.01, 0.02]},
    )
    assert "off the CPU" not in compare_table(tl, quiet)
    loaded = replace(quiet, extra={"off_cpu_fraction": [0.01, 0.12]})
    assert "rank 1 was ready but off the CPU for 12% of its compute time" in compare_table(tl, loaded)
    profile = load_plan(tiny_plan_path).profile
    calm = replace(profile, measurement={**profile.measurement, "off_cpu_fraction": {"fp32/mb1": 0.01}})
    assert "the profile was measured" not in compare_table(tl, quiet, calm)
    busy = replace(profile, measurement={**profile.measurement, "off_cpu_fraction": {"fp32/mb1": 0.2}})
    assert "profiler off the CPU for 20%" in compare_table(tl, quiet, busy)
    assert "profile with --side-by-side 1" in compare_table(tl, quiet, calm)  # timed alone, 2 ranks on one host
    beside = replace(calm, measurement={**calm.measurement, "side_by_side": 1})
    assert "--side-by-side" not in compare_table(tl, quiet, beside)
    # more ranks than cores: the hint asks for what the profiler accepts, and the turns are named
    crowded = replace(quiet, world_size=(os.cpu_count() or 1) + 2)
    text = compare_table(tl, crowded, calm)
    assert f"--side-by-side {(os.cpu_count() or 1) - 1} " in text and "took turns on" in text
    assert "took turns" not in compare_table(tl, quiet, calm)


def test_replay_with_the_runs_own_action_times_separates_the_schedule_model_from_the_profile(tiny_plan_path):
    """A run that behaved exactly as the model says, but with stage 1's forwards 1.5x as slow as
    profiled: its replay (the table simulated with the run's own action times) reproduces its
    step, while the prediction from the profile does not; the table prints both."""
    from executor.cli import compare_table
    from executor.report import RunReport, replayed_step_s
    from planner.plan import load_plan
    from simulator.engine import simulate

    plan = load_plan(tiny_plan_path)
    plan = replace(plan, cluster=replace(plan.cluster, action_overhead_s=2e-4))
    oh, inp = plan.cluster.action_overhead_s, plan.sim_input()
    predicted = simulate(plan)

    def run_like(tl):  # measured events leave out the per-action overhead the simulator adds
        events = tuple(e._replace(end_s=e.end_s - oh) for e in tl.events)
        return RunReport(
            plan_path="plan.json",
            plan_sha256="0" * 64,
            world_size=2,
            backend="gloo",
            device="cpu",
            step_s=(tl.step_s,),
            timeline=replace(tl.with_source("measured"), events=events),
        )

    assert replayed_step_s(plan, run_like(predicted)) == pytest.approx(predicted.step_s, rel=1e-9)
    slow = [replace(c, forward_s=(c.forward_s - oh) * 1.5 + oh) if s == 1 else c for s, c in enumerate(inp.costs)]
    ran = simulate(replace(inp, costs=slow))
    assert ran.step_s > predicted.step_s * 1.01
    report = run_like(ran)
    assert replayed_step_s(plan, report) == pytest.approx(ran.step_s, rel=1e-9)
    table = compare_table(predicted, report, replayed_s=replayed_step_s(plan, report))
    assert "replayed step (ms)" in table and "+0.0%" in table.splitlines()[-3]


_INSIDE = """
import sys, tempfile, time
import torch, torch.distributed as dist
from torch.distributed.pipelining import PipelineStage
from executor.calibrate import measure_runtime
torch.set_num_threads(1)
dist.init_process_group("gloo", store=dist.FileStore(tempfile.mktemp(), 1), rank=0, world_size=1)
plain = measure_runtime(5)
orig = PipelineStage.forward_one_chunk
def slow(self, *a, **k):  # 1 ms of the runtime's own work inside every F, outside its math
    t = time.thread_time()
    while time.thread_time() - t < 1e-3:
        pass
    return orig(self, *a, **k)
PipelineStage.forward_one_chunk = slow
print(*plain[:2], *measure_runtime(5)[:2])
"""


def test_the_runtime_overhead_counts_its_work_inside_an_action_apart_from_the_math():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", _INSIDE], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    between, inside, between_slow, inside_slow = map(float, r.stdout.split())
    # half of a 1F1B table's actions are F: 0.5 ms more per action inside, none between
    assert 0.3e-3 < inside_slow - inside < 0.8e-3
    assert abs(between_slow - between) < 0.25e-3
