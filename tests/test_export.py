"""``pipeplan export``: a plan for torchtitan, Megatron-LM and torchrun, checked by the engines' own code.

The engines come from the ``[export]`` extra (``make test`` installs it and sets
PIPEPLAN_REQUIRE_EXPORT=1, so a missing or broken engine fails there); their checks run in a
process of their own (``tests/export_engines.py``). Without the extra, only those checks skip.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import replace

import pytest
from conftest import ROOT, run_cli
from export_engines import available

from planner import Job, plan
from planner.cluster import Cluster, preset_cluster
from planner.export import (
    TARGETS,
    export_text,
    launch_lines,
    megatron_args,
    megatron_layout,
    torchtitan_config,
    torchtitan_parallelism,
)
from planner.plan import load_plan
from profiles.analytic import analytic_profile
from profiles.contract import UserError
from profiles.types import UnitKind
from simulator.costs import DPMode, Recompute
from simulator.schedules import CUSTOM, SCHEDULES, schedule_spec

#: a llama with the sizes of torchtitan 0.3.0's llama3 "debugmodel" flavor (6 blocks, dim 256)
DEBUGMODEL = {
    "hidden_size": 256,
    "num_hidden_layers": 6,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "intermediate_size": 768,
    "vocab_size": 2048,
}
REQUIRED = os.environ.get("PIPEPLAN_REQUIRE_EXPORT") == "1"


def _engine(name: str) -> None:
    if not available()[name] and not REQUIRED:
        pytest.skip(f"{name} is not installed: pip install -e '.[export]' (make test does)")


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory):
    prof = analytic_profile("llama-tiny", dtypes=("bf16",), seq_len=128, overrides=DEBUGMODEL)
    return prof.save(tmp_path_factory.mktemp("export") / "debugmodel.json")


def _plans(profile_path, cluster: Cluster | None = None, top: int = 3, **job) -> list:
    prof = analytic_profile("llama-tiny", dtypes=("bf16",), seq_len=128, overrides=DEBUGMODEL)
    defaults = {"global_batch": 16, "recompute": ("none", "selective", "full"), "dtypes": ("bf16",), "tp": ()}
    plans = plan(
        prof,
        cluster or preset_cluster("h100"),
        Job(**{**defaults, **job}),
        top,
        profile_path=str(profile_path),
        time_limit=5,
    )
    return [p.with_profile(prof) for p in plans]


def _saved(plan_, tmp_path, name="plan.json"):
    path = tmp_path / name
    plan_.save(path)
    return path, load_plan(path)


def _expected_modules(plan_) -> list[tuple[list[str], list[int]]]:
    """Per stage: torchtitan's top modules and block indices the plan's units name."""
    units = plan_.profile.entries[0].units
    blocks = [i for i, u in enumerate(units) if u.kind == UnitKind.BLOCK]
    out = []
    for s in plan_.stages:
        mods = []
        if units[s.first].kind == UnitKind.EMBEDDING:
            mods.append("tok_embeddings")
        if units[s.end - 1].kind == UnitKind.HEAD:
            mods += ["norm", "lm_head"]
        out.append((mods, [blocks.index(u) for u in range(s.first, s.end) if u in blocks]))
    return out


# -- every plan the planner returns: exported, or refused in one line ----------------------------
@pytest.mark.parametrize("schedule", [*SCHEDULES, CUSTOM.name])
def test_every_plan_exports_or_refuses_in_one_line(profile_path, schedule):
    """For each schedule, every dp mode, tp 1 and 2, with per-stage recompute allowed: each target
    writes text or raises the user error with one line naming a plan field."""
    seen = set()
    for mode in DPMode:
        for tp in ((), (2,)):
            for p in _plans(profile_path, schedules=(schedule,), dp_modes=(mode.value,), tp=tp):
                seen.add((p.pp, p.virtual, p.tp, p.dp_mode))
                for target in TARGETS:
                    try:
                        text = export_text(p, target, "plan.json")
                    except UserError as e:
                        msg = str(e)
                        assert "\n" not in msg and "field " in msg, (target, msg)
                        continue
                    assert text.endswith("\n") and text.strip(), target
    assert {m for *_, m in seen} == set(DPMode) and any(tp > 1 for _, _, tp, _ in seen)


def test_what_an_engine_cannot_express_is_refused_naming_the_field(profile_path):
    zbv = _plans(profile_path, schedules=("ZBVZeroBubble",), dp_modes=("fsdp",))[0]
    with pytest.raises(
        UserError, match=r"field schedule\.name: ZBVZeroBubble: Megatron-LM runs stage k on rank k % pp"
    ):
        megatron_args(zbv)
    assert torchtitan_parallelism(zbv)["pipeline_parallel_schedule"] == "ZBVZeroBubble"  # torchtitan places a V
    zero1 = _plans(profile_path, schedules=("1F1B",), dp_modes=("zero1",), pp=(2,))[0]
    with pytest.raises(UserError, match=r"field dp_mode: zero1: torchtitan 0\.3\.0 .* --dp-mode ddp,fsdp"):
        torchtitan_config(zero1)
    assert "--use-distributed-optimizer" in megatron_args(zero1)  # Megatron's distributed optimizer is ZeRO-1
    one = _plans(profile_path, schedules=("1F1B",), dp_modes=("fsdp",), pp=(2,), recompute=("none",))[0]
    mixed = replace(one, stages=(one.stages[0], replace(one.stages[1], recompute=Recompute.FULL)))
    k = next(s.index for s in mixed.stages if s.recompute != mixed.stages[0].recompute)
    for export in (torchtitan_config, megatron_args):
        with pytest.raises(UserError, match=rf"field stages\[{k}\]\.recompute: .* sets one recompute for every stage"):
            export(mixed)
    serving = _plans(profile_path, schedules=("1F1B",), pp=(2,), forward_only=True, objective="latency")[0]
    for export in (torchtitan_config, megatron_args):
        with pytest.raises(UserError, match=r"field job\.forward_only"):
            export(serving)


def test_models_the_engines_do_not_know_are_refused(tmp_path):
    mlp = analytic_profile("mlp-tiny", dtypes=("fp32",), seq_len=8)
    path = mlp.save(tmp_path / "mlp.json")
    p = plan(
        mlp, Cluster(devices=2, device="cpu"), Job(global_batch=4, pp=(2,)), 1, profile_path=str(path), time_limit=5
    )[0]
    p = p.with_profile(mlp)
    with pytest.raises(UserError, match=r"field profile\.model: mlp-tiny is a mlp model: .*llama3 models only"):
        torchtitan_config(p)
    with pytest.raises(UserError, match=r"field profile\.model: mlp-tiny is a mlp model: Megatron-LM's GPT"):
        megatron_args(p)
    assert launch_lines(p, "plan.json")  # pipeplan's own executor runs any model


def test_a_llama_no_torchtitan_flavor_matches_is_refused(tmp_path):
    tiny = analytic_profile("llama-tiny", dtypes=("bf16",), seq_len=16)
    path = tiny.save(tmp_path / "tiny.json")
    p = plan(
        tiny,
        preset_cluster("h100"),
        Job(global_batch=8, pp=(2,), dtypes=("bf16",)),
        1,
        profile_path=str(path),
        time_limit=5,
    )[0]
    flavor = r"field profile\.model: no torchtitan 0\.3\.0 llama3 flavor has this model's sizes \(hidden 64, 2 layers"
    with pytest.raises(UserError, match=flavor):
        torchtitan_config(p.with_profile(tiny))
    assert "--pipeline-model-parallel-layout" in megatron_args(p.with_profile(tiny))


# -- torchtitan: its own config loader and pipeline split -----------------------------------------
def _engine_check(args: list[str], cwd) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "export_engines.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


#: (schedules, dp mode, job fields) of the plans torchtitan checks: every schedule, each placement
TORCHTITAN_CASES = [
    (("GPipe",), "ddp", {"pp": (2,)}),
    (("1F1B",), "fsdp", {"pp": (2,)}),
    (("LoopedBFS",), "fsdp", {"pp": (2,), "virtual": (2,)}),
    (("InterleavedZeroBubble",), "ddp", {"pp": (2,), "virtual": (2,), "tp": (2,)}),
    (("Interleaved1F1B",), "ddp", {"pp": (2,), "virtual": (2,)}),
    (("ZBVZeroBubble",), "fsdp", {"pp": (2,)}),
    (("DualPipeV",), "ddp", {"pp": (4,), "tp": (2,)}),
    (("Custom",), "ddp", {"pp": (2,), "placements": ((0, 1, 0, 1),)}),
]


@pytest.fixture(scope="module")
def torchtitan_checked(profile_path, tmp_path_factory):
    """The cases' plans and what torchtitan made of their configs (one process loads them all)."""
    _engine("torchtitan")
    folder = tmp_path_factory.mktemp("torchtitan")
    plans, files = [], []
    for i, (schedules, dp_mode, extra) in enumerate(TORCHTITAN_CASES):
        p = next(
            p
            for p in _plans(profile_path, top=10, schedules=schedules, dp_modes=(dp_mode,), **extra)
            if len({(s.recompute, s.dtype) for s in p.stages}) == 1
        )
        path = folder / f"pipeplan_tt_{i}.py"
        path.write_text(torchtitan_config(p, "plan.json", path.stem))
        plans.append(p)
        files.append(str(path))
    return plans, _engine_check(["torchtitan", *files], folder)


