"""Tensor parallelism and sharded data parallelism inside pipeline stages, as the plan says
(``plan.tp``, ``plan.dp_mode``; torch's own parallelisms composed as torchtitan composes them).

One DeviceMesh names every dimension, pp outermost and tp innermost, as torchtitan and Megatron
order them and the planner prices them: ``rank = (pp_index * dp + dp_index) * tp + tp_index``.

**Tensor parallel** (``apply_tp``), through torch's ``parallelize_module``: Megatron's column- and
row-parallel pairs (``ColwiseParallel``/``RowwiseParallel``: the f and g operators, an all-reduce
after each row-wise layer's forward and before each column-wise layer's input gradient). The plan
for a block is the model's own where its Hugging Face config declares one
(``base_model_tp_plan``: Llama's q/k/v and gate/up projections ``colwise``, o and down
``rowwise``); GPT-2 declares none, so pipeplan gives it one (``profiles.tp_plans.OWN_PLANS``): its ``Conv1D``
layers hold their weight as ``[in, out]`` (the transpose of ``nn.Linear``'s), so they get
ParallelStyles of their own built on ``distribute_module`` (``Conv1DColwise``: weight
``Shard(1)``, bias ``Shard(0)``; ``Conv1DRowwise``: weight ``Shard(0)``, bias replicated), and
the fused ``c_attn`` (output columns ``[q | k | v]``, each by heads) is first permuted so that tp
rank ``r``'s contiguous shard is ``[q_r | k_r | v_r]``, the q, k and v of its own heads
(``FusedQKVColwise``); the attention module's ``split_size`` and ``num_heads`` become the local
ones. The permutation is kept on the layer (``TP_COLUMN_ORDER``), and ``reference_layout`` undoes
it: the one place a sharded parameter's gradient is mapped back to the one-process layout.

The embedding and the head are vocabulary-parallel (``TPPlan.vocab``): ``RowwiseParallel`` on
the ``nn.Embedding`` of ``vocab_size`` rows (each rank looks up its rows, the output is
all-reduced) and ``ColwiseParallel`` on the vocabulary-sized ``nn.Linear``. A training run of a
language model keeps the head's logits split by vocabulary columns and computes Megatron's
vocabulary-parallel cross entropy on them (``vocab_parallel_lm_loss``: three all-reduces of a
value per token, no rank holding ``b·s·V`` logits); a forward-only run, or a model with a loss of
its own, gathers the logits (Hugging Face's own head plan, ``colwise_gather_output``) and runs its
loss unchanged. Norms stay replicated.

**Sequence parallel** (``TPPlan.sequence_parallel``, GPT-2 and Llama blocks): each rank holds
``1/t`` of the sequence outside the tensor-parallel regions: torch's ``SequenceParallel`` on the
norms, their output gathered once for the column-parallel layers after them
(``GatheredSequenceParallel``), row-parallel layers reduce-scattering along the sequence, the
residual stream a sequence-sharded DTensor inside a unit, and a unit's input and output (what a
stage sends) the rank's ``[b, s/t, h]`` share (``apply_tp``).

Execution against the cost model (``simulator/tensor_parallel.py``): per block the same
collectives (2 all-reduces each way; with sequence parallelism 2 all-gathers and 2
reduce-scatters each way), the same vocabulary-parallel loss, and the same bytes between stages.
Where they differ: with sequence parallelism the embedding all-reduces its
output and keeps its share (priced: a reduce-scatter), and the norms' weight gradients are
partial sums, all-reduced when the optimizer reads them (not priced); GPT-2's position
embedding (``wpe``) stays whole, where the cost model counts every embedding parameter ``/t``.

**Sharded data parallel** (``apply_fsdp``): FSDP2's ``fully_shard`` per unit and then per stage
over the mesh's dp dimension; with tp > 1 FSDP2 shards the tensor-parallel DTensors again over
dp (2-D, torchtitan's FSDP + TP). On gloo, FSDP2's reduce-scatter is told to use sum reductions
(``set_force_sum_reduction_for_comms``; gloo has no average reduction) and divides after.
``ddp`` all-reduces each rank's local gradient shards over the dp group (the executor);
``zero1`` steps with ZeRO stage 1 (``build_optimizer``, ``executor.zero``): a reduce-scatter of
the gradients, each replica's AdamW step on its share of the parameters (it alone holds that
share's state), an all-gather of the updated weights (tp 1 only).

Order: unlike torchtitan (meta model -> TP -> materialise), a unit is materialised whole and then
sharded, so its shards are slices of exactly the weights the one-process ``--check`` reference
builds (DTensor's random initialisation of sharded parameters is not coordinated across ranks
on CPU, and would draw other numbers). Host memory then holds one whole unit at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from profiles.contract import UserError
from profiles.tp_plans import block_tp_plan
from simulator.tensor_parallel import SEQUENCE_PARALLEL_TYPES

__all__ = [
    "TP_COLUMN_ORDER",
    "Conv1DColwise",
    "Conv1DRowwise",
    "FusedQKVColwise",
    "GatheredSequenceParallel",
    "build_mesh",
    "TPPlan",
    "tp_plan",
    "fused_qkv_order",
    "check_supported",
    "apply_tp",
    "apply_fsdp",
    "build_optimizer",
    "optimizer_state",
    "like_param",
    "full_tensor",
    "local_tensor",
    "plain_tensor",
    "reference_layout",
    "vocab_start",
    "vocab_parallel_lm_loss",
]

#: attribute of a layer whose output features were permuted before sharding (``FusedQKVColwise``):
#: the permutation, ``stored[..., j] = original[..., order[j]]``
TP_COLUMN_ORDER = "pipeplan_tp_column_order"

#: model types whose blocks are pre-norm, each norm feeding only column-parallel layers: their
#: norms' outputs are handed on as one (replicated or gathered) DTensor for all those layers, and
#: sequence parallelism is run for them (``GatheredSequenceParallel``'s assumption)
_PRE_NORM_TYPES = SEQUENCE_PARALLEL_TYPES


def build_mesh(pp: int, dp: int, tp: int, device_type: str, timeout: timedelta) -> DeviceMesh:
    """The (pp, dp, tp) mesh over every rank, tp innermost; every group it makes has ``timeout``
    (a new group's default is torch's, 30 min on gloo)."""
    import torch.distributed as dist

    backend = dist.get_backend()
    opts = dist.ProcessGroupGloo._Options() if backend == "gloo" else dist.ProcessGroupNCCL.Options()
    opts._timeout = timeout
    return init_device_mesh(
        device_type,
        (pp, dp, tp),
        mesh_dim_names=("pp", "dp", "tp"),
        backend_override={name: (backend, opts) for name in ("pp", "dp", "tp")},
    )


# -- ParallelStyles for Hugging Face's Conv1D (weight [in, out]) ---------------------------------


def _is_conv1d(module: nn.Module) -> bool:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(module, Conv1D)


def _shard_params(module: nn.Module, mesh: DeviceMesh, placements: dict[str, object], src_data_rank) -> None:
    for name, param in list(module.named_parameters(recurse=False)):
        placement = placements[name]
        dist_param = distribute_tensor(param, mesh, [placement], src_data_rank=src_data_rank)
        module.register_parameter(name, nn.Parameter(dist_param, requires_grad=param.requires_grad))


def _distribute_conv1d(style, module: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """``style`` (a Conv1D column- or row-wise style) applied as torch's own styles apply theirs:
    ``distribute_module`` with the style's partition and its input/output layout hooks."""
    if not _is_conv1d(module):
        raise NotImplementedError(f"{type(style).__name__} shards a transformers Conv1D, not {type(module).__name__}")
    return distribute_module(
        module,
        mesh,
        style._partition_conv1d_fn,
        partial(style._prepare_input_fn, style.input_layouts, style.desired_input_layouts),
        partial(style._prepare_output_fn, style.output_layouts, style.use_local_output),
    )


