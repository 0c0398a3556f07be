"""Hand splits people use, so every plan can say what it gains over them.

- ``even``: units dealt as evenly as possible (the extra ones to the first stages).
- ``torchtitan``: torchtitan's default pipeline split, ``_generate_llm_fqn_per_model_part``
  (``torchtitan/distributed/pipeline_parallel.py``): the embedding and the output modules
  count as ``input_weight``/``output_weight`` layers (``pipeline_parallel_first_stage_less_layers``
  and ``..._last_stage_less_layers``, both 1 by default), the effective layers are dealt
  evenly with the remainder to the first stages, and the first and last stages then hold
  that many blocks less. For llama3-8b on 8 stages: E+4 | 5 | 4 | 4 | 4 | 4 | 4 | 3+L.
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


def torchtitan_split(profile: Profile, p: int, input_weight: int = 1, output_weight: int = 1) -> list[tuple[int, int]]:
    """torchtitan's rule for ``p`` stages. Blocks are the units of kind ``block``; the units before
    the first block go with stage 0 and those after the last block with stage ``p - 1``.

    With ``L`` blocks, ``E = L + input_weight + output_weight`` effective layers are dealt as
    ``E // p`` per stage, one more to each of the first ``E % p`` stages; stage 0 then takes
    ``input_weight`` blocks fewer and the last stage ``output_weight`` fewer. torchtitan refuses
    ``p > E``, ``E // p == 0`` and a weight above ``E // p``; so does this (as a UserError)."""
    kinds = [u.kind for u in profile.entry(profile.entries[0].dtype).units]
    blocks = [i for i, k in enumerate(kinds) if k == "block"]
    if not blocks or blocks != list(range(blocks[0], blocks[-1] + 1)):
        raise UserError("torchtitan's split needs the model's blocks (units of kind 'block') in one run")
    if p == 1:
        return [(0, len(kinds))]
    num_layers = len(blocks)
    effective = num_layers + input_weight + output_weight
    per_stage, extra = divmod(effective, p)
    if p > effective or per_stage == 0:
        raise UserError(f"torchtitan's split: {p} stages but {effective} effective layers: lower --pp")
    if input_weight > per_stage or output_weight > per_stage:
        raise UserError(f"torchtitan's split: a weight above the {per_stage} layers per stage: lower --pp")
    counts = [per_stage + (1 if s < extra else 0) for s in range(p)]
    counts[0] -= input_weight
    counts[-1] -= output_weight
    ends, used = [], 0
    for c in counts[:-1]:
        used = min(used + c, num_layers)
        ends.append(blocks[0] + used)
    edges = [0, *ends, len(kinds)]
    bounds = list(zip(edges[:-1], edges[1:]))
    if any(end <= first for first, end in bounds):
        raise UserError(f"torchtitan's split leaves a stage empty with {p} stages: lower --pp")
    return bounds


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
