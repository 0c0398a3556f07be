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
- static memory per parameter: weights and gradients in the stage's dtype, plus optimizer
  state (``optimizer_bytes_per_param``, 8 for AdamW's two fp32 moments) and an fp32 master
  copy when the dtype is 16-bit: about 16 bytes per parameter either way; a forward-only
  (serving) job keeps the weights alone;
- full recompute of a unit keeps only its input and adds one forward to its backward;
- after I, a zero-bubble stage keeps half of each unit's activations (rounded down to whole
  bytes) until W;
- the first stage has no input gradient to compute (its inputs are data): its I is empty
  and its W runs the whole backward, keeping all activations until then (as
  ``torch.distributed.pipelining`` runs it: ``stage_backward_input`` is skipped on stage 0);
- a transfer between pipeline ranks costs ``latency + bytes / bandwidth`` on the link the
  rank layout implies (:class:`Links`); the gradient all-reduce across data-parallel
  replicas is a ring over the slowest link (:func:`allreduce_s`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

from profiles.contract import UserError
from profiles.types import DTYPE_TABLE, Profile

__all__ = [
    "Recompute",
    "Option",
    "UnitRecord",
    "StageCost",
    "Links",
    "CostModel",
    "unit_records",
    "stage_costs",
    "allreduce_s",
    "allreduce_affine",
    "check_bounds",
]


class Recompute(str, Enum):
    """Activation recomputation of a stage: keep everything, or keep each unit's input only."""

    NONE = "none"
    FULL = "full"


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
    grad_bytes: int  # gradient bytes all-reduced across data-parallel replicas
    params: int
    optimizer_s: float  # end-of-step gradient scaling + optimizer update

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
    param_bytes: int = 0  # gradient bytes all-reduced across data-parallel replicas
    keep_bytes: int | None = None  # of activation_bytes, held from I until W (None: half, rounded down)
    optimizer_s: float = 0.0  # once per step, after the last backward: gradient scaling + optimizer step
    # DualPipe's F&B: duration of an Overlap pair whose backward is this stage's (its forward is
    # the other stage on the rank). None: not measured, forward_s of that stage + backward_s, as
    # torch's runtime runs an OVERLAP_F_B without a custom overlapped function (one after the other).
    overlap_f_b_s: float | None = None

    def __post_init__(self) -> None:
        if self.keep_bytes is None:
            object.__setattr__(self, "keep_bytes", self.activation_bytes // 2)


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

    def transfer_s(self, src: int, dst: int, nbytes: int) -> float:
        if src == dst:
            return 0.0
        n = self.devices_per_node
        same = (src * self.stride) // n == (dst * self.stride) // n
        lat, bw = (self.latency_s, self.bandwidth_Bps) if same else (self.inter_latency_s, self.inter_bandwidth_Bps)
        return lat + nbytes / bw


def allreduce_affine(dp: int, links: Links) -> tuple[float, float]:
    """Ring all-reduce over ``dp`` replicas on the slowest link, as ``(seconds, seconds per byte)``:
    2(d-1) steps, each one latency plus nbytes/d over the bandwidth."""
    if dp <= 1:
        return 0.0, 0.0
    bw = min(links.bandwidth_Bps, links.inter_bandwidth_Bps)
    lat = max(links.latency_s, links.inter_latency_s)
    return 2 * (dp - 1) * lat, 2 * (dp - 1) / dp / bw


def allreduce_s(nbytes: int, dp: int, links: Links) -> float:
    """Ring all-reduce of ``nbytes`` (:func:`allreduce_affine`; nothing to send, no time)."""
    if nbytes == 0:
        return 0.0
    const, per_byte = allreduce_affine(dp, links)
    return const + per_byte * nbytes


def unit_records(
    profile: Profile,
    option: Option,
    microbatch_size: int | None = None,
    *,
    optimizer_bytes_per_param: float = 8.0,
    optimizer_s_per_param: float = 0.0,
    forward_only: bool = False,
) -> tuple[UnitRecord, ...]:
    """One record per unit of ``profile`` under ``option`` (see the module's assumptions)."""
    dtype = DTYPE_TABLE.get(option.dtype)
    if dtype is None:
        raise UserError(f"dtype {option.dtype!r}: choose one of {', '.join(DTYPE_TABLE)}")
    units = profile.entry(option.dtype, microbatch_size).units
    full = option.recompute is Recompute.FULL
    out = []
    for i, u in enumerate(units):
        weights = u.params * dtype.bytes
        master = u.params * 4 if dtype.sixteen_bit else 0
        static = weights if forward_only else 2 * weights + master + int(u.params * optimizer_bytes_per_param)
        unit_input = units[i - 1].output_bytes if i > 0 else 0
        act = unit_input if full else u.saved_bytes
        extra = u.forward_s if full else 0.0
        out.append(
            UnitRecord(
                forward_s=u.forward_s,
                backward_s=u.backward_s + extra,
                input_s=u.backward_input_s + extra,
                weight_s=u.backward_weight_s,
                static_bytes=int(static),
                activation_bytes=int(act),
                keep_bytes=int(act) // 2,
                output_bytes=u.output_bytes,
                input_bytes=unit_input,
                grad_bytes=weights,
                params=u.params,
                optimizer_s=u.params * optimizer_s_per_param,
            )
        )
    return tuple(out)


@dataclass(frozen=True, kw_only=True)
class CostModel:
    """The records of every option a plan may use, with the per-stage constants.

    ``records[option][u]``: unit ``u`` under ``option``. ``record(option, u, stage)`` applies
    the first-stage rule, so a stage is the plain sum of ``record`` over its units plus
    ``action_overhead_s`` once per compute action (:meth:`stage_cost`).
    """

    records: dict[Option, tuple[UnitRecord, ...]]
    action_overhead_s: float = 0.0  # the runtime's fixed cost per compute action (calibrated)
    links: Links = field(default_factory=Links)  # between pipeline ranks
    dp: int = 1  # data-parallel replicas (the gradient all-reduce at the end of the step)
    forward_only: bool = False

    @staticmethod
    def build(
        profile: Profile,
        options: Sequence[Option],
        microbatch_size: int | None = None,
        *,
        optimizer_bytes_per_param: float = 8.0,
        optimizer_s_per_param: float = 0.0,
        action_overhead_s: float = 0.0,
        links: Links | None = None,
        dp: int = 1,
        forward_only: bool = False,
    ) -> CostModel:
        records = {
            o: unit_records(
                profile,
                o,
                microbatch_size,
                optimizer_bytes_per_param=optimizer_bytes_per_param,
                optimizer_s_per_param=optimizer_s_per_param,
                forward_only=forward_only,
            )
            for o in dict.fromkeys(options)
        }
        return CostModel(
            records=records,
            action_overhead_s=action_overhead_s,
            links=links or Links(),
            dp=dp,
            forward_only=forward_only,
        )

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

    def tail_s(self, grad_bytes: int, optimizer_s: float) -> float:
        """After a rank's last backward: its gradient all-reduce, then its optimizer step."""
        if self.forward_only:
            return 0.0
        return allreduce_s(grad_bytes, self.dp, self.links) + optimizer_s

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
