"""How a transformer unit's cost changes with the tensor-parallel degree ``t``, sequence
parallelism and the recompute mode (``none``, ``selective``, ``full``).

Megatron-style tensor parallelism (Shoeybi et al. 2019; Narayanan et al. 2021): each block's
QKV and MLP-up projections are split by columns and the attention output and MLP-down
projections by rows, so every rank holds ``1/t`` of the block's weights and does ``1/t`` of its
GEMM FLOPs; the embedding and the output head are split along the vocabulary.

Model and assumptions:

- **Compute.** A block's F, I and W at degree ``t`` are its times at ``t = 1`` multiplied by
  ``T(t)/T(1)``, where ``T`` sums each forward GEMM's FLOPs divided by its efficiency,
  :func:`profiles.gemm.matmul_efficiency` (the one formula the analytic profiler prices GEMMs
  with: NVIDIA's tile- and wave-quantisation model times the device's published achievable
  share of peak, see ``profiles/gemm.py``). As ``t`` grows the per-rank GEMMs shrink
  (``n = 3h/t``, ``ffn/t``; ``a/t`` heads), waves go partly empty and the efficiency falls.
  The backward GEMMs are taken to scale like the forward ones. Work outside
  GEMMs (elementwise, softmax) is taken to scale like the GEMMs, except the work on the residual
  stream that a profile records apart (``UnitCost.residual_forward_s``/``residual_backward_s``:
  layer norms, residual adds and hidden dropouts), which every rank runs whole without sequence
  parallelism and on its ``1/t`` of the sequence with it (Korthikanti et al., §4.2.2: these "non-tensor
  parallel" parts are replicated across the tensor-parallel group, which sequence parallelism splits).
- **Activation bytes** per block follow Korthikanti et al., "Reducing Activation Recomputation
  in Large Transformer Models" (MLSys 2023, arXiv:2205.05198), §4.1 and Table 2, which assume
  16-bit activations, 1-byte dropout masks, multi-head attention and a 4h MLP (generalised here
  to grouped-query attention, gated MLPs and no dropout, see :func:`block_activation_bytes`): no parallelism
  ``sbh(34 + 5as/h)``; TP ``sbh(10 + 24/t + 5as/(ht))``; TP + SP ``(sbh/t)(34 + 5as/h)``;
  TP + selective ``sbh(10 + 24/t)``; TP + SP + selective ``34·sbh/t``; full recompute ``2·sbh``
  (the block input only; with SP that input is split along the sequence, so ``2·sbh/t``). Other
  dtypes scale the whole by ``dtype_bytes/2``. With fused (flash) attention no ``s × s`` tensor is
  kept and the ``5as/h`` term is 0. A measured unit's saved bytes are scaled by the ratio
  ``formula(t, mode)/formula(1, none)``, so the formula's own constants cancel; an analytic
  profile's block keeps the formula's bytes themselves (the eager model counted on meta keeps
  tensors a fused-kernel run does not, such as the norms' fp32 copies).
- **Selective recompute** redoes the attention core in the backward: ``QKᵀ`` and attention over
  V, ``4·b·s²·h`` FLOPs per block forward (Korthikanti et al., Appendix A; softmax and dropout
  count no FLOPs). Its time is that share of the block's forward FLOPs times the forward time.
  For GPT-3 and MT-NLG the share is 2.7% and 1.6%, the overheads the paper quotes in §5.
  Full recompute redoes the whole forward, its TP collectives included.
- **Embedding and head** are vocabulary-parallel: parameters ``/t``. The head's logits GEMM
  (``n = V/t``) is scaled like a block's; the embedding is a row gather whose output is the whole
  ``s·b·h`` on every rank, so its time is unchanged. Recompute modes apply to blocks only (as
  Megatron's and torchtitan's checkpointing wrap transformer layers); the other units keep
  their activations.
- **Communication** (given a link): per block as :func:`simulator.collectives.tp_block_comm_s`;
  the embedding all-reduces its output in the forward (a reduce-scatter with SP, then an
  all-gather in the backward); the head all-gathers its input with SP and all-reduces (SP:
  reduce-scatters) its input gradient in the backward, and the vocabulary-parallel cross entropy
  all-reduces three fp32 values per token in the forward (the logit maximum, the target logit
  and the sum of exponentials, as Megatron's ``_VocabParallelCrossEntropy`` does).
- Layer norms' few parameters are counted as split too, and the vocabulary is not padded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from profiles.gemm import GEMM_DEVICES, GemmDevice, gemm_efficiency, matmul_efficiency
from profiles.types import UnitCost

from .collectives import Algorithm, Link, all_gather_s, all_reduce_s, reduce_scatter_s, tp_block_comm_s
from .modes import RECOMPUTE_MODES, Recompute

__all__ = [
    "recompute_modes",
    "TransformerShape",
    "model_tp_degrees",
    "SEQUENCE_PARALLEL_TYPES",
    "sequence_parallel_choices",
    "GemmDevice",
    "GEMM_DEVICES",
    "TPUnitCost",
    "gemm_efficiency",
    "block_activation_bytes",
    "block_forward_flops",
    "attention_core_flops",
    "selective_recompute_share",
    "block_compute_scale",
    "head_compute_scale",
    "tp_degrees",
    "scale_unit",
    "as_measured",
]


def recompute_modes(model_config: dict[str, Any]) -> tuple[str, ...]:
    """The recompute modes a model can be priced with, cheapest first: selective (Korthikanti et
    al.'s attention-core recompute) needs a transformer's shape, i.e. attention heads in its config."""
    shaped = bool(model_config.get("num_attention_heads", model_config.get("n_head")))
    return RECOMPUTE_MODES if shaped else ("none", "full")


_DROPOUT_KEYS = ("resid_pdrop", "attn_pdrop", "hidden_dropout_prob", "attention_dropout", "hidden_dropout")


@dataclass(frozen=True)
class TransformerShape:
    """The sizes a transformer block's costs depend on (one microbatch)."""

    seq_len: int  #: s, tokens per sequence
    microbatch: int  #: b, sequences per microbatch
    hidden: int  #: h, model width
    heads: int  #: a, query heads
    kv_heads: int  #: key/value heads (== heads without grouped-query attention)
    ffn: int  #: MLP inner width (4h in GPT; 14336 in llama3-8b)
    vocab: int  #: V, vocabulary size
    dtype_bytes: int = 2  #: bytes per activation element (Korthikanti's formulas are for 16-bit)
    gated_mlp: bool = False  #: SwiGLU MLP: three h×ffn projections (Llama) instead of two (GPT)
    attention_scores_stored: bool = True  #: False for fused (flash) attention: no s×s tensor kept
    dropout: bool = True  #: dropout after attention scores, attention and MLP (GPT; Llama has none)

    def __post_init__(self) -> None:
        for name in ("seq_len", "microbatch", "hidden", "heads", "kv_heads", "ffn", "vocab", "dtype_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"TransformerShape.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError(f"hidden {self.hidden}, heads {self.heads}, kv_heads {self.kv_heads} do not divide")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def tokens(self) -> int:
        return self.seq_len * self.microbatch

    @staticmethod
    def from_config(
        config: dict[str, Any], *, seq_len: int, microbatch: int, dtype_bytes: int = 2, flash: bool = False
    ) -> TransformerShape:
        """From a Hugging Face config dict (GPT-2 or Llama-style keys, as a Profile's ``model.config``).
        An MLP is gated when ``hidden_act`` is ``silu`` (Llama, Mistral, Qwen2)."""
        h = config.get("hidden_size", config.get("n_embd"))
        a = config.get("num_attention_heads", config.get("n_head"))
        if h is None or a is None or "vocab_size" not in config:
            raise ValueError("config lacks hidden_size/n_embd, num_attention_heads/n_head or vocab_size")
        ffn = config.get("intermediate_size") or config.get("n_inner") or 4 * h
        return TransformerShape(
            seq_len=seq_len,
            microbatch=microbatch,
            hidden=h,
            heads=a,
            kv_heads=config.get("num_key_value_heads") or a,
            ffn=ffn,
            vocab=config["vocab_size"],
            dtype_bytes=dtype_bytes,
            gated_mlp=config.get("hidden_act") == "silu",
            attention_scores_stored=not flash,
            dropout=any(config.get(k) for k in _DROPOUT_KEYS),
        )


@dataclass(frozen=True)
class TPUnitCost:
    """One unit's cost per rank at tensor-parallel degree ``t``, for one microbatch."""

    forward_s: float
    backward_input_s: float
    backward_weight_s: float
    recompute_s: float  #: forward work redone in the backward (add to B and to I)
    saved_bytes: int  #: activations kept from F to the backward under the recompute mode
    params: int  #: parameters held by each rank
    output_bytes: int  #: activation handed to the next unit, per rank
    comm_forward_s: float = 0.0  #: TP collectives inside F (0 without a link)
    comm_backward_s: float = 0.0  #: TP collectives inside the backward, recomputed forward's included


def _check_degree(shape: TransformerShape, t: int) -> None:
    if t < 1 or shape.heads % t or shape.kv_heads % t:
        raise ValueError(f"tensor-parallel degree {t} must divide heads {shape.heads} and kv heads {shape.kv_heads}")


def _block_gemms(shape: TransformerShape, t: int) -> list[tuple[int, int, int, int]]:
    """The forward GEMMs of one block on one rank: ``(batch, m, n, k)``."""
    s, b, h, hd, tok = shape.seq_len, shape.microbatch, shape.hidden, shape.head_dim, shape.tokens
    qkv = (shape.heads + 2 * shape.kv_heads) * hd // t
    heads = b * shape.heads // t
    ups = [(1, tok, shape.ffn // t, h)] * (2 if shape.gated_mlp else 1)  # MLP up (and gate), column-parallel
    return [
        (1, tok, qkv, h),  # QKV projection, column-parallel
        (heads, s, s, hd),  # attention scores QKᵀ, per head (a batched GEMM)
        (heads, s, hd, s),  # attention over V, per head
        (1, tok, h, h // t),  # output projection, row-parallel
        *ups,
        (1, tok, h, shape.ffn // t),  # MLP down, row-parallel
    ]


def _gemm_time(gemms: list[tuple[int, int, int, int]], device: GemmDevice | None) -> float:
    return sum(2 * bt * m * n * k / matmul_efficiency(m, n, device, bt) for bt, m, n, k in gemms)


def block_forward_flops(shape: TransformerShape) -> float:
    """A block's forward GEMM FLOPs at ``t = 1``: ``24bsh² + 4bs²h`` for GPT (Narayanan et al. 2021)."""
    return float(sum(2 * bt * m * n * k for bt, m, n, k in _block_gemms(shape, 1)))


def attention_core_flops(shape: TransformerShape) -> float:
    """``QKᵀ`` and attention over V in one block forward: ``4·b·s²·h`` (no causal saving)."""
    return 4.0 * shape.microbatch * shape.seq_len**2 * shape.hidden


def selective_recompute_share(shape: TransformerShape) -> float:
    """Selective recompute's extra work as a share of a block's forward FLOPs."""
    return attention_core_flops(shape) / block_forward_flops(shape)


def block_compute_scale(shape: TransformerShape, t: int, device: GemmDevice | None) -> float:
    """``T(t)/T(1)`` for a block: ``1/t`` without a device, more when the split GEMMs waste waves."""
    _check_degree(shape, t)
    return _gemm_time(_block_gemms(shape, t), device) / _gemm_time(_block_gemms(shape, 1), device)


def head_compute_scale(shape: TransformerShape, t: int, device: GemmDevice | None) -> float:
    """``T(t)/T(1)`` for the vocabulary-parallel logits GEMM (``tokens × V/t × h``)."""
    if t < 1:
        raise ValueError(f"tensor-parallel degree must be >= 1, got {t}")
    one = _gemm_time([(1, shape.tokens, shape.vocab, shape.hidden)], device)
    return _gemm_time([(1, shape.tokens, math.ceil(shape.vocab / t), shape.hidden)], device) / one


def block_activation_bytes(
    shape: TransformerShape, t: int = 1, *, sequence_parallel: bool = False, recompute: Recompute = "none"
) -> float:
    """Bytes one block keeps for its backward per rank.

    Korthikanti et al. 2022's accounting (§4.1, in units of ``sbh`` 16-bit bytes), generalised to
    grouped-query attention, a gated MLP of width ``ffn`` and models without dropout; for GPT's
    shape it is their Table 2 exactly:

    - kept whole on every tensor-parallel rank unless sequence parallel: the inputs of the QKV
      and MLP-up projections (2 + 2), the two layer norms' inputs (4), the two dropout masks (2);
    - split by ``t``: Q (2), K and V (2·kv/a each), the attention output (2), the MLP's
      ``(4 or 6)·ffn/h`` (activation input and down-projection input; a gated MLP also keeps the
      up projection's output);
    - the ``s × s`` attention tensors, split by ``t``: ``5as/h`` (softmax output 2, dropout mask 1,
      dropout output 2), ``2as/h`` without dropout, 0 with fused attention or selective recompute.
    """
    _check_degree(shape, t)
    if recompute not in RECOMPUTE_MODES:
        raise ValueError(f"recompute {recompute!r}: choose none, selective or full")
    sbh = shape.seq_len * shape.microbatch * shape.hidden * shape.dtype_bytes / 2
    if recompute == "full":
        return 2 * sbh / (t if sequence_parallel else 1)
    kv, h = shape.kv_heads / shape.heads, shape.hidden
    whole = 2 + 2 + 4 + (2 if shape.dropout else 0)
    split = 2 + 4 * kv + 2 + (6 if shape.gated_mlp else 4) * shape.ffn / h
    scores = (5 if shape.dropout else 2) * shape.heads * shape.seq_len / h
    if recompute == "selective" or not shape.attention_scores_stored:
        scores = 0.0
    if sequence_parallel:
        return sbh / t * (whole + split + scores)
    return sbh * (whole + (split + scores) / t)


def tp_degrees(devices_per_node: int, heads: int, kv_heads: int) -> list[int]:
    """Tensor-parallel degrees a plan may use: divisors of the node size that divide both head counts."""
    return [
        t for t in range(1, devices_per_node + 1) if devices_per_node % t == 0 and heads % t == 0 and kv_heads % t == 0
    ]


#: model types whose blocks are pre-norm with each norm feeding only column-parallel layers, the
#: blocks whose sequence-parallel form the executor runs (a norm's sequence-sharded output is
#: gathered once for all the layers it feeds); other blocks (post-norm bert) run tp without it
SEQUENCE_PARALLEL_TYPES = frozenset({"gpt2", "llama"})


def sequence_parallel_choices(setting: str, tp: int, model_config: dict) -> tuple[bool, ...]:
    """Sequence parallelism a plan at tensor-parallel degree ``tp`` may use under the job's
    ``setting`` (``on``, ``off`` or ``auto``: on wherever the model's blocks run it, as Megatron
    runs it beside tp). ``on`` for a model whose blocks do not run it is a ``ValueError``."""
    if tp == 1 or setting == "off":
        return (False,)
    runs = model_config.get("model_type") in SEQUENCE_PARALLEL_TYPES
    if setting == "on" and not runs:
        raise ValueError(
            f"{model_config.get('model_type') or 'this model'}'s blocks do not run sequence parallelism here "
            f"(it is run for {', '.join(sorted(SEQUENCE_PARALLEL_TYPES))} blocks: pre-norm, each norm feeding "
            f"only column-parallel layers)"
        )
    return (runs,)


def model_tp_degrees(model_config: dict, within: int) -> list[int]:
    """``tp_degrees`` for a model's config (Hugging Face names: ``num_attention_heads`` or
    ``n_head``, ``num_key_value_heads``); [1] for a model without attention heads."""
    heads = model_config.get("num_attention_heads", model_config.get("n_head"))
    if not heads:
        return [1]
    return tp_degrees(within, heads, model_config.get("num_key_value_heads") or heads)


def scale_unit(
    unit: UnitCost,
    shape: TransformerShape,
    t: int,
    *,
    sequence_parallel: bool = False,
    recompute: Recompute = "none",
    device: GemmDevice | None = None,
    link: Link | None = None,
    algorithm: Algorithm = "ring",
    activation_formula: bool = False,
) -> TPUnitCost:
    """A unit measured (or counted) at ``t = 1`` without recompute, priced at degree ``t``.

    ``activation_formula``: a block keeps the bytes of :func:`block_activation_bytes` itself (an
    analytic profile: Korthikanti et al.'s accounting of a run with fused kernels), not its
    profiled saved bytes scaled by the formula's ratio (a measured profile).

    The unit's role comes from its ``kind``: ``embedding``, ``block`` or ``head``; other kinds
    (a user model's ``layer``) have no tensor-parallel form and only ``t = 1`` is accepted."""
    if recompute not in RECOMPUTE_MODES:
        raise ValueError(f"recompute {recompute!r}: choose none, selective or full")
    if unit.kind not in ("embedding", "block", "head"):
        if t != 1:
            raise ValueError(f"unit {unit.name} of kind {unit.kind!r} has no tensor-parallel form: use tp 1")
        return _keep(unit, params=unit.params, output_bytes=unit.output_bytes)
    _check_degree(shape, t)
    sp = sequence_parallel and t > 1
    act = shape.tokens * shape.hidden * shape.dtype_bytes  # one s·b·h activation
    per_rank = {
        "params": math.ceil(unit.params / t),
        "output_bytes": unit.output_bytes // t if sp else unit.output_bytes,
    }
    comm = link is not None and t > 1
    if unit.kind == "embedding":
        if not comm:
            return _keep(unit, **per_rank)
        fwd_c = reduce_scatter_s(t, act, link) if sp else all_reduce_s(t, act, link, algorithm)
        bwd_c = all_gather_s(t, act, link) if sp else 0.0
        return _keep(unit, **per_rank, comm_forward_s=fwd_c, comm_backward_s=bwd_c)
    if unit.kind == "head":
        k = head_compute_scale(shape, t, device)
        fwd_c = bwd_c = 0.0
        if comm:
            fwd_c = 3 * all_reduce_s(t, shape.tokens * 4, link, algorithm) + (all_gather_s(t, act, link) if sp else 0)
            bwd_c = reduce_scatter_s(t, act, link) if sp else all_reduce_s(t, act, link, algorithm)
        return _scaled(unit, k, 0.0, math.ceil(unit.saved_bytes / t), **per_rank, comm=(fwd_c, bwd_c))
    k = block_compute_scale(shape, t, device)
    mode = block_activation_bytes(shape, t, sequence_parallel=sp, recompute=recompute)
    saved = math.ceil(mode if activation_formula else unit.saved_bytes * mode / block_activation_bytes(shape, 1))
    redo = {"none": 0.0, "selective": selective_recompute_share(shape), "full": 1.0}[recompute]
    fwd_c = bwd_c = 0.0
    if comm:
        fwd_c, bwd_c = tp_block_comm_s(t, act, link, sequence_parallel=sp, algorithm=algorithm)
        bwd_c += fwd_c if recompute == "full" else 0.0
    whole = 1.0 / t if sp else 1.0  # the residual stream's share of a rank
    fwd = (unit.forward_s - unit.residual_forward_s) * k + unit.residual_forward_s * whole
    i_t = (unit.backward_input_s - unit.residual_backward_s) * k + unit.residual_backward_s * whole
    return TPUnitCost(
        forward_s=fwd,
        backward_input_s=i_t,
        backward_weight_s=unit.backward_weight_s * k,
        recompute_s=fwd * redo,
        saved_bytes=saved,
        **per_rank,
        comm_forward_s=fwd_c,
        comm_backward_s=bwd_c,
    )


def as_measured(unit: UnitCost) -> TPUnitCost:
    """A unit at ``t = 1`` without recompute: its profile's own figures."""
    return _keep(unit, params=unit.params, output_bytes=unit.output_bytes)


def _keep(unit: UnitCost, *, params: int, output_bytes: int, **comm: float) -> TPUnitCost:
    """A unit whose times and activations do not change with ``t``."""
    return TPUnitCost(
        forward_s=unit.forward_s,
        backward_input_s=unit.backward_input_s,
        backward_weight_s=unit.backward_weight_s,
        recompute_s=0.0,
        saved_bytes=unit.saved_bytes,
        params=params,
        output_bytes=output_bytes,
        **comm,
    )


def _scaled(
    unit: UnitCost, k: float, recompute_s: float, saved: int, *, params: int, output_bytes: int, comm: tuple
) -> TPUnitCost:
    """A unit whose F, I and W scale by ``k``."""
    return TPUnitCost(
        forward_s=unit.forward_s * k,
        backward_input_s=unit.backward_input_s * k,
        backward_weight_s=unit.backward_weight_s * k,
        recompute_s=recompute_s,
        saved_bytes=saved,
        params=params,
        output_bytes=output_bytes,
        comm_forward_s=comm[0],
        comm_backward_s=comm[1],
    )
