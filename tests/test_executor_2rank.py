"""The real thing: a 2-rank torchrun pipeline whose loss and gradients match one process."""

from __future__ import annotations

import json

from conftest import run_cli


def test_two_rank_pipeline_matches_single_process(tiny_plan_path):
    report = tiny_plan_path.with_name("plan.run.json")
    r = run_cli("run", str(tiny_plan_path), "--steps", "2", "--warmup", "1", "--check", timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    data = json.loads(report.read_text())
    assert data["schema"] == "pipeplan.runreport/1" and data["world_size"] == 2
    check = data["check"]
    assert check["passed"] and check["tensors"] > 10 and check["max_rel_diff"] < 1e-4
    assert abs(check["loss"] - check["loss_reference"]) < 1e-5 * abs(check["loss_reference"])
    # the measured timeline has every action of the plan's table on its rank
    kinds = {(e["rank"], e["stage"], e["kind"], e["microbatch"]) for e in data["events"]}
    assert len(kinds) == 2 * 2 * 4  # 2 stages x (F, B) x 4 microbatches
    assert len(data["step_s"]) == 2 and all(s > 0 for s in data["step_s"])
    assert data["predicted_step_s"] > 0 and data["error"] is not None
