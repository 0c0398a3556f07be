"""Every file the planner writes loads in every command that reads it: plans from random jobs
(OOM baselines, forward-only, Custom placements, every dp mode, tp, recompute, several nodes)
are written as ``pipeplan plan`` writes them and fed to ``simulate``, the loader ``run`` and
``validate`` start with, the dashboard's loader and simulation, and every export (which writes
or refuses in one line)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dashboard.data import saved_plan, saved_plan_timeline
from planner import PRESET_CLUSTERS, InfeasibleError, Job, search
from planner.cli import write_plan_files
from planner.export import TARGETS, export_text
from planner.plan import load_plan
from profiles.contract import UserError
from profiles.types import load_profile
from simulator.engine import simulate
from simulator.schedules import CUSTOM, SCHEDULES

GPT2 = Path(__file__).resolve().parent / "data" / "gpt2-demo-cpu.json"
PROFILE = load_profile(GPT2)

jobs = st.fixed_dictionaries(
    {
        "devices": st.sampled_from([1, 2, 4, 8]),
        "per_node": st.sampled_from([1, 2, 8]),
        "memory_mib": st.sampled_from([40, 120, 400, 4096]),  # caps that bind, and one that does not
        "global_batch": st.sampled_from([8, 16]),
        "schedules": st.lists(st.sampled_from([*SCHEDULES, CUSTOM.name]), min_size=1, max_size=3, unique=True),
        "dp_modes": st.lists(st.sampled_from(["ddp", "zero1", "zero2", "fsdp"]), min_size=1, unique=True),
        "tp": st.sampled_from([(), (1,), (2,)]),
        "recompute": st.lists(st.sampled_from(["none", "selective", "full"]), min_size=1, unique=True),
        "forward_only": st.booleans(),
        "placement": st.booleans(),
    }
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(jobs)
def test_every_plan_written_loads_in_every_reader(tmp_path_factory, j):
    cluster = replace(
        PRESET_CLUSTERS["cpu-local"],
        devices=j["devices"],
        devices_per_node=j["per_node"],
        memory_bytes=j["memory_mib"] * 2**20,
    )
    schedules = tuple(j["schedules"])
    placements = ((0, 1, 0),) if j["placement"] and CUSTOM.name in schedules else ()
    job = Job(
        global_batch=j["global_batch"],
        schedules=schedules,
        dp_modes=tuple(j["dp_modes"]),
        tp=j["tp"],
        recompute=tuple(j["recompute"]),
        forward_only=j["forward_only"],
        objective="throughput" if j["forward_only"] else "step",
        placements=placements,
    )
    try:
        plans, _ = search(PROFILE, cluster, job, top=2, profile_path=GPT2)
    except InfeasibleError:
        return  # nothing to write: the job's refusal is tested elsewhere
    except UserError as e:  # a job the flags would refuse (e.g. no schedule fits these devices)
        assert "\n" not in str(e)
        return
    folder = tmp_path_factory.mktemp("roundtrip")
    (folder / GPT2.name).write_bytes(GPT2.read_bytes())  # the plan refers to its profile beside it
    for i, p in enumerate(plans):
        path = folder / f"plan{i}.json"
        write_plan_files(replace(p, profile_path=str(folder / GPT2.name)), path)
        loaded = load_plan(path)  # simulate, run and validate all start here
        assert loaded.to_dict() == load_plan(path).to_dict()
        timeline = simulate(loaded)
        assert timeline.step_s > 0
        for b in loaded.baselines:  # an OOM baseline says so in its own field, never with a null
            assert isinstance(b["speedup"], float) and isinstance(b["fits_memory"], bool)
        roots = (str(folder),)
        plan, err = saved_plan(str(path), (0, 0), roots)
        assert err is None and plan is not None, err
        timeline, err = saved_plan_timeline(str(path), (0, 0), roots)
        assert err is None and timeline is not None, err
        for target in TARGETS:
            try:
                assert export_text(loaded, target, path)
            except UserError as e:  # an engine without a setting for this plan: one line naming a field
                assert "\n" not in str(e) and "field" in str(e), str(e)
