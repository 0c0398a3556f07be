"""Hand splits people use, so every plan can say what it gains over them.

- ``even``: units dealt as evenly as possible (the extra ones to the first stages).
- ``torchtitan``: torchtitan's pipeline split gives the first and last stages fewer
  transformer blocks, counting the embedding and the output head as
  ``input_weight``/``output_weight`` layers of their own (torchtitan
  ``distributed/pipeline_parallel.py``, ``generate_llm_fqn_per_model_part``; both
  weights default to 1 there). Written here from that description. When the embedding
  and head are units of their own, as in our zoo, and the weights are 1, it coincides
  with ``even``; heavier weights move blocks off the end stages.
- ``deepspeed-parameters``: DeepSpeed ``PipelineModule(partition_method="parameters")``
  balances trainable parameter counts across stages (``ds_utils.partition_balanced``:
  the contiguous split minimising the largest part). Written here as a binary search on
  the largest part with a greedy check.
"""

from __future__ import annotations

from profiles.contract import UserError
from profiles.types import Profile
from simulator.costs import Option

from .plan import Plan
from .scoring import build_plan, fits
from .splits import even_split, min_max_split

__all__ = ["even_split", "torchtitan_split", "parameter_split", "BASELINES", "compare"]


def _is_block(kind: str, name: str) -> bool:
    return not (kind.startswith(("embed", "head")) or name.startswith(("embed", "head")))


def torchtitan_split(
    profile: Profile, p: int, input_weight: float = 1.0, output_weight: float = 1.0
) -> list[tuple[int, int]]:
    """Layer-equivalents dealt evenly: non-block units at the ends weigh ``input/output_weight`` blocks."""
    units = profile.entry(profile.entries[0].dtype).units
    U = len(units)
    if p > U:
        raise UserError(f"cannot cut {U} units into {p} stages: lower --pp")
    weights = []
    for i, u in enumerate(units):
        if _is_block(u.kind, u.name):
            weights.append(1.0)
        else:
            weights.append(input_weight if i < U / 2 else output_weight)
    return _cut_by_target(weights, p)


def _cut_by_target(weights: list[float], p: int) -> list[tuple[int, int]]:
    """Cut where the running total first reaches s * total / p (each stage non-empty)."""
    U, total = len(weights), sum(weights)
    ends, acc, u = [], 0.0, 0
    for s in range(1, p):
        target = total * s / p
        while u < U - (p - s) and (acc + weights[u] <= target + 1e-9 or u < (ends[-1] if ends else 0) + 1):
            acc += weights[u]
            u += 1
        ends.append(u)
    ends.append(U)
    return list(zip([0] + ends[:-1], ends))


def parameter_split(profile: Profile, p: int) -> list[tuple[int, int]]:
    """Balance parameter counts: the contiguous split with the smallest largest part."""
    return min_max_split([u.params for u in profile.entry(profile.entries[0].dtype).units], p)


#: name -> function (profile, p) -> bounds
BASELINES = {
    "even": lambda profile, p: even_split(profile.num_units, p),
    "torchtitan": torchtitan_split,
    "deepspeed-parameters": parameter_split,
}


def compare(p: Plan) -> tuple[dict, ...]:
    """The hand splits (1F1B, one stage per rank, same pp, dp, microbatching and the plan's first
    dtype), simulated beside ``p``."""
    out = []
    for name, split_fn in BASELINES.items():
        try:
            bounds = split_fn(p.profile, p.pp)
            b = build_plan(
                p.profile,
                p.profile_path,
                p.cluster,
                p.job,
                bounds,
                "1F1B",
                p.pp,
                p.dp,
                p.microbatches,
                p.microbatch_size,
                [Option(p.stages[0].dtype)] * p.pp,
            )
        except UserError:
            continue
        out.append(
            {
                "name": f"{name}-1F1B",
                "split": b.split,
                "step_s": b.predicted.step_s,
                "speedup": b.predicted.step_s / p.predicted.step_s,
                "fits_memory": fits(b),
                "peak_bytes": max(b.predicted.peak_bytes),
            }
        )
    return tuple(out)