@pytest.mark.parametrize("case", range(len(TORCHTITAN_CASES)), ids=[c[0][0] for c in TORCHTITAN_CASES])
def test_torchtitan_loads_the_config_and_splits_its_llama_as_the_plan_does(torchtitan_checked, case):
    plans, checked = torchtitan_checked
    p, got = plans[case], checked["configs"][f"pipeplan_tt_{case}"]
    assert got["flavor"] == "debugmodel"
    # each stage is built on the plan's rank and keeps exactly the plan's units
    assert [s["rank"] for s in got["stages"]] == [s.rank for s in p.stages]
    assert [(s["modules"], s["layers"]) for s in got["stages"]] == [
        (sorted(m, key=["tok_embeddings", "norm", "lm_head"].index), b) for m, b in _expected_modules(p)
    ]
    assert got["torch_schedule_known"]
    # every rank builds the schedule with the plan's microbatches: torch's class, or for a Custom
    # table (torch's classes do not build it) torchtitan's runtime running the plan's own CSV
    spec = schedule_spec(p.schedule)
    assert {b["microbatches"] for b in got["built"]} == {p.microbatches}
    if p.custom_placement:
        assert got["csv_rows"] == [",".join(str(a) for a in p.table[r]) for r in range(p.pp)]
        assert {b["class"] for b in got["built"]} == {"_PipelineScheduleRuntime"}
        assert got["built"][0]["actions"] == {str(r): len(p.table[r]) for r in range(p.pp)}
    else:
        assert got["csv_rows"] is None and got["schedule"] == p.schedule
        assert {b["class"] for b in got["built"]} == {spec.torch_class}
    fsdp = p.dp_mode is DPMode.FSDP
    assert (got["dp_shard"], got["dp_replicate"]) == ((p.dp, 1) if fsdp else (1, p.dp))
    assert (got["tp"], got["sequence_parallel"], got["microbatch_size"]) == (
        p.tp,
        p.sequence_parallel,
        p.microbatch_size,
    )
    ac = {"none": None, "selective": "SelectiveAC.Config", "full": "FullAC.Config"}[p.stages[0].recompute.value]
    assert got["ac"] == ac and got["mixed_precision_param"] == "bfloat16" and got["seq_len"] == 128
    assert got["local_batch_size"] == p.microbatches * p.microbatch_size
    assert got["global_batch_size"] == got["local_batch_size"] * p.dp


