"""What a trainer reads of a plan: tokens per second, model FLOP/s per device, MFU, memory per
device; and how a plan compares with a baseline, in words. The plan table, ``--explain`` and the
dashboard all read these, so they say the same thing.

FLOP convention (``FLOP_CONVENTION``): *model* FLOPs, as MFU is defined by Chowdhery et al. 2022
(PaLM, appendix B) and counted by Narayanan et al. 2021 (§5.1) and Korthikanti et al. 2022 (§6):
the work of one forward and one backward per sample, the backward twice the forward, recompute
not counted. Here that is 3 x the profile's forward FLOPs per step (1 x for a forward-only job),
which count the matrix products and attention's two ``s x s`` products in full (no causal
saving): for a dense transformer 6·N FLOPs per token plus attention's 12·l·h·s, the
``72·B·s·l·h²·(1 + s/6h + V/12lh)`` of Korthikanti et al. without their recompute term.
MFU divides by the peak dense FLOP/s of the plan's dtype on its device, known for analytic
profiles (their device spec); for a measured profile it is not known and not shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .plan import Plan

__all__ = ["FLOP_CONVENTION", "Figures", "figures", "versus", "versus_sentence", "oom_text", "gib", "duration"]

FLOP_CONVENTION = (
    "model FLOPs = 3 x forward FLOPs (6·N·tokens + attention; 1 x forward-only), recompute not "
    "counted (Narayanan et al. 2021; Korthikanti et al. 2022)"
)


@dataclass(frozen=True, kw_only=True)
class Figures:
    """One plan's predicted rates (per second of its predicted step)."""

    step_s: float  #: predicted step time
    tokens_per_s: float  #: tokens trained (or served) per second, all devices
    tokens_per_s_per_device: float  #: the same per device
    model_flops_per_step: float  #: model FLOPs of one step (``FLOP_CONVENTION``)
    tflops_per_device: float  #: model TFLOP/s per device
    peak_tflops: float | None  #: the device's peak dense TFLOP/s in the plan's dtype, when known
    mfu: float | None  #: model FLOPs utilization, 0..1, when the peak is known
    peak_bytes_per_device: int  #: the largest predicted peak memory of any device

    def to_dict(self) -> dict:
        """The Plan file's ``predicted`` additions (no nulls: an unknown MFU is left out)."""
        out = {
            "tokens_per_s": self.tokens_per_s,
            "tokens_per_s_per_device": self.tokens_per_s_per_device,
            "model_flops_per_step": self.model_flops_per_step,
            "model_tflops_per_device": self.tflops_per_device,
        }
        if self.mfu is not None:
            out["mfu"] = self.mfu
            out["peak_tflops_per_device"] = self.peak_tflops
        return out


def figures(plan: Plan) -> Figures:
    """``plan``'s rates from its prediction and its profile's per-unit forward FLOPs."""
    profile, pred, job = plan.profile, plan.predicted, plan.job
    mbs = plan.microbatch_size
    per_microbatch = sum(
        sum(u.forward_flops for u in profile.entry_at(s.dtype, mbs).units[s.first : s.end]) for s in plan.stages
    )
    passes = 1 if job.forward_only else 3
    flops = passes * per_microbatch * job.global_batch / mbs
    step = pred.step_s
    devices = plan.world_size
    tokens = job.global_batch * profile.seq_len / step if step > 0 else 0.0
    per_device = flops / step / devices if step > 0 else 0.0
    peak = _peak_flops(plan)
    return Figures(
        step_s=step,
        tokens_per_s=tokens,
        tokens_per_s_per_device=tokens / devices,
        model_flops_per_step=flops,
        tflops_per_device=per_device / 1e12,
        peak_tflops=peak / 1e12 if peak else None,
        mfu=per_device / peak if peak else None,
        peak_bytes_per_device=max(pred.peak_bytes),
    )


def _peak_flops(plan: Plan) -> float | None:
    """Peak dense FLOP/s per device in the dtype that carries most of the plan's FLOPs, from the
    analytic profile's device spec (None for a measured profile)."""
    spec = plan.profile.measurement.get("device_spec") if plan.profile.method == "analytic" else None
    table = spec.get("flops") if isinstance(spec, dict) else None
    if not isinstance(table, dict):
        return None
    work: dict[str, float] = {}
    for s in plan.stages:
        units = plan.profile.entry_at(s.dtype, plan.microbatch_size).units[s.first : s.end]
        work[s.dtype] = work.get(s.dtype, 0.0) + sum(u.forward_flops for u in units)
    peak = table.get(max(work, key=work.__getitem__))
    return float(peak) if isinstance(peak, (int, float)) and peak > 0 else None


def gib(b: float) -> str:
    """A size in GiB as a trainer reads it: 214 GiB, 9.5 GiB, 0.27 GiB."""
    g = b / 2**30
    return f"{g:.0f} GiB" if g >= 10 else f"{g:.1f} GiB" if g >= 1 else f"{g:.2f} GiB"


def oom_text(peak_bytes: float) -> str:
    """``OOM (214 GiB)``: a configuration that does not fit, and the memory per device it needs."""
    return f"OOM ({gib(peak_bytes)})"


def versus(baseline: dict) -> str:
    """How the plan compares with ``baseline`` (a row of ``Plan.baselines``): ``1.30× faster than``,
    ``0.76× (slower)``, or ``OOM (214 GiB)`` when the baseline does not fit."""
    if not baseline.get("fits_memory", True):
        return oom_text(baseline.get("peak_bytes", 0))
    x = baseline["speedup"]
    if x >= 1.005:
        return f"{x:.2f}× faster than"
    if x > 0.995:  # equal at the two decimals shown
        return f"{x:.2f}× (as fast)"
    return f"{x:.2f}× (slower)"


def versus_sentence(baseline: dict, plan: str = "this plan") -> str:
    """``versus`` as a clause: ``this plan is 1.30× faster than it``, ``this plan is 0.76× (slower)``,
    ``it does not fit: OOM (214 GiB)``."""
    text = versus(baseline)
    if not baseline.get("fits_memory", True):
        return f"it does not fit: {text}"
    return f"{plan} is {text} it" if text.endswith("than") else f"{plan} is {text}"


def duration(s: float) -> str:
    """A step time as a trainer reads it: ``88.97 s``, ``125.30 ms``."""
    return f"{s:.2f} s" if s >= 1 else f"{s * 1e3:.2f} ms"
