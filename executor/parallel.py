"""Tensor parallelism and sharded data parallelism inside pipeline stages (a prototype: ``tp`` and
``dp_mode`` are given explicitly, by the hidden worker flags ``--tp N`` and ``--dp-mode
zero2|fsdp``, until Plan schema 2 carries them; not both at once yet, and ``zero1`` is not built).

One DeviceMesh names every dimension, pp outermost and tp innermost, as torchtitan and Megatron
order them: ``rank = (pp_index * dp + dp_index) * tp + tp_index``. The tensor-parallel plan is the
model's own: Hugging Face configs declare one (``base_model_tp_plan``, e.g. Llama's q/k/v and
gate/up projections ``colwise``, o and down ``rowwise``), applied to each block unit with torch's
``parallelize_module`` (``ColwiseParallel``/``RowwiseParallel``: Megatron's f and g operators, an
all-reduce after each row-wise layer forward and before each column-wise layer in backward).
Embedding, head and norms stay replicated on the tp ranks. Sharded data parallelism is FSDP2's
``fully_shard`` per unit and per stage over the mesh's dp dimension (``apply_fsdp``).

Order: unlike torchtitan (meta model -> TP -> materialise), a unit is materialised whole and then
sharded, so its shards are slices of exactly the weights the one-process ``--check`` reference
builds (DTensor's own random initialisation of sharded parameters would draw other numbers).
Host memory then holds one whole unit at a time, not the stage.
"""

from __future__ import annotations

from datetime import timedelta

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from profiles.contract import UserError

__all__ = ["build_mesh", "tp_plan", "apply_tp", "apply_fsdp", "full_tensor", "local_tensor"]

_STYLES = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}


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


def tp_plan(model_config: dict) -> dict[str, str]:
    """The model's own tensor-parallel plan for one block, ``{"self_attn.q_proj": "colwise", ...}``
    (from the Hugging Face config's ``base_model_tp_plan``, ``layers.*.`` taken off)."""
    model_type = model_config.get("model_type")
    if not model_type:
        raise UserError("--tp: only Hugging Face models declare a tensor-parallel plan (base_model_tp_plan)")
    import transformers

    plan = getattr(transformers.AutoConfig.for_model(model_type), "base_model_tp_plan", None) or {}
    out = {}
    for key, style in plan.items():
        head, sep, rest = key.partition(".*.")
        if not sep or "." in head:
            continue  # not a per-layer entry
        if style not in _STYLES:
            raise UserError(f"--tp: {model_type}'s tensor-parallel plan uses {style!r} for {key}; not supported yet")
        out[rest] = style
    if not out:
        raise UserError(f"--tp: {model_type} declares no per-layer tensor-parallel plan (base_model_tp_plan)")
    return out


def apply_tp(unit: nn.Module, plan: dict[str, str], tp_mesh: DeviceMesh) -> int:
    """Shard the linear layers of ``unit`` that ``plan`` names (matched by the end of their
    module path); returns how many were sharded (0 for an embedding or a head)."""
    styles = {}
    for name, _ in unit.named_modules():
        for suffix, style in plan.items():
            if name == suffix or name.endswith("." + suffix):
                styles[name] = _STYLES[style]()
    if styles:
        parallelize_module(unit, tp_mesh, styles)
    return len(styles)


def apply_fsdp(stage: nn.Module, dp_mesh: DeviceMesh, dp_mode: str) -> None:
    """Shard a stage's parameters, gradients and optimizer state over ``dp_mesh`` with FSDP2's
    ``fully_shard``, in torchtitan's order: each unit, then the stage. ``fsdp`` frees the gathered
    parameters after each forward (gathers them again for backward); ``zero2`` keeps them until
    the backward. ``PipelineStage`` runs the microbatches' backwards without gradient sync and
    reduce-scatters once, after the last."""
    from torch.distributed.fsdp import fully_shard

    reshard = dp_mode == "fsdp"
    for unit in stage.units:
        if any(True for _ in unit.parameters()):
            fully_shard(unit, mesh=dp_mesh, reshard_after_forward=reshard)
    fully_shard(stage, mesh=dp_mesh, reshard_after_forward=reshard)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor gathered whole (a collective on its mesh), or ``t`` itself."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor, or ``t`` itself."""
    return t.to_local() if isinstance(t, DTensor) else t
