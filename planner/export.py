"""A Plan as the engines people train with take it: a torchtitan 0.3.0 config, Megatron-LM's
arguments, and the per-node torchrun lines that run it with pipeplan's own executor.

Each public function takes a loaded :class:`~planner.plan.Plan` (with its profile: the units'
kinds name the modules) and returns text; nothing here imports torch or the engines. A plan
choice an engine has no setting for, or a model family it does not know, raises
:class:`~profiles.contract.UserError` with one line naming the plan field; nothing is dropped
silently. The engines' own parsers check these texts in ``tests/test_export.py``.

Assumed from the engines' sources (the releases named):

- torchtitan 0.3.0 loads a job as a Python function returning ``Trainer.Config``
  (``torchtitan/config/manager.py``: ``--module M --config F``); its Llama 3 modules are
  ``tok_embeddings``, ``layers.<i>``, ``norm`` and ``lm_head`` (``models/common/decoder.py``);
  its pipeline split places stage ``s`` on pp rank ``s % pp``, or in a V for ZBVZeroBubble and
  DualPipeV (``distributed/pipeline_parallel.py``), and its data parallelism is replication
  (``data_parallel_replicate_degree``) or FSDP2 (``data_parallel_shard_degree``).
- Megatron-LM places virtual stage ``k`` of ``--pipeline-model-parallel-layout`` on rank
  ``k % pp`` (megatron-core ``PipelineParallelLayerLayout``) and runs 1F1B, or interleaved 1F1B
  with virtual stages; it recomputes one way in every stage.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Sequence
from pathlib import Path

from profiles.contract import UserError
from profiles.presets import family_of
from profiles.types import UnitKind
from simulator.actions import csv_text
from simulator.costs import DPMode, Recompute
from simulator.schedules import Placement, schedule_spec

from .plan import Plan

__all__ = [
    "TARGETS",
    "TORCHTITAN_VERSION",
    "export_text",
    "torchtitan_parallelism",
    "torchtitan_config",
    "megatron_args",
    "megatron_layout",
    "launch_lines",
    "launch_text",
    "run_it_lines",
    "plan_nodes",
    "slurm_script",
]

TORCHTITAN_VERSION = "0.3.0"
#: the rendezvous address the launch lines name: the first node's address and a free port
RDZV_ENDPOINT = "HOST0:29500"

#: torchtitan 0.3.0's Llama 3 flavors (``torchtitan/models/llama3/__init__.py``): hidden size,
#: layers, heads, kv heads, FFN width (``compute_ffn_hidden_dim``), vocabulary, tied embeddings;
#: and the ``config_registry`` recipe a config starts from (None: 8B's, with the flavor's model)
_TT_FLAVORS = {
    "debugmodel": ((256, 6, 16, 16, 768, 2048, False), "llama3_debugmodel"),
    "1B": ((2048, 16, 32, 8, 8192, 128256, True), None),
    "3B": ((3072, 28, 24, 8, 8192, 128256, True), None),
    "8B": ((4096, 32, 32, 8, 14336, 128256, False), "llama3_8b"),
    "70B": ((8192, 80, 64, 8, 28672, 128256, False), "llama3_70b"),
    "405B": ((16384, 126, 128, 8, 53248, 128256, False), "llama3_405b"),
}
#: torchtitan's ``TrainingConfig.mixed_precision_param`` per plan dtype (it has no fp16)
_TT_DTYPES = {"bf16": "bfloat16", "fp32": "float32"}
_TT_AC = {Recompute.NONE: "None", Recompute.SELECTIVE: "SelectiveAC.Config()", Recompute.FULL: "FullAC.Config()"}

#: the model types Megatron-LM's GPT model trains (its Llama, Mistral, Mixtral, Qwen and
#: DeepSeek-V3 recipes, and GPT-2 itself): a decoder of an embedding, blocks and a head
_MEGATRON_FAMILIES = ("gpt2", "llama", "mistral", "mixtral", "qwen2", "qwen3", "deepseek_v3")
_MEGATRON_DTYPES = {"bf16": ["--bf16"], "fp16": ["--fp16"], "fp32": []}


# -- what the plan holds, asked once ---------------------------------------------------------
def _refuse(name: str, field: str, why: str) -> UserError:
    return UserError(f"{name}: field {field}: {why}")


def _family(plan: Plan, name: str) -> str | None:
    """The model type (``llama``, ``gpt2``, ...; ``user`` for a user's model)."""
    profile = _profile(plan, name)
    return profile.model_config.get("model_type") or family_of(profile.model_name)


def _profile(plan: Plan, name: str):
    if plan.profile is None:
        raise _refuse(name, "profile.path", "the plan's profile is needed to name its units: keep it beside the plan")
    return plan.profile


def _one(plan: Plan, name: str, attr: str, engine: str) -> object:
    """The stages' common ``dtype`` or ``recompute``; refuses a per-stage choice."""
    first = getattr(plan.stages[0], attr)
    for s in plan.stages[1:]:
        if getattr(s, attr) != first:
            shown = getattr(first, "value", first), getattr(getattr(s, attr), "value", getattr(s, attr))
            raise _refuse(
                name,
                f"stages[{s.index}].{attr}",
                f"{engine} sets one {attr} for every stage, and this plan has {shown[0]!r} on stage 0 "
                f"but {shown[1]!r} on stage {s.index}: re-plan with one --{attr} choice",
            )
    return first


def _training_only(plan: Plan, name: str, engine: str) -> None:
    if plan.job.forward_only:
        raise _refuse(name, "job.forward_only", f"{engine} trains, and this plan is forward-only (serving)")


def _global_batch(plan: Plan) -> int:
    """Samples per step as the plan runs it: microbatches x size x replicas."""
    return plan.microbatches * plan.microbatch_size * plan.dp


# -- torchtitan ------------------------------------------------------------------------------
def _tt_fqns(plan: Plan, name: str) -> list[list[str]]:
    """torchtitan's module names per stage, from the units' kinds (Llama 3 family)."""
    units = _profile(plan, name).entries[0].units
    names, block = [], 0
    for u in units:
        if u.kind == UnitKind.EMBEDDING:
            names.append(["tok_embeddings"])
        elif u.kind == UnitKind.HEAD:
            names.append(["norm", "lm_head"])
        elif u.kind == UnitKind.BLOCK:
            names.append([f"layers.{block}"])
            block += 1
        else:
            raise _refuse(
                name, "profile.model", f"unit {u.name} is of kind {u.kind!r}, which torchtitan has no module for"
            )
    return [[fqn for u in range(s.first, s.end) for fqn in names[u]] for s in plan.stages]


def _tt_family(plan: Plan, name: str) -> None:
    family = _family(plan, name)
    if family != "llama":
        raise _refuse(
            name,
            "profile.model",
            f"{plan.model_name} is a {family or 'user'} model: this export knows torchtitan {TORCHTITAN_VERSION}'s "
            "llama3 models only",
        )


def _tt_flavor(plan: Plan, name: str) -> str:
    c = _profile(plan, name).model_config
    sizes = (
        c.get("hidden_size"),
        c.get("num_hidden_layers"),
        c.get("num_attention_heads"),
        c.get("num_key_value_heads") or c.get("num_attention_heads"),
        c.get("intermediate_size"),
        c.get("vocab_size"),
        bool(c.get("tie_word_embeddings")),
    )
    for flavor, (dims, _) in _TT_FLAVORS.items():
        if dims == sizes:
            return flavor
    raise _refuse(
        name,
        "profile.model",
        f"no torchtitan {TORCHTITAN_VERSION} llama3 flavor has this model's sizes (hidden {sizes[0]}, "
        f"{sizes[1]} layers, {sizes[2]} heads, {sizes[3]} kv heads, FFN {sizes[4]}, vocabulary {sizes[5]}"
        f"{', tied' if sizes[6] else ''}); its flavors: {', '.join(_TT_FLAVORS)}",
    )


def _tt_schedule(plan: Plan, name: str) -> tuple[str, bool]:
    """torchtitan's ``pipeline_parallel_schedule`` and whether the plan's table goes as a CSV
    (a Custom placement: torch's classes do not build its table, torchtitan's runtime runs it)."""
    spec = schedule_spec(plan.schedule)
    if not spec.custom:
        return spec.name, False
    ranks = [s.rank for s in plan.stages]
    n = len(ranks)
    if n % plan.pp == 0 and ranks == [s % plan.pp for s in range(n)]:
        return ("1F1B" if n == plan.pp else "Interleaved1F1B"), True  # torchtitan's loop placement
    v_shape = schedule_spec("ZBVZeroBubble").stage_to_rank(plan.pp, 2)
    if n == 2 * plan.pp and ranks == [v_shape[s] for s in range(n)]:
        return "ZBVZeroBubble", True  # torchtitan's V placement
    bad = next((s for s in plan.stages if s.rank != s.index % plan.pp), None)
    if bad is None:  # the loop, but some ranks hold one stage more than others
        raise _refuse(
            name,
            "stages",
            f"torchtitan {TORCHTITAN_VERSION} runs as many stages on every pp rank, and this Custom plan has "
            f"{n} stages on {plan.pp} ranks: re-plan without Custom in --schedules",
        )
    raise _refuse(
        name,
        f"stages[{bad.index}].rank",
        f"torchtitan {TORCHTITAN_VERSION} places stage k on pp rank k % pp (or in a V), and this Custom plan "
        f"runs stage {bad.index} on rank {bad.rank}: re-plan without Custom in --schedules",
    )


def torchtitan_parallelism(plan: Plan, name: str = "plan") -> dict[str, object]:
    """The ``ParallelismConfig`` fields of torchtitan 0.3.0 for ``plan`` (a CSV schedule is
    named ``pipeline_parallel_schedule_csv: True`` here; :func:`torchtitan_config` writes it)."""
    _training_only(plan, name, "torchtitan")
    _tt_family(plan, name)
    if not plan.dp_mode.spec.torchtitan:
        runs = [m.value for m in DPMode if m.spec.torchtitan]
        raise _refuse(
            name,
            "dp_mode",
            f"{plan.dp_mode.value}: torchtitan {TORCHTITAN_VERSION} replicates (ddp) or shards everything (fsdp), "
            f"with no ZeRO-1/2 setting: re-plan with --dp-mode {','.join(runs)}",
        )
    schedule, csv = _tt_schedule(plan, name)
    fsdp = plan.dp_mode.spec.torchtitan == "shard"
    return {
        "pipeline_parallel_degree": plan.pp,
        "module_fqns_per_model_part": _tt_fqns(plan, name),
        "pipeline_parallel_schedule": schedule,
        "pipeline_parallel_schedule_csv": csv,
        "pipeline_parallel_microbatch_size": plan.microbatch_size,
        "tensor_parallel_degree": plan.tp,
        "enable_sequence_parallel": plan.sequence_parallel,
        # fsdp as pipeplan prices it: resharded after forward without pipelining only, which is
        # torchtitan's "default" policy for fsdp_reshard_after_forward
        "data_parallel_shard_degree": plan.dp if fsdp else 1,
        "data_parallel_replicate_degree": 1 if fsdp else plan.dp,
    }


def torchtitan_config(plan: Plan, name: str = "plan", module: str = "MODULE") -> str:
    """A torchtitan 0.3.0 config module for ``plan``: a function ``pipeplan_plan()`` returning its
    ``Trainer.Config`` (torchtitan's own recipe for the model, with the plan's parallelism, batch,
    precision and activation checkpointing), run with ``--module MODULE --config pipeplan_plan``
    (``module``: the name the file is imported by, shown in its docstring)."""
    par = torchtitan_parallelism(plan, name)
    flavor = _tt_flavor(plan, name)
    dtype = _one(plan, name, "dtype", "torchtitan")
    if dtype not in _TT_DTYPES:
        raise _refuse(name, "stages[0].dtype", f"{dtype}: torchtitan trains in bf16 or fp32 (it has no fp16)")
    if dtype != "fp32" and not plan.grads_fp32:
        raise _refuse(
            name,
            "grads_fp32",
            "the plan prices bf16 gradients, and torchtitan keeps them in float32 (fp32 weights under autocast, "
            'FSDP2 mixed_precision_reduce "float32" only): re-plan with --grad-dtype fp32',
        )
    recompute = _one(plan, name, "recompute", "torchtitan")
    recipe = _TT_FLAVORS[flavor][1]
    lines = [
        f'"""torchtitan {TORCHTITAN_VERSION} config for pipeplan plan {name} ({plan.model_name}): '
        f"{plan.schedule}, pp {plan.pp} x dp {plan.dp} ({plan.dp_mode.value}) x tp {plan.tp}.",
        "",
        "Run it on every node (this file on the Python path, torchtitan's assets where its recipe says):",
        f"    torchrun --nnodes N --nproc_per_node G ... -m torchtitan.train --module {module} --config pipeplan_plan",
        '"""',
        "",
    ]
    imports = ["from torchtitan.config import ParallelismConfig"]
    if recompute is not Recompute.NONE:
        imports.append(f"from torchtitan.distributed.activation_checkpoint import {_TT_AC[recompute].split('.')[0]}")
    if recipe is None:
        imports.append("from torchtitan.models.llama3 import model_registry")
    imports.append(f"from torchtitan.models.llama3.config_registry import {recipe or 'llama3_8b'}")
    csv = par.pop("pipeline_parallel_schedule_csv")
    if csv:
        imports = ["import os", "import tempfile", "", *imports]
    lines += imports + ["", ""]
    if csv:
        lines += _tt_csv_block(plan)
    lines += ["def pipeplan_plan():"]
    lines.append(f"    config = {recipe or 'llama3_8b'}()  # torchtitan's own recipe: data, optimizer, checkpoints")
    if recipe is None:
        lines.append(f'    config.model_spec = model_registry("{flavor}")  # the same tokenizer and vocabulary')
    lines.append("    config.parallelism = ParallelismConfig(")
    for key, value in par.items():
        if key == "module_fqns_per_model_part":  # one stage a line
            lines += [f"        {key}=[", *(f"            {stage!r}," for stage in value), "        ],"]
        else:
            lines.append(f"        {key}={value!r},")
    if csv:
        lines.append("        pipeline_parallel_schedule_csv=_schedule_csv(),  # the plan's own table")
    lines.append("    )")
    if recompute is Recompute.SELECTIVE:
        lines.append(
            "    # torchtitan's selective AC saves the outputs of chosen ops (matmuls, every other one recomputed);"
        )
        lines.append("    # pipeplan priced Korthikanti et al.'s selective recompute (the attention core): they differ")
    lines += [
        f"    config.activation_checkpoint = {_TT_AC[recompute]}",
        f"    config.training.local_batch_size = {plan.microbatches * plan.microbatch_size}  # per replica",
        f"    config.training.global_batch_size = {_global_batch(plan)}",
        f"    config.training.seq_len = {plan.profile.seq_len}",
        f'    config.training.mixed_precision_param = "{_TT_DTYPES[dtype]}"',
        '    config.training.mixed_precision_reduce = "float32"  # the gradients as the plan prices them',
        *(
            ["    config.training.disable_cuda_graphs = True  # torchtitan runs no CUDA graphs under pipelining"]
            if plan.pp > 1
            else []
        ),
        "    return config",
        "",
    ]
    return "\n".join(lines)


def _tt_csv_block(plan: Plan) -> list[str]:
    """The plan's table as torch's CSV, written once to a file named by its hash (every rank
    writes the same bytes; a rename makes the write atomic)."""
    text = csv_text(plan.table)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return [
        f"_SCHEDULE_CSV = {text!r}",
        "",
        "",
        "def _schedule_csv() -> str:",
        f'    path = os.path.join(tempfile.gettempdir(), "pipeplan-schedule-{digest}.csv")',
        "    if not os.path.exists(path):",
        '        tmp = f"{path}.{os.getpid()}"',
        '        with open(tmp, "w") as f:',
        "            f.write(_SCHEDULE_CSV)",
        "        os.replace(tmp, path)",
        "    return path",
        "",
        "",
    ]


# -- Megatron-LM ------------------------------------------------------------------------------
def megatron_layout(plan: Plan, name: str = "plan") -> str:
    """``--pipeline-model-parallel-layout``: stages in order, ``|`` between them, ``E`` the
    embedding, ``t`` a block, ``L`` the head and loss, ``*n`` a run (stage k runs on rank k % pp)."""
    family = _family(plan, name)
    if family not in _MEGATRON_FAMILIES:
        raise _refuse(
            name,
            "profile.model",
            f"{plan.model_name} is a {family or 'user'} model: Megatron-LM's GPT model trains "
            f"{', '.join(_MEGATRON_FAMILIES)}",
        )
    units = _profile(plan, name).entries[0].units
    if not (units[0].kind == UnitKind.EMBEDDING and units[-1].kind == UnitKind.HEAD):
        raise _refuse(name, "profile.model", "Megatron's layout needs an embedding first and a head last")
    spec = schedule_spec(plan.schedule)
    if spec.custom or spec.placement is not Placement.LOOP:
        bad = next((s for s in plan.stages if s.rank != s.index % plan.pp), plan.stages[0])
        raise _refuse(
            name,
            f"stages[{bad.index}].rank" if spec.custom else "schedule.name",
            f"{plan.schedule}: Megatron-LM runs stage k on rank k % pp, and this plan places its stages "
            f"{'in a V' if spec.placement is Placement.V else 'its own way'}: "
            "re-plan with --schedules 1F1B,Interleaved1F1B",
        )
    return plan.pipeline_layout()


def _megatron_schedule(plan: Plan, name: str) -> None:
    spec = schedule_spec(plan.schedule)
    interleaved = spec.name == "Interleaved1F1B"
    if plan.pp > 1 and not (spec.name == "1F1B" or interleaved):
        raise _refuse(
            name,
            "schedule.name",
            f"{plan.schedule}: Megatron-LM runs 1F1B (interleaved with virtual stages) and has no setting for "
            f"{plan.schedule}: re-plan with --schedules 1F1B,Interleaved1F1B",
        )


def _megatron_recompute(plan: Plan, name: str) -> list[str]:
    recompute = _one(plan, name, "recompute", "Megatron-LM")
    if recompute is Recompute.SELECTIVE:  # the attention core (Korthikanti et al. 2022), as priced
        return ["--recompute-granularity", "selective"]
    if recompute is Recompute.FULL:  # every block keeps its input only and reruns its forward
        return ["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1"]
    return []


def _megatron_dp(plan: Plan) -> list[str]:
    """ddp: Megatron's default; zero1: its distributed optimizer (optimizer state and master
    weights sharded); zero2/fsdp: Megatron-FSDP with gradients (and parameters) sharded too."""
    return list(plan.dp_mode.spec.megatron_args)


def megatron_args(plan: Plan, name: str = "plan") -> str:
    """Megatron-LM's parallelism arguments for ``plan``, as a bash array ``MEGATRON_ARGS`` (source
    it, then ``torchrun ... pretrain_gpt.py "${MEGATRON_ARGS[@]}" MODEL-AND-DATA-ARGS``)."""
    _training_only(plan, name, "Megatron-LM")
    layout = megatron_layout(plan, name)
    _megatron_schedule(plan, name)
    dtype = _one(plan, name, "dtype", "Megatron-LM")
    blocks = sum(1 for u in plan.profile.entries[0].units if u.kind not in (UnitKind.EMBEDDING, UnitKind.HEAD))
    args: list[list[str]] = [
        ["--tensor-model-parallel-size", str(plan.tp)],
        ["--pipeline-model-parallel-size", str(plan.pp)],
    ]
    if plan.pp > 1:
        args.append(["--pipeline-model-parallel-layout", layout])
    if plan.sequence_parallel:
        args.append(["--sequence-parallel"])
    dp = _megatron_dp(plan)
    if dp:
        args.append(dp)
    rc = _megatron_recompute(plan, name)
    if rc:
        args.append(rc)
    args += [
        ["--micro-batch-size", str(plan.microbatch_size)],
        ["--global-batch-size", str(_global_batch(plan))],
        ["--num-layers", str(blocks)],
        ["--seq-length", str(plan.profile.seq_len)],
    ]
    if _MEGATRON_DTYPES[dtype]:
        args.append(_MEGATRON_DTYPES[dtype])
    grads = _megatron_grads(dtype, plan.grads_fp32)
    if grads:
        args.append(grads)
    if not plan.profile.model_config.get("tie_word_embeddings", False):
        args.append(["--untie-embeddings-and-output-weights"])
    head = [
        f"# Megatron-LM arguments for pipeplan plan {name} ({plan.model_name}): {plan.schedule}, "
        f"pp {plan.pp} x dp {plan.dp} ({plan.dp_mode.value}) x tp {plan.tp}, {plan.microbatches} microbatches "
        f"of {plan.microbatch_size} per replica",
        "# --overlap-grad-reduce: left out: the plan prices no overlap of the gradient reduction with compute",
        "# add the model's own arguments (hidden size, heads, ...) and the data's",
        "MEGATRON_ARGS=(",
    ]
    return "\n".join([*head, *(f"    {' '.join(shlex.quote(a) for a in row)}" for row in args), ")", ""])


def _megatron_grads(dtype: str, fp32: bool) -> list[str]:
    """The argument that makes Megatron-LM accumulate and reduce gradients as the plan prices
    them: it does so in fp32 for bf16 unless ``--grad-reduce-in-bf16``, in fp16 for fp16 unless
    ``--accumulate-allreduce-grads-in-fp32``; fp32 stages need nothing."""
    if dtype == "bf16" and not fp32:
        return ["--grad-reduce-in-bf16"]
    if dtype == "fp16" and fp32:
        return ["--accumulate-allreduce-grads-in-fp32"]
    return []


# -- launch lines for pipeplan's executor ------------------------------------------------------
def plan_nodes(plan: Plan) -> tuple[int, int]:
    """(nodes, processes per node) for the plan's world on its cluster's nodes: the most devices
    of a node that divide the world evenly."""
    world = plan.world_size
    per_node = max(d for d in range(1, min(world, plan.cluster.devices_per_node) + 1) if world % d == 0)
    return world // per_node, per_node


def _torchrun(plan: Plan, node_rank: str | None, endpoint: str, run_id: str, args: Sequence[str]) -> str:
    nodes, per_node = plan_nodes(plan)
    env = "OMP_NUM_THREADS=1 " if plan.cluster.device == "cpu" else ""  # one thread per CPU rank
    if nodes == 1:
        where = f"--standalone --nproc_per_node {per_node}"
    else:
        where = (
            f"--nnodes {nodes} --nproc_per_node {per_node} --node_rank {node_rank} --rdzv_backend c10d "
            f"--rdzv_endpoint {endpoint} --rdzv_id {run_id}"
        )
    return f"{env}torchrun {where} -m executor {' '.join(shlex.quote(str(a)) for a in args)}"


def _run_id(plan_path: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(str(plan_path)).stem)
    return stem or "pipeplan"


def launch_lines(
    plan: Plan, plan_path: str | Path, *, worker_args: Sequence[str] = (), endpoint: str = RDZV_ENDPOINT
) -> list[str]:
    """One ``torchrun ... -m executor PLAN`` line per node of the plan's cluster (``--standalone``
    on one node); ``worker_args``: the executor's flags after the plan path."""
    nodes, _ = plan_nodes(plan)
    args = [str(plan_path), *worker_args]
    return [_torchrun(plan, str(k), endpoint, _run_id(str(plan_path)), args) for k in range(nodes)]


def run_it_lines(plan: Plan, plan_path: str | Path, worker_args: Sequence[str] = ()) -> list[str]:
    """What ``pipeplan plan`` (and ``pipeplan run`` of a plan too big for its host) prints: the
    launch line, or one line per node with what every node needs."""
    lines = launch_lines(plan, plan_path, worker_args=worker_args)
    if len(lines) == 1:
        return [f"run it: {lines[0]}"]
    _, per_node = plan_nodes(plan)
    return [
        f"run it on {len(lines)} nodes of {per_node} ranks ({RDZV_ENDPOINT}: the first node's address and a free "
        "port; the plan, its profile and this repository at the same path on every node):",
        *(f"  node {k}: {line}" for k, line in enumerate(lines)),
    ]


def _where_line(plan: Plan) -> str:
    nodes, per_node = plan_nodes(plan)
    c = plan.cluster
    return (
        f"pp {plan.pp} x dp {plan.dp} x tp {plan.tp} = {plan.world_size} processes: {nodes} "
        f"node{'s' if nodes > 1 else ''} of {per_node} {c.device} (cluster {c.name}, {c.devices_per_node} a node)"
    )


def launch_text(plan: Plan, plan_path: str | Path, name: str = "plan") -> str:
    """The launch lines with a comment each: which node, and what every node needs."""
    lines = launch_lines(plan, plan_path)
    out = [f"# pipeplan plan {name}: {_where_line(plan)}"]
    if len(lines) > 1:
        out.append(
            f"# {RDZV_ENDPOINT}: the first node's address and a free port; the plan, its profile and this "
            "repository at the same path on every node"
        )
    for k, line in enumerate(lines):
        if len(lines) > 1:
            out.append(f"# node {k}")
        out.append(line)
    return "\n".join(out) + "\n"


def slurm_script(plan: Plan, plan_path: str | Path, name: str = "plan") -> str:
    """A SLURM batch script: one task per node, each running that node's torchrun line."""
    nodes, per_node = plan_nodes(plan)
    gpu = plan.cluster.device != "cpu"
    head = [
        "#!/bin/bash",
        f"# pipeplan plan {name}: {_where_line(plan)}",
        f"#SBATCH --job-name=pipeplan-{_run_id(str(plan_path))}",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        *([f"#SBATCH --gpus-per-node={per_node}"] if gpu else [f"#SBATCH --cpus-per-task={per_node}"]),
        "set -euo pipefail",
        'export HOST0=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
    ]
    line = _torchrun(plan, "$SLURM_NODEID", "$HOST0:29500", "$SLURM_JOB_ID", [str(plan_path)])
    if nodes == 1:
        return "\n".join([*head, f"srun {line}", ""])
    # the node's own rank is read on the node: the line runs in a shell there
    return "\n".join([*head, f"srun --kill-on-bad-exit=1 bash -c {shlex.quote(line)}", ""])


#: ``pipeplan export --to``: target -> (what it writes, its text)
TARGETS = {
    "torchtitan": "a torchtitan 0.3.0 config module (Python)",
    "megatron": "Megatron-LM arguments (a bash array)",
    "launch": "torchrun lines for pipeplan's executor, one per node",
    "slurm": "a SLURM batch script running the launch lines",
}


def export_text(
    plan: Plan, target: str, plan_path: str | Path = "plan.json", name: str | None = None, module: str = "MODULE"
) -> str:
    """The text of ``target`` (a key of :data:`TARGETS`) for ``plan`` saved at ``plan_path``
    (``module``: the torchtitan config's import name, when known)."""
    name = name or str(plan_path)
    if target == "torchtitan":
        return torchtitan_config(plan, name, module)
    if target == "megatron":
        return megatron_args(plan, name)
    if target == "launch":
        return launch_text(plan, plan_path, name)
    if target == "slurm":
        return slurm_script(plan, plan_path, name)
    raise UserError(f"--to {target}: choose one of {', '.join(TARGETS)}")