class Conv1DColwise(ColwiseParallel):
    """``ColwiseParallel`` for a ``Conv1D`` (``y = x @ W + b``, ``W`` of shape ``[in, out]``): the
    output features are split, so ``W`` is sharded on dim 1 and ``b`` on dim 0. Inputs and outputs
    are laid out as ``ColwiseParallel``'s (replicated in, sharded on the last dim out)."""

    def _partition_conv1d_fn(self, name, module, mesh):
        _shard_params(module, mesh, {"weight": Shard(1), "bias": Shard(0)}, self.src_data_rank)

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        return _distribute_conv1d(self, module, device_mesh)


class Conv1DRowwise(RowwiseParallel):
    """``RowwiseParallel`` for a ``Conv1D``: the input features are split, so ``W`` is sharded on
    dim 0 and ``b`` replicated (added once, after the partial sums are reduced)."""

    def _partition_conv1d_fn(self, name, module, mesh):
        _shard_params(module, mesh, {"weight": Shard(0), "bias": Replicate()}, self.src_data_rank)

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        self.desired_input_layouts = (Shard(-1),)  # as RowwiseParallel's for nn.Linear
        return _distribute_conv1d(self, module, device_mesh)


def fused_qkv_order(hidden: int, heads: int, tp: int) -> torch.Tensor:
    """The output-feature order of a fused ``[q | k | v]`` projection (each ``hidden`` wide, by
    heads) that puts tp rank ``r``'s heads' q, k and v side by side in its contiguous shard."""
    if heads % tp or hidden % heads:
        raise ValueError(f"{heads} heads of width {hidden} cannot be split over tp {tp}")
    width = hidden // tp  # each rank's share of one of q, k, v
    return torch.cat(
        [
            torch.arange(part * hidden + r * width, part * hidden + (r + 1) * width)
            for r in range(tp)
            for part in range(3)
        ]
    )


