"""``--check``: the same step in one process, a unit at a time, compared with the pipeline.

The reference never holds the whole model. Every rank runs it on its own (no communication):
the forward pass materialises each unit in turn (``profiles.materialize``: the same per-unit
seeds as the pipeline's ranks, so the same weights), keeps only the activations at unit
boundaries and frees the unit; the backward pass materialises the units again in reverse order,
recomputes each unit's forward from its saved input and back-propagates the output gradient.
Each unit runs as its stage runs it (precision, recompute). Each unit of this rank's own stages
is compared as soon as its gradients are complete, then freed. Host memory: this rank's stages,
one or two more units at a time, and one activation per unit boundary and microbatch.

Non-finite differences are reported as such (``max_rel_diff`` ``inf``/``nan`` here; the report
encodes them, ``RunReport.to_dict``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from planner.plan import Plan

from .build import StageModule
from .parallel import full_tensor, reference_layout
from .report import CheckResult

__all__ = ["CHECK_RTOL", "CHECK_RTOL_16BIT", "reference_step", "GradCheck", "check_outputs", "rtol_of"]

CHECK_RTOL = 1e-4  # fp32: pipelined and single-process runs do the same ops in the same order
#: 16-bit stages: the same ops, but 16-bit rounding makes the order of gradient accumulation
#: and the microbatch split visible; 2% of the largest gradient element is what bf16's 8-bit
#: mantissa (relative step 2^-8 = 0.4%) accumulates over a few microbatches.
CHECK_RTOL_16BIT = 2e-2

MakeUnit = Callable[[int, torch.device], nn.Module]


def rtol_of(plan: Plan) -> float:
    return CHECK_RTOL_16BIT if any(s.dtype != "fp32" for s in plan.stages) else CHECK_RTOL


def _unit_module(plan: Plan, make_unit: MakeUnit, index: int, device) -> nn.Module:
    """Unit ``index`` wrapped as its stage runs it; ``.units[0]`` names parameters as the stage does."""
    stage = next(s for s in plan.stages if s.first <= index < s.end)
    return StageModule([make_unit(index, device)], stage.dtype, stage.recompute)


def _forward(plan: Plan, make_unit: MakeUnit, inputs: list[torch.Tensor], device, upto: int) -> list[list]:
    """Inputs of units ``0..upto`` (each a list over microbatches), without gradients."""
    acts = [inputs]
    with torch.no_grad():
        for i in range(upto):
            mod = _unit_module(plan, make_unit, i, device)
            acts.append([mod(x) for x in acts[-1]])
            del mod
            _give_back_freed_memory()
    return acts


def reference_step(
    plan: Plan,
    make_unit: MakeUnit,
    loss_fn,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    device,
    visit: Callable[[int, nn.Module], None],
    keep: set[int],
    loss_scale: float = 1.0,
) -> list[float]:
    """One training step's gradients over ``batches`` (one per data-parallel replica, each cut into
    the plan's microbatches; the loss averaged over microbatches and replicas, as the pipeline
    optimizes). Each unit in ``keep``, once its gradients are complete (divided by ``loss_scale``),
    is passed to ``visit(index, unit)`` (wrapped as its stage runs it) and then freed. Returns each
    replica's mean loss."""
    m, n = plan.microbatches, plan.stages[-1].end
    pieces = [(x, y) for xs, ys in batches for x, y in zip(xs.to(device).chunk(m), ys.to(device).chunk(m))]
    acts = _forward(plan, make_unit, [x for x, _ in pieces], device, n - 1)
    scale = len(pieces)
    losses: list[torch.Tensor] = []
    grads: list[torch.Tensor | None] = [None] * len(pieces)
    for i in reversed(range(n)):
        mod = _unit_module(plan, make_unit, i, device)
        new_grads = []
        for j, x in enumerate(acts[i]):
            x = x.detach().requires_grad_(x.is_floating_point())
            out = mod(x)
            if i == n - 1:
                loss = loss_fn(out, pieces[j][1])
                (loss * loss_scale / scale).backward()
                losses.append(loss.detach())
            elif out.requires_grad and grads[j] is not None:
                out.backward(grads[j])
            new_grads.append(x.grad)
            del x, out  # the output's graph holds the unit's parameters
        grads, acts[i] = new_grads, None
        if i in keep:
            if loss_scale != 1.0:
                for p in mod.parameters():
                    if p.grad is not None:
                        p.grad /= loss_scale
            visit(i, mod)
        del mod
        _give_back_freed_memory()
    return torch.stack(losses).view(len(batches), m).mean(dim=1).tolist()


