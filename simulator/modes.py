"""The modes a plan's layout chooses between: activation recomputation, and data-parallel modes
as one table (:data:`DP_MODES`) that the cost layer, the search, the baselines, the exports and
the executor read. Outside this module no code compares a mode by name: it asks the mode's
:class:`DPModeSpec`. A new data-parallel mode is a row here (and its test).

Static state per parameter: weights and gradients in the stage's dtype (``w`` bytes each; the
gradients in fp32 when the layout accumulates and reduces them in fp32, ``Layout.grads_fp32``), an
fp32 master copy when the dtype is 16-bit (``m = 4``), and optimizer state (``o``, 8 for AdamW's
two fp32 moments). A mode divides parts of it by the ``d`` data-parallel ranks (Rajbhandari et
al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models", SC'20, §5: stages
P_os, P_os+g, P_os+g+p):

======  ===========================  =================================
mode    bytes per parameter per rank  bf16 AdamW (w=2, m=4, o=8)
======  ===========================  =================================
ddp     ``w + w + m + o``            16
zero1   ``w + w + (m + o)/d``        4 + 12/d
zero2   ``w + (w + m + o)/d``        2 + 14/d
fsdp    ``(w + w + m + o)/d``        16/d
======  ===========================  =================================

A mode that shards the gradients but not the parameters (``zero2``) reduce-scatters each
microbatch's gradients as its backward makes them, unit by unit, into the rank's sharded
accumulator (ZeRO-2 as DeepSpeed runs it with gradient accumulation; the Llama 3 paper's FSDP,
which "shards optimizer states and gradients" but does not reshard the weights after forward,
§3.3.2): no rank holds a whole gradient for the step, only the unit's being reduced, and the
step ends by gathering the updated weights. Overlapped (``Layout.overlap_grad_reduce``), those
reduce-scatters run beside the following backwards and are not charged to them.

A mode that shards the parameters also holds gathered ones while it computes. Resharded after
forward (torch's ``fully_shard`` default, which pipeplan runs without pipelining), each unit is
gathered before its forward and again before its backward and freed after: at the peak a rank
holds the largest unit's weights, the next unit's prefetched weights and the current unit's
unsharded gradient. torchtitan turns resharding off under pipeline parallelism ("to avoid
per-microbatch all-gathers", ``torchtitan/distributed/fsdp.py``) and the pipelining runtime
syncs gradients on the last microbatch only, so a stage's weights and gradients stay unsharded
for the step: one all-gather before the first forward, one reduce-scatter after the last
backward. The optimizer step runs on ``1/d`` of the parameters in every mode that shards the
optimizer state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from .collectives import Link, all_gather_s, reduce_scatter_s, ring_all_reduce_s

__all__ = [
    "Recompute",
    "RECOMPUTE_MODES",
    "DPMode",
    "DPModeSpec",
    "DP_MODES",
    "StateBytes",
    "gathered_bytes",
]


class Recompute(str, Enum):
    """Activation recomputation of a stage: keep everything; redo each block's attention core
    (Korthikanti et al. 2022's selective recompute); or keep each unit's input only and redo its
    forward in the backward."""

    NONE = "none"
    SELECTIVE = "selective"
    FULL = "full"


RECOMPUTE_MODES: tuple[str, ...] = tuple(r.value for r in Recompute)


class DPMode(str, Enum):
    """How data-parallel replicas hold the training state; what each does is its :attr:`spec`."""

    DDP = "ddp"
    ZERO1 = "zero1"
    ZERO2 = "zero2"
    FSDP = "fsdp"

    @property
    def spec(self) -> DPModeSpec:
        return DP_MODES[self]


@dataclass(frozen=True)
class StateBytes:
    """Bytes per parameter each rank holds, by part (already divided by ``d`` where sharded)."""

    weights: float
    grads: float
    master: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.master + self.optimizer


#: the data-parallel group's collectives a mode names, each ``(ranks, bytes, link) -> seconds``
_COLLECTIVES: dict[str, Callable[[int, float, Link], float]] = {
    "all_reduce": ring_all_reduce_s,
    "reduce_scatter": reduce_scatter_s,
    "all_gather": all_gather_s,
}
#: of those, the ones that reduce gradients (over the gradients' bytes, in the reduction's dtype);
#: the rest gather weights (over the weights' bytes)
_REDUCTIONS = frozenset({"all_reduce", "reduce_scatter"})


@dataclass(frozen=True, kw_only=True)
class DPModeSpec:
    """What one data-parallel mode does, for every part of pipeplan that prices, searches,
    exports or runs it."""

    doc: str
    shards_optimizer: bool  #: optimizer state and fp32 master weights divided over the replicas
    shards_grads: bool  #: gradients too
    shards_params: bool  #: parameters too: gathered before they compute
    #: collectives on the data-parallel group before the first forward (the weights' gathers) and
    #: after the last backward (the gradients' reduction, and the updated weights' gathers), by
    #: name in ``_COLLECTIVES``: a gather over the bytes of the rank's weights, a reduction over
    #: those of its gradients in the reduction's dtype
    head: tuple[str, ...]
    tail: tuple[str, ...]
    trace_name: str  #: the step-end collective's name on the communication track
    #: reductions at every microbatch's backward, unit by unit, over the unit's gradient bytes:
    #: ``zero2``'s reduce-scatter into sharded accumulators (see the module docstring; its
    #: ``tail`` then holds the weights' gather only)
    each_microbatch: tuple[str, ...] = ()
    #: free gathered weights after each forward when there is no pipeline (then a rank holds one
    #: stage and gathers it twice a step, not twice a microbatch)
    reshards_without_pipeline: bool = False
    #: executor: each stage wrapped in FSDP2's ``fully_shard`` (else the runtime all-reduces
    #: whole gradients), and the optimizer ZeRO-1's (``executor.zero``: it reduce-scatters the
    #: gradients and all-gathers the updated weights itself; whole parameters, not tp shards)
    #: rather than AdamW on the rank's own parameters
    fully_shard: bool = False
    zero_redundancy_optimizer: bool = False
    #: torchtitan 0.3.0: the data-parallel degree it sets (``replicate`` or ``shard``), "" when it
    #: has no such mode; Megatron-LM's arguments for it
    torchtitan: str = ""
    megatron_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = (*self.head, *self.tail, *self.each_microbatch)
        if unknown := [n for n in names if n not in _COLLECTIVES]:
            raise ValueError(f"unknown collectives {unknown}: choose from {', '.join(_COLLECTIVES)}")
        if any(n in _REDUCTIONS for n in self.head) or any(n not in _REDUCTIONS for n in self.each_microbatch):
            raise ValueError("a mode's head gathers weights and its each_microbatch reduces gradients")

    @property
    def sharded(self) -> bool:
        """Whether any training state is divided over the replicas (a sharded mode needs dp > 1)."""
        return self.shards_optimizer or self.shards_grads or self.shards_params

    @property
    def sharded_parts(self) -> int:
        return self.shards_optimizer + self.shards_grads + self.shards_params

    def reshards(self, pp: int) -> bool:
        """Whether this mode frees each unit's gathered weights after its forward in a pipeline of
        ``pp`` ranks (the one place the rule is written; ``Layout.on_pipeline`` applies it)."""
        return self.reshards_without_pipeline and pp == 1

    def state_bytes_per_param(
        self, d: int, *, dtype_bytes: int, optimizer_bytes_per_param: float = 8.0, grad_bytes: int | None = None
    ) -> StateBytes:
        """Static bytes per parameter per rank over ``d`` data-parallel ranks; ``grad_bytes``: an
        accumulated gradient element's (default: the weights' dtype; 4 when gradients are
        accumulated and reduced in fp32)."""
        if d < 1:
            raise ValueError(f"data-parallel degree must be >= 1, got {d}")
        w = float(dtype_bytes)
        m = 4.0 if dtype_bytes < 4 else 0.0
        o = float(optimizer_bytes_per_param)
        by = {True: d, False: 1}
        return StateBytes(
            weights=w / by[self.shards_params],
            grads=(w if grad_bytes is None else float(grad_bytes)) / by[self.shards_grads],
            master=m / by[self.shards_optimizer],
            optimizer=o / by[self.shards_optimizer],
        )

    @property
    def tail_reduces(self) -> bool:
        """Whether the step-end collectives reduce gradients (else they gather weights)."""
        return any(n in _REDUCTIONS for n in self.tail)

    @property
    def reduces_each_microbatch(self) -> bool:
        """Whether no rank holds a whole gradient for the step (each microbatch's is reduced)."""
        return bool(self.each_microbatch)

    def each_microbatch_s(self, d: int, reduce_bytes: float, link: Link) -> float:
        """A unit's reductions at one microbatch, over its gradient's ``reduce_bytes``."""
        return _run(self.each_microbatch, d, 0.0, reduce_bytes, link)

    def head_s(self, d: int, nbytes: float, link: Link) -> float:
        """The gathers before the first forward, over ``nbytes`` of weights."""
        return _run(self.head, d, nbytes, 0.0, link)

    def tail_s(self, d: int, nbytes: float, link: Link, reduce_bytes: float | None = None) -> float:
        """After the last backward: the reductions over ``reduce_bytes`` of gradients (default:
        ``nbytes``, reduced in the weights' dtype), the gathers over ``nbytes`` of weights."""
        return _run(self.tail, d, nbytes, nbytes if reduce_bytes is None else reduce_bytes, link)


def _run(names: tuple[str, ...], d: int, weight_bytes: float, reduce_bytes: float, link: Link) -> float:
    return sum((_COLLECTIVES[n](d, reduce_bytes if n in _REDUCTIONS else weight_bytes, link) for n in names), 0.0)


DP_MODES: dict[DPMode, DPModeSpec] = {
    DPMode.DDP: DPModeSpec(
        doc="replicas: every rank holds everything, gradients all-reduced",
        shards_optimizer=False,
        shards_grads=False,
        shards_params=False,
        head=(),
        tail=("all_reduce",),
        trace_name="ALL_REDUCE",
        torchtitan="replicate",
    ),
    DPMode.ZERO1: DPModeSpec(
        doc="optimizer state sharded (ZeRO-1; Megatron's distributed optimizer)",
        shards_optimizer=True,
        shards_grads=False,
        shards_params=False,
        head=(),
        tail=("reduce_scatter", "all_gather"),
        trace_name="REDUCE_GRAD",
        zero_redundancy_optimizer=True,
        megatron_args=("--use-distributed-optimizer",),
    ),
    DPMode.ZERO2: DPModeSpec(
        doc="gradients too (ZeRO-2: each microbatch's gradients reduce-scattered as they are made)",
        shards_optimizer=True,
        shards_grads=True,
        shards_params=False,
        head=(),
        tail=("all_gather",),
        trace_name="UNSHARD",
        each_microbatch=("reduce_scatter",),
        fully_shard=True,
        megatron_args=(
            "--use-distributed-optimizer",
            "--use-megatron-fsdp",
            "--data-parallel-sharding-strategy",
            "optim_grads",
        ),
    ),
    DPMode.FSDP: DPModeSpec(
        doc="parameters too (ZeRO-3; gathered per step under pipelining, as torchtitan runs it)",
        shards_optimizer=True,
        shards_grads=True,
        shards_params=True,
        head=("all_gather",),
        tail=("reduce_scatter",),
        trace_name="REDUCE_GRAD",
        reshards_without_pipeline=True,
        fully_shard=True,
        torchtitan="shard",
        megatron_args=(
            "--use-distributed-optimizer",
            "--use-megatron-fsdp",
            "--data-parallel-sharding-strategy",
            "optim_grads_params",
        ),
    ),
}


def gathered_bytes(
    unit_params: Sequence[int],
    *,
    dtype_bytes: int,
    grad_bytes: int | None = None,
    prefetch: int = 1,
    reshard_after_forward: bool = True,
) -> float:
    """Peak bytes of gathered (unsharded) state on a rank of a parameter-sharding mode holding
    units of ``unit_params`` parameters.

    ``reshard_after_forward``: the largest unit's weights plus ``prefetch`` more units' (the
    largest again, a bound) and the current unit's unsharded gradient. Otherwise (torchtitan
    under pipelining): every unit's weights and gradients, for the whole step. ``grad_bytes``:
    bytes of an unsharded gradient element (default: the weights' dtype; torchtitan accumulates
    in its fp32 ``reduce_dtype`` when it defers the gradient sync)."""
    if not unit_params:
        return 0.0
    if prefetch < 0:
        raise ValueError(f"prefetch must be >= 0, got {prefetch}")
    g = dtype_bytes if grad_bytes is None else grad_bytes
    if not reshard_after_forward:
        return float(sum(unit_params) * (dtype_bytes + g))
    largest = max(unit_params)
    return float((1 + prefetch) * largest * dtype_bytes + largest * g)