def test_the_flavor_table_matches_torchtitans_own(torchtitan_checked):
    """The sizes export matches a llama against are those torchtitan 0.3.0 builds for each flavor."""
    from planner.export import _TT_FLAVORS

    assert {k: list(v[0]) for k, v in _TT_FLAVORS.items()} == torchtitan_checked[1]["flavors"]


# -- Megatron: its own layout parser ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("schedule", "pp", "virtual"), [("1F1B", 2, (1,)), ("1F1B", 4, (1,)), ("Interleaved1F1B", 2, (3,))]
)
def test_megatron_parses_the_layout_into_the_plans_stages(profile_path, schedule, pp, virtual):
    _engine("megatron")
    p = _plans(profile_path, schedules=(schedule,), pp=(pp,), virtual=virtual, dp_modes=("ddp",))[0]
    layout = megatron_layout(p)
    got = _engine_check(["megatron", layout, str(p.pp), str(DEBUGMODEL["num_hidden_layers"])], ROOT)
    assert got["virtual"] == p.virtual
    units = p.profile.entries[0].units
    names = {UnitKind.EMBEDDING: "embedding", UnitKind.HEAD: "loss", UnitKind.BLOCK: "decoder"}
    blocks_before = 0
    for s, theirs in zip(p.stages, got["stages"], strict=True):
        assert theirs["rank"] == s.rank
        assert theirs["layers"] == [names[UnitKind(units[u].kind)] for u in range(s.first, s.end)]
        assert theirs["first_decoder"] == blocks_before
        blocks_before += sum(units[u].kind == UnitKind.BLOCK for u in range(s.first, s.end))
    args = megatron_args(p)
    assert f"--pipeline-model-parallel-layout {shlex.quote(layout)}" in args


