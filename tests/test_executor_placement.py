"""Custom placements run for real: 2 ranks holding unequal numbers of stages (3 stages on 2
ranks, first and last stage on one rank, two neighbours on one rank, and a planner-made table
ordered by stage times), each one's loss and every gradient equal to one process's, in one
launch; ``--torch-schedule`` refuses a Custom plan before any process starts."""

from __future__ import annotations

from conftest import run_cli
from test_executor_schedules import _assert_checked, torchrun


def test_unequal_stages_per_rank_match_one_process(tiny_profile_path):
    from executor.plans import validation_plan
    from planner import Cluster, Job
    from planner.given import score_split
    from profiles import load_profile

    profile, cluster = load_profile(tiny_profile_path), Cluster(devices=2, memory_bytes=2**30)
    assert profile.num_units >= 3
    out = tiny_profile_path.parent
    wrap = validation_plan(profile, tiny_profile_path, cluster, "Custom", 0, 4, placement=[0, 1, 0])
    pair = validation_plan(profile, tiny_profile_path, cluster, "Custom", 0, 3, placement=[0, 0, 1])
    planned = score_split(
        profile,
        cluster,
        Job(global_batch=4, microbatch_size=1),
        "even",
        placement=[1, 0, 1],
        profile_path=tiny_profile_path,
    )
    plans = [p.save(out / f"custom-{name}.json") for name, p in (("wrap", wrap), ("pair", pair), ("planned", planned))]

    def unequal(plan: dict) -> None:
        assert plan["schedule"]["name"] == "Custom"
        ranks = [s["rank"] for s in plan["stages"]]
        assert len(ranks) == 3 and sorted(ranks.count(r) for r in (0, 1)) == [1, 2]

    r, _ = torchrun(2, *map(str, plans), "--check", "--steps", "1", "--warmup", "0")
    _assert_checked(r, plans, unequal)
    assert r.stdout.count("check passed") == len(plans)


def test_torch_schedule_refuses_a_custom_plan_in_one_line(tiny_profile_path):
    from executor.plans import validation_plan
    from planner import Cluster
    from profiles import load_profile

    plan = validation_plan(
        load_profile(tiny_profile_path), tiny_profile_path, Cluster(devices=2), "Custom", 0, 2, placement=[0, 1, 0]
    ).save(tiny_profile_path.parent / "custom-torch.json")
    r = run_cli("run", str(plan), "--torch-schedule", "1F1B", "--steps", "1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "--torch-schedule 1F1B" in r.stderr and "Custom" in r.stderr and "leave out --torch-schedule" in r.stderr
