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

__all__ = ["even_split", "torchtitan_split", "parameter_split", "BASELINES"]


def even_split(num_units: int, p: int) -> list[tuple[int, int]]:
    """Units dealt as evenly as possible, the extra ones to the first stages."""
    if p > num_units:
        raise UserError(f"cannot cut {num_units} units into {p} stages: lower --pp")
    q, r = divmod(num_units, p)
    bounds, first = [], 0
    for s in range(p):
        end = first + q + (1 if s < r else 0)
        bounds.append((first, end))
        first = end
    return bounds


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
    params = [u.params for u in profile.entry(profile.entries[0].dtype).units]
    U = len(params)
    if p > U:
        raise UserError(f"cannot cut {U} units into {p} stages: lower --pp")

    def parts_needed(cap: int) -> int:
        n, acc = 1, 0
        for x in params:
            if acc + x > cap:
                n, acc = n + 1, 0
            acc += x
        return n

    lo, hi = max(params), sum(params)
    while lo < hi:
        mid = (lo + hi) // 2
        if parts_needed(mid) <= p:
            hi = mid
        else:
            lo = mid + 1
    ends, acc = [], 0
    for u, x in enumerate(params):
        left_units, left_stages = U - u, p - len(ends)
        if u > 0 and (acc + x > lo or left_units < left_stages) and len(ends) < p - 1:
            ends.append(u)
            acc = 0
        acc += x
    while len(ends) < p - 1:  # fewer parts than stages: split the last ones off one unit each
        ends.append(max(ends[-1] if ends else 0, U - (p - 1 - len(ends))))
    ends = sorted(set(ends))
    edges = [0, *ends, U]
    return list(zip(edges[:-1], edges[1:]))


#: name -> function (profile, p) -> bounds
BASELINES = {
    "even": lambda profile, p: even_split(profile.num_units, p),
    "torchtitan": torchtitan_split,
    "deepspeed-parameters": parameter_split,
}
