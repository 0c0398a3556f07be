"""The cost model as explicit data: one record per stage, built from a Profile and a split.

Assumptions:
- a stage's time is the sum of its units' times (no fusion across units);
- static memory per parameter: weights and gradients in the stage's dtype, plus
  optimizer state (``optimizer_bytes_per_param``, 8 for AdamW's two fp32 moments) and an
  fp32 master copy when the dtype is 16-bit: about 16 bytes per parameter either way;
- full recompute of a stage keeps only each unit's input and adds one forward to the backward;
- after I, a zero-bubble stage keeps ``w_keep_fraction`` of its activations until W;
- the first stage has no input gradient to compute (its inputs are data): its I is empty
  and its W runs the whole backward, keeping all activations until then (as
  ``torch.distributed.pipelining`` runs it: ``stage_backward_input`` is skipped on stage 0).
"""

from __future__ import annotations

from dataclasses import dataclass

from profiles.contract import UserError
from profiles.types import Profile

__all__ = ["StageCost", "Links", "stage_costs", "DTYPE_BYTES"]

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


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
    w_keep_fraction: float = 0.5  # share of activation_bytes kept from I until W
    optimizer_s: float = 0.0  # once per step, after the last backward: gradient scaling + optimizer step
    # DualPipe's F&B: duration of an Overlap pair whose backward is this stage's (its forward is
    # the other stage on the rank). None: not measured, forward_s of that stage + backward_s, as
    # torch's runtime runs an OVERLAP_F_B without a custom overlapped function (one after the other).
    overlap_f_b_s: float | None = None


@dataclass(frozen=True)
class Links:
    """Point-to-point transfers: time = latency + bytes / bandwidth.

    Ranks ``r`` and ``q`` share a node when ``r // devices_per_node == q // devices_per_node``.
    ``overlap``: whether a send runs beside compute (True: asynchronous, as with a
    separate communication stream) or keeps the sending rank busy (False).
    Transfers on one link do not contend with each other (an assumption).
    """

    latency_s: float = 0.0
    bandwidth_Bps: float = float("inf")
    inter_latency_s: float = 0.0
    inter_bandwidth_Bps: float = float("inf")
    devices_per_node: int = 1 << 30
    overlap: bool = True

    def transfer_s(self, src: int, dst: int, nbytes: int) -> float:
        if src == dst:
            return 0.0
        same = src // self.devices_per_node == dst // self.devices_per_node
        lat, bw = (self.latency_s, self.bandwidth_Bps) if same else (self.inter_latency_s, self.inter_bandwidth_Bps)
        return lat + nbytes / bw


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
) -> list[StageCost]:
    """Map a Profile plus a split ``[(first, end), ...]`` (units ``first..end-1``) to stage costs.

    ``action_overhead_s``: the runtime's fixed cost per compute action (posting sends and
    receives, bookkeeping), added to every F, B, I and W. ``optimizer_s_per_param``: time of
    the end-of-step gradient scaling and optimizer update per parameter (both measured by
    ``pipeplan calibrate``)."""
    n = len(bounds)
    dtypes = [dtype] * n if isinstance(dtype, str) else list(dtype)
    recompute = recompute or [False] * n
    if len(dtypes) != n or len(recompute) != n:
        raise UserError(f"a split of {n} stages needs {n} dtypes and {n} recompute flags")
    expect = 0
    for first, end in bounds:
        if first != expect or end <= first:
            raise UserError(f"split {bounds} is not a run of contiguous non-empty unit ranges from 0")
        expect = end
    if expect != profile.num_units:
        raise UserError(f"split {bounds} covers {expect} units but the profile has {profile.num_units}")
    out = []
    for s, ((first, end), dt) in enumerate(zip(bounds, dtypes)):
        units = profile.entry(dt, microbatch_size).units[first:end]
        params = sum(u.params for u in units)
        wbytes = params * DTYPE_BYTES[dt]
        master = params * 4 if DTYPE_BYTES[dt] < 4 else 0
        static = 2 * wbytes + master + int(params * optimizer_bytes_per_param)
        fwd = sum(u.forward_s for u in units)
        prev_out = profile.entry(dt, microbatch_size).units[first - 1].output_bytes if first > 0 else 0
        if recompute[s]:
            # keep each unit's input only: the stage input and every inner boundary
            act = prev_out + sum(u.output_bytes for u in units[:-1])
            extra = fwd
        else:
            act = sum(u.saved_bytes for u in units)
            extra = 0.0
        oh = action_overhead_s
        full = sum(u.backward_s for u in units) + extra
        first_stage = s == 0  # I: nothing; W: the full backward (see the assumptions)
        out.append(
            StageCost(
                forward_s=fwd + oh,
                backward_s=full + oh,
                backward_input_s=(0.0 if first_stage else sum(u.backward_input_s for u in units) + extra) + oh,
                backward_weight_s=(full if first_stage else sum(u.backward_weight_s for u in units)) + oh,
                activation_bytes=int(act),
                static_bytes=int(static),
                output_bytes=units[-1].output_bytes if s < n - 1 else 0,
                input_bytes=prev_out,
                param_bytes=int(wbytes),
                optimizer_s=params * optimizer_s_per_param,
                **({"w_keep_fraction": 1.0} if first_stage else {}),
            )
        )
    return out