class FusedQKVColwise(Conv1DColwise):
    """Column-parallel fused q/k/v ``Conv1D`` split by heads: the output features are permuted
    (``fused_qkv_order``, kept on the layer as ``TP_COLUMN_ORDER``) and then sharded as
    ``Conv1DColwise``, so each rank computes the q, k and v of ``heads / tp`` whole heads."""

    def __init__(self, heads: int, **kwargs):
        super().__init__(**kwargs)
        self.heads = heads

    def _partition_conv1d_fn(self, name, module, mesh):
        order = fused_qkv_order(module.weight.shape[1] // 3, self.heads, mesh.size())
        with torch.no_grad():
            module.weight = nn.Parameter(module.weight[:, order].contiguous(), module.weight.requires_grad)
            module.bias = nn.Parameter(module.bias[order].contiguous(), module.bias.requires_grad)
        setattr(module, TP_COLUMN_ORDER, order)
        super()._partition_conv1d_fn(name, module, mesh)


# -- the plan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TPPlan:
    """How a model's units are split over the tp ranks."""

    #: per block unit: module-path suffix -> style (``colwise``, ``rowwise``, ``colwise_fused_qkv``)
    block: dict[str, str]
    #: vocabulary size: an ``nn.Embedding`` with this many rows is split by vocabulary rows
    #: (``RowwiseParallel``, its output all-reduced), an ``nn.Linear`` with this many outputs
    #: (the head) by vocabulary columns; 0: neither is split
    vocab: int = 0
    #: Megatron's sequence parallelism: between the tensor-parallel regions (norms, residuals, the
    #: activations sent between stages) each rank holds ``1/t`` of the sequence
    sequence_parallel: bool = False
    #: the head's logits stay split by vocabulary columns (each rank its ``V/t``), for
    #: :func:`vocab_parallel_lm_loss`; False: gathered whole on every rank (forward-only runs, and
    #: losses other than the language-model cross entropy)
    sharded_logits: bool = False
    #: the blocks are pre-norm (``_PRE_NORM_TYPES``): each norm's output feeds only column-parallel
    #: layers, so it is handed to them as one DTensor and their input gradients are reduced once
    pre_norm: bool = False


def tp_plan(model_config: dict, sequence_parallel: bool = False, *, sharded_logits: bool = False) -> TPPlan:
    """The tensor-parallel plan: for the blocks the Hugging Face config's ``base_model_tp_plan``
    (``layers.*.`` taken off, e.g. ``{"self_attn.q_proj": "colwise", ...}``), else pipeplan's own
    for the model type (``profiles.tp_plans.OWN_PLANS``: GPT-2); the embedding and head vocabulary-parallel."""
    model_type = model_config.get("model_type")
    block = block_tp_plan(model_type)
    from profiles.zoo_hf import full_config

    vocab = int(full_config(model_type, model_config).get("vocab_size") or 0)
    return TPPlan(block, vocab, sequence_parallel, sharded_logits, model_type in _PRE_NORM_TYPES)


def check_supported(model_config: dict, tp: int, sequence_parallel: bool, where: str) -> None:
    """Refuse, before any compute, a tensor-parallel layout this executor does not run."""
    if tp <= 1:
        return
    if sequence_parallel and model_config.get("model_type") not in _PRE_NORM_TYPES:
        raise UserError(
            f"{where}: sequence parallelism is run for {', '.join(sorted(_PRE_NORM_TYPES))} blocks only "
            f"(pre-norm, each norm feeding only column-parallel layers): re-plan with --sequence-parallel off"
        )
    tp_plan(model_config)
    from profiles.zoo_hf import full_config

    config = full_config(model_config["model_type"], model_config)  # the stored one is a diff
    heads = config.get("num_attention_heads", config.get("n_head"))
    kv = config.get("num_key_value_heads") or heads
    if heads and (heads % tp or kv % tp):
        raise UserError(f"{where}: tp {tp} does not divide the model's {heads} heads ({kv} key/value heads): re-plan")


def _style(name: str, module: nn.Module, attention: nn.Module, sequence_parallel: bool):
    conv = _is_conv1d(module)
    if name == "colwise_fused_qkv":
        if not conv or not isinstance(getattr(attention, "num_heads", None), int):
            raise UserError(f"tp > 1: {name} expects a fused Conv1D inside an attention module with num_heads")
        return FusedQKVColwise(attention.num_heads)
    if name == "colwise":
        return Conv1DColwise() if conv else ColwiseParallel()
    # sequence parallel: the partial sums are reduce-scattered along the sequence, and the result
    # stays a DTensor for the residual add (the residual stream is one, sharded by sequence)
    kw = {"output_layouts": Shard(1), "use_local_output": False} if sequence_parallel else {}
    return Conv1DRowwise(**kw) if conv else RowwiseParallel(**kw)


class GatheredSequenceParallel(SequenceParallel):
    """torch's ``SequenceParallel`` for a norm (computed on this rank's share of the sequence, its
    weights replicated), its output then gathered along the sequence once and kept a DTensor:
    Megatron's all-gather before the column-parallel layers, shared by every one of them (q, k
    and v; gate and up), whose input gradients are summed and reduce-scattered once in the
    backward. Assumes a pre-norm block: the norm's output feeds only column-parallel layers."""

    @staticmethod
    def _prepare_output_fn(use_local_output, mod, outputs, device_mesh):
        return outputs.redistribute(placements=(Replicate(),))


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")


def _localize_heads(attention: nn.Module, tp: int) -> None:
    """An attention module whose fused q/k/v was split by heads now sees ``1/tp`` of them: the
    sizes it splits and reshapes by become the local ones (GPT-2: ``split_size``, ``num_heads``)."""
    for attr in ("split_size", "num_heads", "embed_dim"):
        value = getattr(attention, attr, None)
        if isinstance(value, int):
            setattr(attention, attr, value // tp)


def apply_tp(unit: nn.Module, plan: TPPlan, tp_mesh: DeviceMesh) -> int:
    """Shard the layers of ``unit`` that ``plan`` names (a block's, matched by the end of their
    module path; the vocabulary-sized embedding and head); returns how many were sharded.

    With sequence parallelism the unit's own input and output are this rank's share of the
    sequence (dim 1, ``[b, s/t, h]``): the embedding unit cuts its (all-reduced) output to its
    share; other units take their input as a sequence-sharded DTensor, so code that reads its
    shape (the position embeddings a decoder layer derives) sees the whole sequence; the norms
    run on the share (``GatheredSequenceParallel``) and the row-parallel layers reduce-scatter."""
    sp = plan.sequence_parallel
    styles, fused = {}, []
    role = "block"
    for name, module in unit.named_modules():
        for suffix, style in plan.block.items():
            if name == suffix or name.endswith("." + suffix):
                parent = name.rpartition(".")[0]
                styles[name] = _style(style, module, unit.get_submodule(parent), sp)
                if style == "colwise_fused_qkv":
                    fused.append(parent)
        if name in styles:
            continue
        if plan.vocab and isinstance(module, nn.Embedding) and module.num_embeddings == plan.vocab:
            styles[name], role = RowwiseParallel(input_layouts=Replicate()), "embedding"  # token ids: whole
        elif plan.vocab and isinstance(module, nn.Linear) and module.out_features == plan.vocab:
            head = ColwiseParallel() if plan.sharded_logits else ColwiseParallel(output_layouts=Replicate())
            styles[name], role = head, "head"
        elif sp and _is_norm(module):
            styles[name] = GatheredSequenceParallel()
        elif plan.pre_norm and _is_norm(module):
            # one replicated DTensor for every column-parallel layer after the norm: their input
            # gradients are summed as partial sums and all-reduced once (Megatron's f), not per layer
            styles[name] = PrepareModuleOutput(
                output_layouts=Replicate(), desired_output_layouts=Replicate(), use_local_output=False
            )
    if styles:
        parallelize_module(unit, tp_mesh, styles)
    for parent in fused:
        _localize_heads(unit.get_submodule(parent), tp_mesh.size())
    if sp and role == "embedding":
        parallelize_module(unit, tp_mesh, _share_of_sequence(Replicate()))
    elif sp:
        parallelize_module(unit, tp_mesh, PrepareModuleInput(input_layouts=Shard(1), desired_input_layouts=Shard(1)))
        if role == "block":
            parallelize_module(unit, tp_mesh, _share_of_sequence(Shard(1)))
    return len(styles)


def vocab_start(vocab: int, tp_mesh: DeviceMesh) -> int:
    """The first vocabulary entry of this tp rank's logits columns: DTensor's ``Shard`` splits a
    dimension as ``torch.chunk`` does, ``ceil(V/t)`` entries per rank, the last ones fewer."""
    return tp_mesh.get_local_rank() * -(-vocab // tp_mesh.size())


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Cross entropy over logits split by vocabulary columns, with no rank holding them whole:
    Megatron-LM's vocabulary-parallel loss (Shoeybi et al. 2019, §3: the parallel GEMM's output
    fused with the cross entropy, which "reduces the dimension to b x s"). Per token, the forward
    all-reduces three values over the tp group (the max logit, the sum of exponentials, the
    target's logit from the rank that holds it); the backward, softmax minus the one-hot target on
    each rank's own columns, needs none."""

    @staticmethod
    def forward(ctx, logits, labels, group, start):
        mine = logits.shape[-1]
        top = logits.max(dim=-1).values
        torch.distributed.all_reduce(top, torch.distributed.ReduceOp.MAX, group=group)
        shifted = logits - top.unsqueeze(-1)
        exp = shifted.exp()
        total = exp.sum(dim=-1)
        torch.distributed.all_reduce(total, group=group)
        local = labels - start
        here = (local >= 0) & (local < mine)
        index = local.clamp(0, mine - 1).unsqueeze(-1)
        target = torch.where(here, shifted.gather(-1, index).squeeze(-1), torch.zeros_like(total))
        torch.distributed.all_reduce(target, group=group)
        counted = labels != _IGNORE_INDEX
        count = counted.sum().clamp(min=1)
        ctx.save_for_backward(exp / total.unsqueeze(-1), index, here & counted, counted, count)
        return ((total.log() - target) * counted).sum() / count

    @staticmethod
    def backward(ctx, grad):
        softmax, index, hit, counted, count = ctx.saved_tensors
        g = softmax.clone()
        g.scatter_add_(-1, index, -hit.to(g.dtype).unsqueeze(-1))
        return g * (counted.unsqueeze(-1) * grad / count), None, None, None


#: the label cross entropy skips (``torch.nn.functional.cross_entropy``'s default)
_IGNORE_INDEX = -100


def vocab_parallel_lm_loss(logits: torch.Tensor, labels: torch.Tensor, *, group, start: int) -> torch.Tensor:
    """``profiles.zoo_hf.lm_loss`` on this rank's vocabulary columns of the logits ``[b, s, V/t]``
    (from ``start``), equal to it on the whole logits: the mean cross entropy over the tokens."""
    return _VocabParallelCrossEntropy.apply(logits.flatten(0, 1).float(), labels.flatten(), group, start)


def _share_of_sequence(have) -> PrepareModuleOutput:
    """A unit's output (laid out as ``have``) handed on as this rank's share of the sequence."""
    return PrepareModuleOutput(output_layouts=have, desired_output_layouts=Shard(1), use_local_output=True)


def apply_fsdp(stage: nn.Module, dp_mesh: DeviceMesh, reshard_after_forward: bool, *, sync_each: bool = False) -> None:
    """Shard a stage's parameters, gradients and optimizer state over ``dp_mesh`` with FSDP2's
    ``fully_shard``, in torchtitan's order: each unit, then the stage. ``reshard_after_forward``
    (the plan's layout says: fsdp without pipelining) frees the gathered parameters after each
    forward and gathers them again for backward; otherwise (zero2, and fsdp under pipelining, as
    torchtitan runs it) they stay gathered through the step. ``PipelineStage`` runs the
    microbatches' backwards without gradient sync and reduce-scatters once, after the last;
    ``sync_each`` (zero2: ``DPModeSpec.reduces_each_microbatch``) keeps the sync on, so each
    unit's gradient is reduce-scattered at every microbatch's backward and accumulated sharded.
    Parameters already sharded by tp (DTensors on the tp mesh) are sharded again over dp (FSDP2's
    2-D layout)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    reshard = reshard_after_forward
    gloo = dist.get_backend(dp_mesh.get_group()) == "gloo"
    for group in _fsdp_groups(stage.units):
        fully_shard(group if len(group) > 1 else group[0], mesh=dp_mesh, reshard_after_forward=reshard)
        if gloo:
            for unit in group:
                unit.set_force_sum_reduction_for_comms(True)
    fully_shard(stage, mesh=dp_mesh, reshard_after_forward=reshard)
    if gloo:  # gloo reduces by sum: FSDP2 then divides by the dp size itself
        stage.set_force_sum_reduction_for_comms(True)
    if sync_each:
        _keep_gradient_sync(stage)


def _keep_gradient_sync(stage: nn.Module) -> None:
    """Gradient sync stays on whatever ``PipelineStage`` asks: it turns it off before every
    microbatch's backward but the last (to reduce once a step), which would accumulate whole
    gradients; kept on, FSDP2's post-backward reduce-scatters each microbatch's into the sharded
    gradient, as ZeRO-2 does."""
    keep = stage.set_requires_gradient_sync

    def set_requires_gradient_sync(requires_gradient_sync: bool, *, recurse: bool = True) -> None:
        keep(True, recurse=recurse)

    stage.set_requires_gradient_sync = set_requires_gradient_sync


def _fsdp_groups(units: Sequence[nn.Module]) -> list[list[nn.Module]]:
    """The units that hold parameters, in order, one FSDP group each, except units sharing a
    parameter (tied embeddings with both copies on one stage): FSDP2 manages a parameter in one
    group only, so those are sharded together (``fully_shard([a, b])``)."""
    groups: list[list[nn.Module]] = []
    owner: dict[int, int] = {}  # parameter id -> its group
    for unit in units:
        ids = [id(p) for p in unit.parameters()]
        if not ids:
            continue
        g = next((owner[i] for i in ids if i in owner), None)
        if g is None:
            g = len(groups)
            groups.append([])
        groups[g].append(unit)
        owner.update(dict.fromkeys(ids, g))
    return groups


def build_optimizer(params: list[torch.Tensor], zero_redundancy: bool, dp_group, lr: float):
    """AdamW over this rank's parameters; ``zero_redundancy`` (zero1's
    ``DPModeSpec.zero_redundancy_optimizer``): ZeRO stage 1 over the data-parallel group
    (``executor.zero.ZeroOneAdamW``: each replica keeps the AdamW state of its share of the
    parameters; the step reduce-scatters the gradients and all-gathers the updated weights). fsdp
    and zero2 shard the state with the parameters."""
    if zero_redundancy:
        from .zero import ZeroOneAdamW

        return ZeroOneAdamW(params, dp_group, lr)
    return torch.optim.AdamW(params, lr=lr)


def optimizer_state(opt) -> dict:
    """The optimizer state this rank holds (ZeRO-1's: its shards' only)."""
    return getattr(opt, "optim", opt).state


def like_param(grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``grad`` laid out as its parameter (a DTensor gradient can come in another placement:
    a vocabulary-parallel embedding's is replicated), so that the same rank of every holder
    of a tied parameter holds the same slice of it."""
    if isinstance(grad, DTensor) and isinstance(param, DTensor) and grad.placements != param.placements:
        return grad.redistribute(placements=param.placements)
    return grad


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor gathered whole (a collective on its mesh), or ``t`` itself."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor, or ``t`` itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def plain_tensor(t: torch.Tensor) -> torch.Tensor:
    """The plain tensor holding this rank's data of ``t``: a DTensor's local shard; a pending
    functional collective's result (``AsyncCollectiveTensor``, what a tp layer's asynchronous
    output redistribution returns), waited for."""
    from torch.distributed._functional_collectives import AsyncCollectiveTensor

    t = local_tensor(t)
    return t.wait() if isinstance(t, AsyncCollectiveTensor) else t


def reference_layout(unit: nn.Module, name: str, t: torch.Tensor | None) -> torch.Tensor | None:
    """Parameter ``name`` of ``unit`` (its value or gradient ``t``) gathered whole and in the
    layout of the unsharded model: a layer whose output features were permuted before sharding
    (``TP_COLUMN_ORDER``, the fused q/k/v) has them put back in their original order."""
    if t is None:
        return None
    whole = full_tensor(t)
    owner = unit.get_submodule(name.rpartition(".")[0])
    order = getattr(owner, TP_COLUMN_ORDER, None)
    if order is None:
        return whole
    return whole.index_select(-1, torch.argsort(order.to(whole.device)))
