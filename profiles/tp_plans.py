"""Which layers of a model's blocks tensor parallelism splits, and how: the Hugging Face config's
``base_model_tp_plan`` (per-layer entries ``layers.*.self_attn.q_proj: colwise``), else
pipeplan's own plan for the model type (GPT-2 declares none). Recorded in a profile so the
planner offers tp > 1 only for models the executor can split, and read by the executor to
split them. Imports no torch; transformers only to read a model type's declared plan."""

from __future__ import annotations

from .contract import UserError

__all__ = ["STYLE_NAMES", "OWN_PLANS", "block_tp_plan", "recorded_tp_plan"]

#: the per-layer styles the executor runs (torch's ``ColwiseParallel``/``RowwiseParallel``, and a
#: fused q/k/v column split for GPT-2's ``c_attn``)
STYLE_NAMES = ("colwise", "rowwise", "colwise_fused_qkv")

#: plans pipeplan gives models whose config declares none: {model_type: {module suffix: style}}
OWN_PLANS = {
    "gpt2": {
        "attn.c_attn": "colwise_fused_qkv",
        "attn.c_proj": "rowwise",
        "mlp.c_fc": "colwise",
        "mlp.c_proj": "rowwise",
    },
}


def block_tp_plan(model_type: str | None) -> dict[str, str]:
    """The block's layers and their styles (``layers.*.`` taken off): pipeplan's own plan for the
    type, else its config's ``base_model_tp_plan``. A model without one, or with a style the
    executor does not run, is the user's error: the one line says to plan with ``--tp 1``."""
    if not model_type:
        raise UserError("tp > 1: only Hugging Face models have a tensor-parallel plan; re-plan with --tp 1")
    if model_type in OWN_PLANS:
        return dict(OWN_PLANS[model_type])
    import transformers

    declared = getattr(transformers.AutoConfig.for_model(model_type), "base_model_tp_plan", None) or {}
    out = {}
    for key, style in declared.items():
        head, sep, rest = key.partition(".*.")
        if not sep or "." in head:
            continue  # not a per-layer entry
        if style not in STYLE_NAMES:
            raise UserError(
                f"tp > 1: {model_type}'s tensor-parallel plan uses {style!r} for {key}, which this executor "
                "does not run yet: re-plan with --tp 1"
            )
        out[rest] = style
    if not out:
        raise UserError(
            f"tp > 1: {model_type} declares no per-layer tensor-parallel plan (base_model_tp_plan): re-plan with --tp 1"
        )
    return out


def recorded_tp_plan(model_type: str | None) -> dict[str, str]:
    """What a profile records: the block's plan, or ``{}`` where the executor cannot split the
    model (the planner then keeps it at tp 1)."""
    try:
        return block_tp_plan(model_type)
    except UserError:
        return {}