def test_megatron_args_are_a_bash_array_that_keeps_the_layout_whole(profile_path, tmp_path):
    job = {"pp": (2,), "virtual": (3,), "dp_modes": ("zero1",), "tp": (2,), "recompute": ("selective",)}
    p = _plans(profile_path, schedules=("Interleaved1F1B",), **job)[0]
    f = tmp_path / "args.sh"
    f.write_text(megatron_args(p))
    r = subprocess.run(
        ["bash", "-c", f'source {shlex.quote(str(f))} && printf "%s\\n" "${{MEGATRON_ARGS[@]}}"'],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    argv = r.stdout.splitlines()

    def value(flag):
        return argv[argv.index(flag) + 1]

    assert value("--pipeline-model-parallel-layout") == megatron_layout(p)  # no globbing, no splitting
    assert (value("--tensor-model-parallel-size"), value("--pipeline-model-parallel-size")) == ("2", "2")
    assert value("--micro-batch-size") == str(p.microbatch_size)
    assert value("--global-batch-size") == str(p.microbatches * p.microbatch_size * p.dp)
    assert ("--sequence-parallel" in argv) == p.sequence_parallel and "--use-distributed-optimizer" in argv
    assert value("--recompute-granularity") == "selective"
    assert "--overlap-grad-reduce" not in argv and "--overlap-grad-reduce: left out" in f.read_text()


# -- launch lines ----------------------------------------------------------------------------------
def test_launch_lines_follow_the_plans_cluster(profile_path):
    one = _plans(profile_path, schedules=("1F1B",), pp=(2,), dp_modes=("ddp",))[0]
    assert one.world_size == 8 and one.cluster.devices_per_node == 8
    assert launch_lines(one, "my plans/p.json") == [
        "torchrun --standalone --nproc_per_node 8 -m executor 'my plans/p.json'"
    ]
    two = _plans(profile_path, preset_cluster("h100:2"), schedules=("1F1B",), pp=(2,), dp_modes=("ddp",), tp=(1,))[0]
    assert two.world_size == 16
    lines = launch_lines(two, "p.json")
    assert len(lines) == 2
    for k, line in enumerate(lines):
        argv = shlex.split(line)
        assert argv[0] == "torchrun" and "OMP_NUM_THREADS=1" not in line and "--standalone" not in argv
        assert argv[argv.index("--nnodes") + 1] == "2" and argv[argv.index("--nproc_per_node") + 1] == "8"
        assert argv[argv.index("--node_rank") + 1] == str(k)
        assert argv[argv.index("--rdzv_backend") + 1] == "c10d" and argv[-3:] == ["-m", "executor", "p.json"]
    cpu = Cluster(devices=4, device="cpu", devices_per_node=2)
    cpu_plan = _plans(profile_path, cpu, schedules=("1F1B",), pp=(2,), dp_modes=("ddp",), tp=(1,))[0]
    lines = launch_lines(cpu_plan, "p.json")
    assert len(lines) == 2 and all(line.startswith("OMP_NUM_THREADS=1 torchrun --nnodes 2 ") for line in lines)


def test_plan_prints_one_run_line_per_node(profile_path, tmp_path, capsys):
    import pipeplan

    out = tmp_path / "p.json"
    argv = ["plan", str(profile_path), "--cluster", "h100:2", "--pp", "2", "--schedules", "1F1B", "--tp", "1"]
    assert pipeplan.main([*argv, "--dp-mode", "ddp", "--global-batch", "16", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    saved = load_plan(out)
    nodes = [x.split(": ", 1)[1] for x in text.splitlines() if x.startswith("  node ")]
    assert "run it on 2 nodes of 8 ranks" in text and nodes == launch_lines(saved, str(out))


# -- the command -----------------------------------------------------------------------------------
def test_export_command_writes_the_file_or_nothing(profile_path, tmp_path):
    p = _plans(profile_path, schedules=("1F1B",), pp=(2,), dp_modes=("fsdp",))[0]
    path, saved = _saved(p, tmp_path)
    r = run_cli("export", str(path), "--to", "megatron")
    assert r.returncode == 0 and r.stdout == megatron_args(saved, "plan.json"), r.stderr
    out = tmp_path / "pp_tt.py"
    r = run_cli("export", str(path), "--to", "torchtitan", "-o", str(out))
    assert r.returncode == 0 and out.read_text() == torchtitan_config(saved, "plan.json", "pp_tt"), r.stderr
    assert "--module pp_tt --config pipeplan_plan" in out.read_text()
    zero1 = _plans(profile_path, schedules=("1F1B",), pp=(2,), dp_modes=("zero1",))[0]
    path, _ = _saved(zero1, tmp_path, "zero1.json")
    target = tmp_path / "never.py"
    r = run_cli("export", str(path), "--to", "torchtitan", "-o", str(target))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "field dp_mode" in r.stderr, r.stderr
    assert not target.exists() and r.stdout == "" and not list(tmp_path.glob("*never*"))  # no temporary left


def test_the_gradients_dtype_is_exported_as_priced(profile_path):
    """A bf16 plan priced with fp32 gradients (the default) exports as torchtitan and Megatron-LM run
    bf16 by default; one priced with bf16 gradients asks Megatron-LM for them and is refused by
    torchtitan, which has no bf16 gradients."""
    fp32 = _plans(profile_path, schedules=("1F1B",), dp_modes=("fsdp",), pp=(2,))[0]
    assert fp32.grads_fp32
    assert 'mixed_precision_reduce = "float32"' in torchtitan_config(fp32)
    assert "--grad-reduce-in-bf16" not in megatron_args(fp32)
    bf16 = _plans(profile_path, schedules=("1F1B",), dp_modes=("fsdp",), pp=(2,), grad_dtype="stage")[0]
    assert not bf16.grads_fp32
    assert "--grad-reduce-in-bf16" in megatron_args(bf16)
    with pytest.raises(UserError, match=r"field grads_fp32: .*torchtitan keeps them in float32.*--grad-dtype fp32"):
        torchtitan_config(bf16)
