"""The cost model as explicit data, in one place: one record per unit and option, and a stage
as the sum of its units' records plus per-stage constants.

Everything that prices a plan reads these records: the event engine (through
:func:`stage_costs` / :meth:`CostModel.stage_costs`), and in the planner the MILP's
coefficients, the search's lower bounds, the memory pattern, the screen and the refinement.
A new cost term is a field of :class:`UnitRecord` (or a per-stage constant of
:class:`CostModel`) plus its use in :meth:`CostModel.stage_cost`, nothing more.

Assumptions:

- a stage's time is the sum of its units' times (no fusion across units), plus the runtime's
  fixed cost per compute action (``action_overhead_s``, once per F, B, I and W of a stage);
- static memory per parameter: weights and gradients in the stage's dtype (the gradients in
  fp32 under ``Layout.grads_fp32``), plus optimizer state (``optimizer_bytes_per_param``, 8 for
  AdamW's two fp32 moments) and an fp32 master copy when the dtype is 16-bit: 16 bytes per
  parameter (18 with bf16 weights and fp32 gradients); a forward-only (serving) job keeps the
  weights alone; the data-parallel mode shards its parts (``simulator.modes``);
- full recompute of a unit keeps only its input and adds one forward to its backward;
- after I, a zero-bubble stage keeps all of each unit's activations until W, as
  ``torch.distributed.pipelining`` runs it: ``stage_backward_input`` takes the input gradients
  with ``retain_graph=True``, so every tensor saved for backward lives until the weight
  gradients are taken (a runtime that frees what W does not need would keep less), except
  what the loss saved (``UnitCost.loss_saved_bytes``, the log-probabilities): torch detaches the
  last stage's output and loss after I, and W does not need them, so I frees them;
- the first stage has no input gradient to compute (its inputs are data): its I is empty
  and its W runs the whole backward, keeping all activations until then (as
  ``torch.distributed.pipelining`` runs it: ``stage_backward_input`` is skipped on stage 0);
- a transfer between pipeline ranks costs ``latency + bytes / bandwidth`` on the link the
  rank layout implies (:class:`Links`); the data-parallel collectives run on the group's link
  (:func:`dp_link`), their reductions over the gradients' bytes as reduced, their gathers over
  the weights';
- on a GPU fabric, compute beside the data-parallel collectives that overlap it every
  microbatch runs ``OVERLAP_SLOWDOWN`` slower (a cited mean, :func:`overlap_slowdown_s`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple, TypeVar

from profiles.contract import UserError
from profiles.gemm import GEMM_DEVICES
from profiles.types import DTYPE_TABLE, Profile, ProfileEntry, UnitCost

from .collectives import Link, group_link, group_ranks, ring_all_reduce_s
from .modes import DPMode, Recompute, gathered_bytes
from .tensor_parallel import TPUnitCost, TransformerShape, as_measured, scale_unit

__all__ = [
    "Recompute",
    "DPMode",
    "Layout",
    "DPComm",
    "TiedSync",
    "Option",
    "HeldOnce",
    "UnitRecord",
    "StageCost",
    "Links",
    "pipeline_latency",
    "CostModel",
    "unit_records",
    "OVERLAP_SLOWDOWN",
    "overlap_slowdown_s",
    "stage_costs",
    "check_bounds",
]

X = TypeVar("X")  # a number, or a linear expression of one (the MILP's)


@dataclass(frozen=True, kw_only=True)
class Layout:
    """How a plan spreads over devices besides its pipeline: rank layout
    ``rank = (pp_index * dp + dp_index) * tp + tp_index`` (tp innermost, pp outermost, as
    torchtitan's and Megatron's meshes order them)."""

    tp: int = 1  # tensor-parallel degree (Megatron column/row-parallel blocks, vocab-parallel ends)
    dp: int = 1  # data-parallel replicas
    dp_mode: DPMode = DPMode.DDP
    sequence_parallel: bool = False  # Megatron sequence parallelism beside tp (tp > 1 only)
    #: a parameter-sharding mode frees each unit's gathered weights after its forward and gathers
    #: them again for its backward (torch's default, torchtitan's without pipelining); False: a
    #: stage's weights stay gathered for the whole step (torchtitan under pipelining). Set by
    #: ``on_pipeline`` from the mode's rule
    reshard_after_forward: bool = False
    #: data-parallel gradient reduction (ddp's all-reduce, zero's and fsdp's reduce-scatter)
    #: overlapped with the remaining backward, as torch DDP's buckets and Megatron's
    #: ``--overlap-grad-reduce`` run it; False: after the rank's last backward
    overlap_grad_reduce: bool = False
    #: gradients accumulated and reduced in fp32 whatever the stage's dtype (Megatron-LM's default
    #: for bf16, its ``--grad-reduce-in-bf16`` off; torchtitan's FSDP2 ``reduce_dtype``; the Llama 3
    #: paper's FSDP); False: in the stage's dtype. A no-op for fp32 stages
    grads_fp32: bool = False

    def grad_element_bytes(self, dtype_bytes: int) -> int:
        """Bytes of one accumulated (and reduced) gradient element of a stage in ``dtype_bytes``."""
        return 4 if self.grads_fp32 else dtype_bytes

    def on_pipeline(self, pp: int) -> Layout:
        """This layout for a pipeline of ``pp`` ranks, its mode's reshard rule applied
        (``DPModeSpec.reshards``)."""
        return replace(self, reshard_after_forward=self.dp_mode.spec.reshards(pp))

    @property
    def stride(self) -> int:
        """Devices between pipeline neighbours."""
        return self.dp * self.tp


@dataclass(frozen=True, order=True)
class Option:
    """How a stage runs: its precision and its recomputation."""

    dtype: str = "fp32"
    recompute: Recompute = Recompute.NONE

    @property
    def label(self) -> str:
        """Short name, e.g. ``bf16`` or ``bf16+full``."""
        return self.dtype if self.recompute is Recompute.NONE else f"{self.dtype}+{self.recompute.value}"


@dataclass(frozen=True, kw_only=True)
class UnitRecord:
    """What one unit costs per microbatch under one option. Times in seconds, sizes in bytes."""

    forward_s: float
    backward_s: float  # B: full backward (with the recomputed forward when recomputing)
    input_s: float  # I: the input-gradient part of B
    weight_s: float  # W: the weight-gradient part of B
    static_bytes: int  # weights + gradients + optimizer state for the whole step (weights alone when serving)
    activation_bytes: int  # held from F until the backward frees them
    keep_bytes: int  # of those, held from I until W
    output_bytes: int  # activation handed to the next unit (sent when a stage ends here)
    input_bytes: int  # gradient handed back to the previous unit (sent when a stage starts here)
    grad_bytes: int  # the unit's weight bytes: what a parameter-sharding mode gathers
    params: int
    optimizer_s: float  # end-of-step gradient scaling + optimizer update
    # of forward_s and of backward_s (input_s): the tensor-parallel collectives inside them
    tp_forward_s: float = 0.0
    tp_backward_s: float = 0.0
    #: of backward_s (input_s): gathering the unit's weights again, each microbatch, when its
    #: mode reshards them after the forward and nothing prefetches (``Layout.overlap_grad_reduce``
    #: off): FSDP2 gathers each unit at the start of its backward
    dp_backward_s: float = 0.0
    #: of backward_s (weight_s): reduce-scattering the unit's gradient, each microbatch, when its
    #: mode reduces every microbatch (``DPModeSpec.reduces_each_microbatch``) and the reduction is
    #: not overlapped with the following backwards
    dp_reduce_s: float = 0.0
    #: of forward_s and weight_s: the compute's slowdown beside the data-parallel collectives that
    #: overlap it each microbatch (``overlap_slowdown_s``)
    contention_s: float = 0.0
    #: the unit's gradient bytes as the data-parallel reduction moves them (None: ``grad_bytes``,
    #: reduced in the weights' dtype; ``Layout.grads_fp32``: 4 per parameter)
    reduce_bytes: int | None = None

    @property
    def reduced_bytes(self) -> int:
        return self.grad_bytes if self.reduce_bytes is None else self.reduce_bytes

    def as_first_stage(self) -> UnitRecord:
        """The unit inside stage 0: no input gradient, so I is empty, W is the whole backward
        and everything is kept from I until W."""
        return replace(self, input_s=0.0, weight_s=self.backward_s, keep_bytes=self.activation_bytes)


@dataclass(frozen=True)
class StageCost:
    """What one microbatch costs on one stage. Times in seconds, sizes in bytes."""

    forward_s: float
    backward_s: float  # B: full backward
    backward_input_s: float  # I
    backward_weight_s: float  # W
    activation_bytes: int  # saved from F until the backward frees them, per microbatch in flight
    static_bytes: int  # weights + gradients + optimizer state, for the whole step
    output_bytes: int  # activation sent to the next stage (0 for the last)
    input_bytes: int  # gradient sent back to the previous stage (0 for the first)
    param_bytes: int = 0  # weight bytes: what a parameter-sharding mode gathers
    keep_bytes: int | None = None  # of activation_bytes, held from I until W (None: half, rounded down)
    optimizer_s: float = 0.0  # once per step, after the last backward: gradient scaling + optimizer step
    #: the first unit's gradient bytes (what a prefetching parameter-sharding mode gathers first)
    lead_param_bytes: int = 0
    # DualPipe's F&B: duration of an Overlap pair whose backward is this stage's (its forward is
    # the other stage on the rank). None: not measured, forward_s of that stage + backward_s, as
    # torch's runtime runs an OVERLAP_F_B without a custom overlapped function (one after the other).
    overlap_f_b_s: float | None = None
    #: gradient bytes the data-parallel reduction moves (None: ``param_bytes``)
    reduce_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.keep_bytes is None:
            object.__setattr__(self, "keep_bytes", self.activation_bytes // 2)

    @property
    def reduced_bytes(self) -> int:
        return self.param_bytes if self.reduce_bytes is None else self.reduce_bytes


@dataclass(frozen=True)
class Links:
    """Point-to-point transfers: time = latency + bytes / bandwidth.

    ``src``/``dst`` are pipeline ranks. Pipeline rank ``r`` is device ``r * stride`` (the
    rank layout ``(pp_index * dp + dp_index) * tp + tp_index`` puts pipeline neighbours
    ``dp * tp`` devices apart), and devices ``x`` and ``y`` share a node when
    ``x // devices_per_node == y // devices_per_node``. ``overlap``: whether a send runs
    beside compute (True: asynchronous, as with a separate communication stream) or keeps
    the sending rank busy (False). Transfers on one link do not contend (an assumption).
    """

    latency_s: float = 0.0
    bandwidth_Bps: float = float("inf")
    inter_latency_s: float = 0.0
    inter_bandwidth_Bps: float = float("inf")
    devices_per_node: int = 1 << 30
    overlap: bool = True
    stride: int = 1
    #: bus bandwidth NCCL's collectives reach for large messages inside a node and across nodes
    #: (``collectives.Link.collective_Bps``; 0: collectives in the α-β model on the link)
    collective_Bps: float = 0.0
    inter_collective_Bps: float = 0.0
    #: α-β collectives: the fixed time of one call and the bandwidth of their ring steps
    #: (``collectives.Link.call_s``/``ring_Bps``; calibrated for gloo)
    collective_call_s: float = 0.0
    ring_Bps: float = 0.0
    scatter_gather_Bps: float = 0.0  #: ``collectives.Link.scatter_gather_Bps``

    def transfer_s(self, src: int, dst: int, nbytes: int) -> float:
        if src == dst:
            return 0.0
        n = self.devices_per_node
        same = (src * self.stride) // n == (dst * self.stride) // n
        lat, bw = (self.latency_s, self.bandwidth_Bps) if same else (self.inter_latency_s, self.inter_bandwidth_Bps)
        return lat + nbytes / bw

    def group_link(self, ranks: list[int]) -> Link:
        """The link a collective over devices ``ranks`` runs on: intra-node when they share a node."""
        alpha_beta = {
            "call_s": self.collective_call_s,
            "ring_Bps": self.ring_Bps,
            "scatter_gather_Bps": self.scatter_gather_Bps,
        }
        intra = Link(self.latency_s, self.bandwidth_Bps, self.collective_Bps, **alpha_beta)
        inter = Link(self.inter_latency_s, self.inter_bandwidth_Bps, self.inter_collective_Bps, **alpha_beta)
        return group_link(ranks, min(self.devices_per_node, 1 << 30), intra, inter)


def pipeline_latency(forward: Sequence[X], rank_of: Sequence[int], send: Callable[[int], X]) -> X:
    """One microbatch through an idle pipeline, as the event engine would time a table of that
    microbatch alone: every stage's ``forward[s]``, plus ``send(s)``, the hand-off of stage
    ``s``'s output to stage ``s + 1``, wherever the two sit on different ranks (``rank_of``).
    The one latency formula: the scoring sums numbers, the MILP its linear expressions."""
    cuts = [s for s in range(len(forward) - 1) if rank_of[s] != rank_of[s + 1]]
    return sum(forward) + sum(send(s) for s in cuts)


@dataclass(frozen=True)
class DPComm:
    """Data-parallel communication of one rank's stages per step, as its mode's ``DPModeSpec``
    names it: before the first forward (``head_s``: a parameter-sharding mode's gathers) and
    after the last backward (``tail_s``: the gradients' reduction, and the updated weights'
    gathers). Collectives are rings on the data-parallel group's link; a rank with no gradient
    bytes sends nothing."""

    mode: DPMode = DPMode.DDP
    dp: int = 1
    link: Link = Link(0.0, float("inf"))
    #: the gradient reduction of each stage starts with its last backward and runs beside the rank's
    #: remaining backwards (``Layout.overlap_grad_reduce``); a parameter-sharding mode then also prefetches: only a
    #: stage's first unit is gathered before the rank starts, the rest beside its forwards (and,
    #: resharded after forward, gathered again beside its backwards). What the collectives run
    #: beside each microbatch slow the compute (``UnitRecord.contention_s``)
    overlap: bool = False
    regather: bool = False  #: resharded after forward: the backward gathers the weights again

    def head_s(self, grad_bytes: float) -> float:
        if self.dp <= 1 or not grad_bytes:
            return 0.0
        return self.mode.spec.head_s(self.dp, grad_bytes, self.link)

    def tail_s(self, grad_bytes: float, reduce_bytes: float | None = None) -> float:
        """The reductions over ``reduce_bytes`` of gradients (default ``grad_bytes``), the
        gathers over ``grad_bytes`` of weights."""
        if self.dp <= 1 or not grad_bytes:
            return 0.0
        return self.mode.spec.tail_s(self.dp, grad_bytes, self.link, reduce_bytes)

    def head_affine(self) -> tuple[float, float]:
        """``head_s`` as ``(seconds, seconds per weight byte)`` for a rank with weights (the
        collectives are affine in their bytes), for the MILP."""
        one, two = self.head_s(1.0), self.head_s(2.0)
        return one - (two - one), two - one

    def tail_affine(self) -> tuple[float, float, float]:
        """``tail_s`` as ``(seconds, per weight byte, per reduced gradient byte)``, for the MILP."""
        base = self.tail_s(1.0, 1.0)
        per_weight, per_grad = self.tail_s(2.0, 1.0) - base, self.tail_s(1.0, 2.0) - base
        return base - per_weight - per_grad, per_weight, per_grad


def tp_layers(profile: Profile, kind: str) -> int:
    """How many layers tensor parallelism splits in a unit of ``kind``: a block's entries in the
    profile's tensor-parallel plan (``Profile.tp_plan``; none recorded: none counted), the one
    vocabulary-parallel layer of an embedding or a head, none elsewhere."""
    if kind == "block":
        return len(profile.tp_plan or {})
    return 1 if kind in ("embedding", "head") else 0


def dp_link(layout: Layout, links: Links) -> Link:
    """The data-parallel group's link: devices ``tp`` apart, ``dp`` of them."""
    return links.group_link(group_ranks("dp", 0, pp=1, dp=layout.dp, tp=layout.tp))


#: compute beside a collective runs this much slower on a GPU: the mean slowdown of GEMM-heavy
#: training compute (GPT and Llama layers on A100 and H100, and AMD MI250/MI210) while NCCL
#: collectives run beside it, against the same compute alone (arXiv:2507.03114, "Characterizing
#: Compute-Communication Overlap in GPU-Accelerated Distributed Deep Learning: Performance and
#: Power Implications", 2025, abstract: 18.9% on average, 40.0% at most). The collective's kernels
#: take SMs and memory bandwidth from the compute's
OVERLAP_SLOWDOWN = 0.189


def overlap_slowdown_s(comm_s: float, compute_s: float, slowdown: float = OVERLAP_SLOWDOWN) -> float:
    """What ``comm_s`` seconds of a collective beside ``compute_s`` seconds of compute add to the
    compute: while they overlap the compute runs ``1 + slowdown`` times slower, so it loses
    ``slowdown / (1 + slowdown)`` of each overlapped second; a collective longer than the
    (slowed) compute overlaps all of it."""
    return slowdown / (1 + slowdown) * min(comm_s, compute_s * (1 + slowdown))


def _dp_each_microbatch(
    layout: Layout, links: Links, forward_only: bool
) -> Callable[[float, float, float, float], tuple[float, float, float, float]]:
    """Per unit, by its weight bytes, its reduced gradient bytes and its forward and backward
    compute seconds, the data-parallel collectives of each microbatch: its weights gathered
    (before the forward, and again before the backward, when resharded after forward) and its
    gradient reduced (when the mode reduces every microbatch). Not overlapped, the backward's
    collectives sit inside it: ``(gather, reduce, 0, 0)``, the backward's regather and reduction
    (the forward's gather is prefetched by nothing and priced at the rank's start). Overlapped
    (``overlap_grad_reduce``) on a GPU fabric (a link with NCCL's bus bandwidth; CPU ranks keep
    their measured figures), they run beside the compute and slow it
    (``overlap_slowdown_s``): ``(0, 0, forward's slowdown, backward's slowdown)``. A reduction or
    a gather once a step (ddp, zero1, fsdp's last reduction, weights kept gathered) is not per
    microbatch and slows no compute here. Nothing when serving or with one replica."""
    mode, d, link = layout.dp_mode.spec, layout.dp, dp_link(layout, links)
    overlap = layout.overlap_grad_reduce
    if forward_only or d == 1 or (overlap and not link.collective_Bps):
        return lambda nbytes, reduce_bytes, forward_s, backward_s: (0.0, 0.0, 0.0, 0.0)
    regather = mode.shards_params and layout.reshard_after_forward

    def collectives(nbytes: float, reduce_bytes: float, forward_s: float, backward_s: float):
        if not nbytes:
            return 0.0, 0.0, 0.0, 0.0
        gather = mode.head_s(d, nbytes, link) if regather else 0.0
        reduce = mode.each_microbatch_s(d, reduce_bytes, link) if mode.reduces_each_microbatch else 0.0
        if not overlap:
            return gather, reduce, 0.0, 0.0
        return 0.0, 0.0, overlap_slowdown_s(gather, forward_s), overlap_slowdown_s(gather + reduce, backward_s)

    return collectives


def _state_per_param(layout: Layout, dtype_bytes: int, optimizer_bytes_per_param: float) -> float:
    """Static training bytes per parameter per rank under the layout's data-parallel mode: its
    share of the weights, gradients (``Layout.grads_fp32``: fp32), master weights and optimizer
    state, plus, for a parameter-sharding mode that keeps a stage gathered for the step, the
    gathered weights and unsharded gradients."""
    mode, grad_element = layout.dp_mode.spec, layout.grad_element_bytes(dtype_bytes)
    state = mode.state_bytes_per_param(
        layout.dp, dtype_bytes=dtype_bytes, optimizer_bytes_per_param=optimizer_bytes_per_param, grad_bytes=grad_element
    ).total
    if mode.shards_params and not layout.reshard_after_forward:
        state += dtype_bytes + grad_element
    return state


def unit_records(
    profile: Profile,
    option: Option,
    microbatch_size: int | None = None,
    *,
    layout: Layout = Layout(),
    links: Links = Links(),
    optimizer_bytes_per_param: float = 8.0,
    optimizer_s_per_param: float = 0.0,
    forward_only: bool = False,
    tp_layer_s: tuple[float, float] = (0.0, 0.0),
    fsdp_unit_s: tuple[float, float] = (0.0, 0.0),
) -> tuple[UnitRecord, ...]:
    """One record per unit of ``profile`` under ``option`` on ``layout``, per rank (see the
    module's assumptions; ``tensor_parallel.scale_unit`` prices tp and selective recompute).
    ``tp_layer_s``: the runtime's own time per tensor-parallel layer in a forward and in a
    backward (calibrated; each unit's layers by :func:`tp_layers`), at tp > 1. ``fsdp_unit_s``:
    the same per unit FSDP2 shards (a mode run by ``fully_shard``, dp > 1, a unit with parameters)."""
    dtype = DTYPE_TABLE.get(option.dtype)
    if dtype is None:
        raise UserError(f"dtype {option.dtype!r}: choose one of {', '.join(DTYPE_TABLE)}")
    entry = profile.entry(option.dtype, microbatch_size)
    scaled = _per_rank(profile, entry, dtype.bytes, option, layout, links)
    mode = layout.dp_mode.spec
    grad_element = layout.grad_element_bytes(dtype.bytes)
    state = _state_per_param(layout, dtype.bytes, optimizer_bytes_per_param)
    opt_share = layout.dp if mode.shards_optimizer else 1
    dp_collectives = _dp_each_microbatch(layout, links, forward_only)
    out = []
    for i, (u, sc) in enumerate(zip(entry.units, scaled)):
        unit_input = scaled[i - 1].output_bytes if i > 0 else 0
        b_scale = (sc.backward_input_s + sc.backward_weight_s) / (u.backward_input_s + u.backward_weight_s or 1.0)
        if option.recompute is Recompute.FULL:  # keep the unit's input, redo its forward (collectives too)
            act, extra, loss_part = unit_input, sc.forward_s + sc.comm_forward_s, 0
        else:
            act, extra = sc.saved_bytes, sc.recompute_s
            # the loss's share of the activations, scaled as they are (tp)
            loss_part = int(u.loss_saved_bytes * act / u.saved_bytes) if u.saved_bytes else 0
        params = sc.params
        compute_b = sc.backward_input_s + sc.backward_weight_s + extra
        gather, reduce, slow_f, slow_b = dp_collectives(
            params * dtype.bytes, params * grad_element, sc.forward_s, compute_b
        )
        # the runtime's own time around the math: DTensor per tensor-parallel layer, FSDP2 per unit
        layers = tp_layers(profile, u.kind) if layout.tp > 1 else 0
        sharded = bool(params) and layout.dp > 1 and mode.fully_shard
        rt_f = layers * tp_layer_s[0] + sharded * fsdp_unit_s[0]
        rt_b = layers * tp_layer_s[1] + sharded * fsdp_unit_s[1]
        if option.recompute is Recompute.FULL:
            rt_b += rt_f  # the forward's layers (and hooks) run again
        out.append(
            UnitRecord(
                forward_s=sc.forward_s + sc.comm_forward_s + rt_f + slow_f,
                backward_s=(u.backward_s * b_scale if u.backward_input_s + u.backward_weight_s else u.backward_s)
                + extra
                + sc.comm_backward_s
                + gather
                + reduce
                + rt_b
                + slow_b,
                input_s=sc.backward_input_s + extra + sc.comm_backward_s + gather + rt_b,
                weight_s=sc.backward_weight_s + reduce + slow_b,
                static_bytes=int(params * dtype.bytes if forward_only else params * state),
                activation_bytes=int(act),
                keep_bytes=int(act) - loss_part,  # retained from I to W but the loss (module docstring)
                output_bytes=sc.output_bytes,
                input_bytes=unit_input,
                grad_bytes=params * dtype.bytes,
                reduce_bytes=params * grad_element,
                params=params,
                optimizer_s=params * optimizer_s_per_param / opt_share,
                tp_forward_s=sc.comm_forward_s,
                # full recompute redoes the forward's collectives in the backward
                tp_backward_s=sc.comm_backward_s + (sc.comm_forward_s if option.recompute is Recompute.FULL else 0.0),
                dp_backward_s=gather,
                dp_reduce_s=reduce,
                contention_s=slow_f + slow_b,
            )
        )
    return tuple(out)


def _per_rank(
    profile: Profile, entry: ProfileEntry, dtype_bytes: int, option: Option, layout: Layout, links: Links
) -> list[TPUnitCost]:
    """Each unit of ``entry`` at its per-rank cost at the layout's tp degree (``tensor_parallel.scale_unit``;
    at tp 1 without selective recompute, the profile's own figures)."""
    units, microbatch_size = entry.units, entry.microbatch_size
    selective = option.recompute is Recompute.SELECTIVE
    formula = profile.method == "analytic"  # blocks keep Korthikanti et al.'s bytes (tensor_parallel)
    if layout.tp == 1 and not selective and not (formula and _has_shape(profile)):
        return [as_measured(u) for u in units]
    try:
        shape = TransformerShape.from_config(
            profile.model_config,
            seq_len=profile.seq_len,
            microbatch=microbatch_size,
            dtype_bytes=dtype_bytes,
            flash=profile.fused_attention,
        )
    except (ValueError, TypeError) as e:
        raise UserError(
            f"{profile.model_name}: tensor parallelism and selective recompute need the model's transformer "
            f"shape, and its config does not give it ({e}): use --tp 1 and --recompute none,full"
        ) from None
    tp_link = links.group_link(list(range(layout.tp)))
    device = GEMM_DEVICES.get(profile.device_kind.lower())
    priced: dict[tuple, object] = {}  # identical units (a model's blocks) are priced once

    def price(u: UnitCost):
        key = (
            u.kind,
            u.forward_s,
            u.backward_input_s,
            u.backward_weight_s,
            u.saved_bytes,
            u.params,
            u.output_bytes,
            u.residual_forward_s,
            u.residual_backward_s,
        )
        if key not in priced:
            priced[key] = scale_unit(
                u,
                shape,
                layout.tp,
                sequence_parallel=layout.sequence_parallel,
                recompute="selective" if selective else "none",
                device=device,
                link=tp_link if layout.tp > 1 else None,
                activation_formula=formula,
            )
        return priced[key]

    try:
        return [price(u) for u in units]
    except ValueError as e:
        raise UserError(f"{profile.model_name}: {e}") from None


def _has_shape(profile: Profile) -> bool:
    """Whether the profile's config gives a transformer shape (and its units have roles)."""
    try:
        TransformerShape.from_config(profile.model_config, seq_len=profile.seq_len, microbatch=1)
    except (ValueError, TypeError):
        return False
    return all(u.kind in ("embedding", "block", "head") for u in profile.entries[0].units)


class HeldOnce(NamedTuple):
    """Bytes a rank's stages count more than once (tied copies on one rank hold one parameter)."""

    static: int = 0  #: weights, gradient and optimizer state
    weights: int = 0  #: what the data-parallel gathers move
    reduced: int = 0  #: what the data-parallel reductions move


@dataclass(frozen=True)
class TiedSync:
    """One tied parameter's gradient all-reduce per step among the pipeline ranks holding it."""

    ranks: tuple[int, ...]
    bytes: int


@dataclass(frozen=True, kw_only=True)
class CostModel:
    """The records of every option a plan may use, with the per-stage constants.

    ``records[option][u]``: unit ``u`` under ``option``. ``record(option, u, stage)`` applies
    the first-stage rule, so a stage is the plain sum of ``record`` over its units plus
    ``action_overhead_s`` once per compute action (:meth:`stage_cost`).
    """

    records: dict[Option, tuple[UnitRecord, ...]]
    action_overhead_s: float = 0.0  # the runtime's fixed cost per compute action (calibrated)
    links: Links = field(default_factory=Links)  # between pipeline ranks, placed by the layout's stride
    layout: Layout = Layout()
    forward_only: bool = False
    #: static bytes every rank holds once besides its stages' records: resharding after forward
    #: keeps the largest unit's weights gathered, one more prefetched and its gradient unsharded; a
    #: mode reducing every microbatch holds the largest unit's whole gradient before its
    #: reduce-scatter (the largest unit of the whole model: a bound, the same whatever the split).
    #: No stage's cost carries it: every per-rank sum adds it once
    per_rank_bytes: int = 0
    #: parameters held by several units (tied embeddings): ((unit indices), parameters) each
    tied: tuple[tuple[tuple[int, ...], int], ...] = ()

    @staticmethod
    def build(
        profile: Profile,
        options: Sequence[Option],
        microbatch_size: int | None = None,
        *,
        layout: Layout = Layout(),
        links: Links | None = None,
        optimizer_bytes_per_param: float = 8.0,
        optimizer_s_per_param: float = 0.0,
        action_overhead_s: float = 0.0,
        forward_only: bool = False,
        tp_layer_s: tuple[float, float] = (0.0, 0.0),
        fsdp_unit_s: tuple[float, float] = (0.0, 0.0),
    ) -> CostModel:
        """Records of ``options`` on ``layout``; ``links``: the cluster's (their stride is set here)."""
        links = replace(links or Links(), stride=layout.stride)
        records = {
            o: unit_records(
                profile,
                o,
                microbatch_size,
                layout=layout,
                links=links,
                optimizer_bytes_per_param=optimizer_bytes_per_param,
                optimizer_s_per_param=optimizer_s_per_param,
                forward_only=forward_only,
                tp_layer_s=tp_layer_s,
                fsdp_unit_s=fsdp_unit_s,
            )
            for o in dict.fromkeys(options)
        }
        gathered = 0

        def grad_element(o: Option) -> int:
            return layout.grad_element_bytes(DTYPE_TABLE[o.dtype].bytes)

        if layout.reshard_after_forward and not forward_only:
            gathered = max(
                int(
                    gathered_bytes(
                        [r.params for r in recs], dtype_bytes=DTYPE_TABLE[o.dtype].bytes, grad_bytes=grad_element(o)
                    )
                )
                for o, recs in records.items()
            )
        elif layout.dp_mode.spec.reduces_each_microbatch and layout.dp > 1 and not forward_only:
            # the largest unit's whole gradient, made by its backward, on its way to the reduce-scatter
            gathered = max(max(r.params for r in recs) * grad_element(o) for o, recs in records.items())
        index = {name: i for i, name in enumerate(profile.unit_names)}
        tied = tuple((tuple(index[u] for u in g.units), g.params) for g in profile.tied)
        return CostModel(
            records=records,
            action_overhead_s=action_overhead_s,
            links=links,
            layout=layout,
            forward_only=forward_only,
            per_rank_bytes=gathered,
            tied=tied,
        )

    @property
    def dp(self) -> int:
        return self.layout.dp

    @property
    def dp_comm(self) -> DPComm:
        """The data-parallel group's communication: devices ``tp`` apart, ``dp`` of them."""
        lay = self.layout
        return DPComm(lay.dp_mode, lay.dp, dp_link(lay, self.links), lay.overlap_grad_reduce, lay.reshard_after_forward)

    @property
    def options(self) -> list[Option]:
        return list(self.records)

    @property
    def num_units(self) -> int:
        return len(next(iter(self.records.values())))

    def record(self, option: Option, unit: int, stage: int) -> UnitRecord:
        """Unit ``unit`` under ``option`` when it sits in stage ``stage``."""
        rec = self.records[option][unit]
        return rec.as_first_stage() if stage == 0 else rec

    def send_s(self, src: int, dst: int, nbytes: int) -> float:
        """One hand-off of ``nbytes`` from pipeline rank ``src`` to ``dst``."""
        return self.links.transfer_s(src, dst, nbytes)

    def tied_syncs(
        self, bounds: Sequence[tuple[int, int]], options: Sequence[Option], rank_of: dict[int, int]
    ) -> tuple[TiedSync, ...]:
        """The gradient all-reduces tied parameters need every step: one per parameter whose
        holders sit on different pipeline ranks (Megatron's embedding all-reduce), of its
        gradient in the first holder stage's dtype; none when training stops or one rank holds all."""
        if self.forward_only:
            return ()
        stage_of = [s for s, (first, end) in enumerate(bounds) for _ in range(first, end)]
        out = []
        for units, params in self.tied:
            stages = sorted({stage_of[u] for u in units})
            ranks = tuple(sorted({rank_of[s] for s in stages}))
            if len(ranks) > 1:
                out.append(TiedSync(ranks, self.tied_bytes(params, options[stages[0]])))
        return tuple(out)

    def held_once(
        self, bounds: Sequence[tuple[int, int]], options: Sequence[Option], rank_of: dict[int, int]
    ) -> dict[int, HeldOnce]:
        """The bytes each rank holds once although its stages count them more than once: a tied
        parameter's holders on one rank (both in one stage, or a V's two ends) share one
        parameter, one gradient and one optimizer state, which each holder's record counts. The
        rank's stages' sums less these are what it holds, gathers and reduces."""
        stage_of = [s for s, (first, end) in enumerate(bounds) for _ in range(first, end)]
        out: dict[int, HeldOnce] = {}
        for units, params in self.tied:
            by_rank: dict[int, list[int]] = {}
            for u in units:
                by_rank.setdefault(rank_of[stage_of[u]], []).append(u)
            for rank, mine in by_rank.items():
                if len(mine) < 2:
                    continue
                option = options[stage_of[mine[0]]]
                rec = self.records[option][mine[0]]
                weights = params * DTYPE_TABLE[option.dtype].bytes // self.layout.tp
                per_param = rec.static_bytes / rec.params if rec.params else 0.0
                static = weights if self.forward_only else int(params // self.layout.tp * per_param)
                k = len(mine) - 1
                h = out.get(rank, HeldOnce())
                out[rank] = HeldOnce(
                    h.static + k * static, h.weights + k * weights, h.reduced + k * self.tied_bytes(params, option)
                )
        return out

    def tied_bytes(self, params: int, option: Option) -> int:
        """A tied parameter's gradient bytes per rank as reduced (its vocabulary-parallel shard under
        tp, in fp32 when the layout reduces gradients in fp32)."""
        return params * self.layout.grad_element_bytes(DTYPE_TABLE[option.dtype].bytes) // self.layout.tp

    def tied_sync_s(self, sync: TiedSync) -> float:
        """A ring all-reduce among the sync's pipeline ranks, on the link their devices share."""
        link = self.links.group_link([r * self.links.stride for r in sync.ranks])
        return ring_all_reduce_s(len(sync.ranks), sync.bytes, link)

    def tail_s(self, grad_bytes: int, optimizer_s: float, reduce_bytes: int | None = None) -> float:
        """After a rank's last backward: its data-parallel communication (gathers over its
        ``grad_bytes`` of weights, reductions over ``reduce_bytes`` of gradients, default the
        same), then its optimizer step."""
        if self.forward_only:
            return 0.0
        return self.dp_comm.tail_s(grad_bytes, reduce_bytes) + optimizer_s

    def head_s(self, grad_bytes: int) -> float:
        """Before a rank's first forward: a parameter-sharding mode's gather of its stages' weights."""
        return 0.0 if self.forward_only else self.dp_comm.head_s(grad_bytes)

    def stage_cost(self, index: int, first: int, end: int, option: Option, *, last: bool) -> StageCost:
        """Stage ``index`` holding units ``first..end-1`` under ``option``: the sum of their records."""
        recs = [self.record(option, u, index) for u in range(first, end)]
        oh = self.action_overhead_s
        return StageCost(
            forward_s=sum(r.forward_s for r in recs) + oh,
            backward_s=sum(r.backward_s for r in recs) + oh,
            backward_input_s=sum(r.input_s for r in recs) + oh,
            backward_weight_s=sum(r.weight_s for r in recs) + oh,
            activation_bytes=sum(r.activation_bytes for r in recs),
            static_bytes=sum(r.static_bytes for r in recs),
            output_bytes=0 if last else recs[-1].output_bytes,
            input_bytes=0 if index == 0 else recs[0].input_bytes,
            param_bytes=sum(r.grad_bytes for r in recs),
            reduce_bytes=sum(r.reduced_bytes for r in recs),
            lead_param_bytes=recs[0].grad_bytes,
            keep_bytes=sum(r.keep_bytes for r in recs),
            optimizer_s=sum(r.optimizer_s for r in recs),
        )

    def stage_costs(self, bounds: Sequence[tuple[int, int]], options: Sequence[Option]) -> list[StageCost]:
        """One StageCost per stage of the split ``bounds`` (units ``first..end-1``)."""
        n = len(bounds)
        if len(options) != n:
            raise UserError(f"a split of {n} stages needs {n} options, got {len(options)}")
        check_bounds(bounds, self.num_units)
        return [
            self.stage_cost(s, first, end, o, last=s == n - 1)
            for s, ((first, end), o) in enumerate(zip(bounds, options))
        ]


def check_bounds(bounds: Sequence[tuple[int, int]], num_units: int) -> None:
    """Raise UserError unless ``bounds`` are contiguous non-empty unit ranges covering every unit."""
    expect = 0
    for first, end in bounds:
        if first != expect or end <= first:
            raise UserError(f"split {list(bounds)} is not a run of contiguous non-empty unit ranges from 0")
        expect = end
    if expect != num_units:
        raise UserError(f"split {list(bounds)} covers {expect} units but the profile has {num_units}")


def stage_costs(
    profile: Profile,
    bounds: list[tuple[int, int]],
    *,
    dtype: str | list[str] = "fp32",
    microbatch_size: int | None = None,
    recompute: list[bool] | None = None,
    optimizer_bytes_per_param: float = 8.0,
    action_overhead_s: float = 0.0,
    optimizer_s_per_param: float = 0.0,
    forward_only: bool = False,
) -> list[StageCost]:
    """Map a Profile plus a split ``[(first, end), ...]`` to stage costs (a :class:`CostModel`
    of the options the stages use, summed per stage).

    ``action_overhead_s``: the runtime's fixed cost per compute action (posting sends and
    receives, bookkeeping), added to every F, B, I and W. ``optimizer_s_per_param``: time of
    the end-of-step gradient scaling and optimizer update per parameter (both measured by
    ``pipeplan calibrate``)."""
    n = len(bounds)
    dtypes = [dtype] * n if isinstance(dtype, str) else list(dtype)
    recompute = recompute or [False] * n
    if len(dtypes) != n or len(recompute) != n:
        raise UserError(f"a split of {n} stages needs {n} dtypes and {n} recompute flags")
    options = [Option(d, Recompute.FULL if rc else Recompute.NONE) for d, rc in zip(dtypes, recompute)]
    model = CostModel.build(
        profile,
        options,
        microbatch_size,
        optimizer_bytes_per_param=optimizer_bytes_per_param,
        optimizer_s_per_param=optimizer_s_per_param,
        action_overhead_s=action_overhead_s,
        forward_only=forward_only,
    )
    return model.stage_costs(bounds, options)