def _give_back_freed_memory() -> None:
    """Return a freed unit's pages to the system (glibc keeps them otherwise, and the next unit's
    tensors of other sizes do not always fit the holes), so host memory stays bounded by the
    units alive at once rather than by every unit the reference built. A no-op off glibc."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None


class GradCheck:
    """This rank's stage gradients against the reference's, a unit at a time (``visit``, given to
    ``reference_step``), then the verdict with the loss (``result``)."""

    def __init__(self, plan: Plan, mods: list[StageModule], my_stages: list[int], tied=()):
        self.rtol = rtol_of(plan)
        self.mine = {
            plan.stages[s].first + k: (s, k, unit)
            for mod, s in zip(mods, my_stages)
            for k, unit in enumerate(mod.units)
        }
        self.worst, self.where, self.compared, self.why = 0.0, "", 0, ""
        # tied parameters ({unit: name in it}): the one-process gradient is the sum over every
        # holder, so the reference visits all holders and the comparison waits for the last
        self.tied = {(u, name): g for g, paths in enumerate(tied) for u, name in paths.items()}
        self.tied_left = {g: set(paths) for g, paths in enumerate(tied)}
        self.tied_ref: dict[int, torch.Tensor] = {}
        self.tied_pipe: dict[int, tuple[str, torch.Tensor | None]] = {}

    def units_to_visit(self) -> set[int]:
        """This rank's units and every holder of a tied parameter."""
        return set(self.mine) | {u for u, _ in self.tied}

    def visit(self, index: int, ref: nn.Module) -> None:
        ref_params = dict(ref.units[0].named_parameters(remove_duplicate=False))
        for name, q in ref_params.items():
            g = self.tied.get((index, name))
            if g is None:
                continue
            if q.grad is not None:
                self.tied_ref[g] = q.grad.clone() if g not in self.tied_ref else self.tied_ref[g] + q.grad
            if index in self.mine:
                s, k, unit = self.mine[index]
                self.tied_pipe[g] = (
                    f"stage {s} units.{k}.{name}",
                    reference_layout(unit, name, unit.get_parameter(name).grad),
                )
            self.tied_left[g].discard(index)
            if not self.tied_left[g] and g in self.tied_pipe:
                label, grad = self.tied_pipe[g]
                self._compare(label, grad, self.tied_ref.get(g))
        if index not in self.mine:
            return
        s, k, unit = self.mine[index]
        for (name, p), (_, q) in zip(unit.named_parameters(), ref.units[0].named_parameters()):
            if (index, name) not in self.tied:
                self._compare(f"stage {s} units.{k}.{name}", reference_layout(unit, name, p.grad), q.grad)

    def _compare(self, name: str, got: torch.Tensor | None, want: torch.Tensor | None) -> None:
        if got is None or want is None:
            if (got is None) != (want is None) and not self.why.startswith("a gradient is missing"):
                self.worst, self.where, self.why = float("inf"), name, "a gradient is missing on one side"
            return
        denom = want.float().abs().max().clamp_min(1e-12)
        diff = ((full_tensor(got).float() - want.float()).abs().max() / denom).item()
        self.compared += 1
        if not math.isfinite(diff):
            if math.isfinite(self.worst):
                self.worst, self.where, self.why = diff, name, self.why or "a gradient is not finite"
        elif diff > self.worst:
            self.worst, self.where = diff, name

    def result(self, pipe_loss: float | None, ref_loss: float) -> CheckResult:
        """The verdict; ``pipe_loss`` (the last stage's) is compared too when given."""
        passed = self.compared > 0 and self.worst <= self.rtol
        why = self.why or ("no gradient compared" if not self.compared else "")
        loss = {}
        if pipe_loss is not None:
            loss_diff = abs(pipe_loss - ref_loss) / max(abs(ref_loss), 1e-12)
            loss = {"loss": pipe_loss, "loss_reference": ref_loss, "loss_rel_diff": loss_diff}
            if not loss_diff <= self.rtol:
                passed, why = False, f"loss {pipe_loss:.6g} vs {ref_loss:.6g} one-process"
        if not passed and not why:
            why = "gradients differ from the one-process run beyond the tolerance"
        return CheckResult(
            passed=passed,
            max_rel_diff=self.worst,
            where=self.where,
            rtol=self.rtol,
            tensors=self.compared,
            why=why,
            **loss,
        )


def check_outputs(plan: Plan, make_unit: MakeUnit, out, x: torch.Tensor, device) -> CheckResult:
    """Forward-only plans: the last stage's output vs one process running every unit in turn."""
    n = plan.stages[-1].end
    acts = _forward(plan, make_unit, [x], device, n)
    want = acts[-1][0]
    rtol = rtol_of(plan)
    where = "last stage output"
    if not torch.is_tensor(out) or out.shape != want.shape:
        why = f"output shape {getattr(out, 'shape', None)} vs {tuple(want.shape)}"
        return CheckResult(passed=False, max_rel_diff=float("inf"), where=where, rtol=rtol, why=why)
    diff = ((out.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-12)).item()
    why = "" if diff <= rtol else "outputs differ from the one-process forward"
    return CheckResult(passed=diff <= rtol, max_rel_diff=diff, where=where, rtol=rtol, tensors=1, why=why)
