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

from dataclasses import replace

from profiles.contract import UserError
from profiles.types import Profile
from simulator.costs import DPMode, Layout, Option, Recompute
from simulator.tensor_parallel import model_tp_degrees

from .plan import Plan
from .scoring import build_plan, fits
from .splits import even_split, min_max_split

__all__ = [
    "even_split",
    "torchtitan_split",
    "parameter_split",
    "BASELINES",
    "compare",
    "megatron_style",
    "torchtitan_style",
]


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


class Recipes:
    """The Megatron-style and torchtitan-style plans beside plans of one profile, cluster and job,
    each built once per microbatch size and dtype: all they take from the plan they stand beside."""

    def __init__(self) -> None:
        self._made: dict[tuple, dict[str, Plan | None]] = {}

    def beside(self, p: Plan) -> dict[str, Plan | None]:
        """``{"megatron": plan or None, "torchtitan-fsdp": ...}`` for ``p``'s profile, cluster and job."""
        key = (p.microbatch_size, p.stages[0].dtype)
        if key not in self._made:
            self._made[key] = {name: make(p) for name, make in RECIPES.items()}
        return self._made[key]


def compare(p: Plan, recipes: Recipes | None = None) -> tuple[dict, ...]:
    """What a user would run instead, simulated beside ``p`` on the same devices, global batch and
    dtype: the hand splits at ``p``'s own layout (1F1B), and the Megatron-style and
    torchtitan-style configurations, each made to fit memory the way their users would
    (``recipes``: the ones already built for plans of the same job)."""
    out = []
    for name, split_fn in BASELINES.items():
        try:
            bounds = split_fn(p.profile, p.pp)
            b = _build(p, bounds, "1F1B", p.pp, 1, p.parallelism, p.microbatch_size, Recompute.NONE)
        except UserError:
            continue
        out.append(_row(f"{name}-1F1B", b, p))
    for name, b in (recipes or Recipes()).beside(p).items():
        if b is not None:
            out.append(_row(name, b, p))
    return tuple(out)


def _row(name: str, b: Plan, p: Plan) -> dict:
    """A baseline as the plan table shows it. ``speedup`` is always its step over the plan's;
    ``fits_memory`` says whether it could run at all (readers show OOM, not the speedup)."""
    ok = fits(b)
    return {
        "name": name,
        "config": _describe(b),
        "split": b.split,
        "step_s": b.predicted.step_s,
        "speedup": b.predicted.step_s / p.predicted.step_s,
        "fits_memory": ok,
        "peak_bytes": max(b.predicted.peak_bytes),
    }


def _describe(b: Plan) -> str:
    rc = sorted({s.recompute.value for s in b.stages})
    sp = "+sp" if b.sequence_parallel else ""
    return (
        f"{b.schedule} pp={b.pp} v={b.virtual} tp={b.tp}{sp} dp={b.dp} {b.dp_mode.value} m={b.microbatches} "
        f"recompute={','.join(rc)}"
    )


def _build(p: Plan, bounds, schedule: str, pp: int, v: int, layout: Layout, mbs: int, rc: Recompute) -> Plan:
    m = p.job.global_batch // (layout.dp * mbs)
    if m < 1 or p.job.global_batch % (layout.dp * mbs):
        raise UserError(f"global batch {p.job.global_batch} does not split into {layout.dp} x {mbs}")
    return build_plan(
        p.profile,
        p.profile_path,
        replace(p.cluster, devices=pp * layout.dp * layout.tp),
        p.job,
        bounds,
        schedule,
        pp,
        layout.dp,
        m,
        mbs,
        [Option(p.stages[0].dtype, rc)] * len(bounds),
        v,
        layout=layout,
    )


def _tp_for(p: Plan, most: int) -> int:
    within = min(most, p.cluster.devices_per_node, p.cluster.devices)
    return max(t for t in model_tp_degrees(p.profile.model_config, within) if p.cluster.devices % t == 0)


def _first_fitting(tries) -> Plan | None:
    """The fastest plan of the first group of tries that has one fitting memory; else the one tried
    that needs the least memory (shown as OOM); None when nothing could be built."""
    last = None
    for group in tries:
        built = []
        for make in group:
            try:
                built.append(make())
            except (UserError, ValueError):
                continue
        fitting = [b for b in built if fits(b)]
        if fitting:
            return min(fitting, key=lambda b: b.predicted.step_s)
        least = min(built, key=lambda b: max(b.predicted.peak_bytes), default=None)
        if least is not None and (last is None or max(least.predicted.peak_bytes) < max(last.predicted.peak_bytes)):
            last = least
    return last


def _pipeline_degrees(p: Plan, per_pp: int) -> list[int]:
    U = p.profile.num_units
    return [q for q in range(1, U + 1) if p.cluster.devices % (q * per_pp) == 0]


def megatron_style(p: Plan) -> Plan | None:
    """Megatron-LM's usual recipe (Narayanan et al. 2021, §3.3's takeaways): tensor parallel 8 (or
    the largest degree the node and heads allow) inside the node with sequence parallelism, the
    fewest pipeline stages that fit, layers dealt evenly, interleaved 1F1B (2 chunks) when it is
    faster, the distributed optimizer (zero1) across data-parallel replicas, full recompute only
    when nothing fits without it."""
    tp = _tp_for(p, 8)
    mbs = p.microbatch_size

    def attempt(pp: int, schedule: str, v: int, rc: Recompute):
        dp = p.cluster.devices // (pp * tp)
        layout = Layout(tp=tp, dp=dp, dp_mode=DPMode.ZERO1 if dp > 1 else DPMode.DDP, sequence_parallel=tp > 1)
        return lambda: _build(p, even_split(p.profile.num_units, pp * v), schedule, pp, v, layout, mbs, rc)

    tries = [
        [attempt(pp, "1F1B", 1, rc), attempt(pp, "Interleaved1F1B", 2, rc)] if pp > 1 else [attempt(pp, "1F1B", 1, rc)]
        for rc in (Recompute.NONE, Recompute.FULL)
        for pp in _pipeline_degrees(p, tp)
    ]
    return _first_fitting(tries)


def torchtitan_style(p: Plan) -> Plan | None:
    """torchtitan's 2D recipe: FSDP across data-parallel replicas with pipeline 1F1B, tp 1, its
    own split rule (``torchtitan_split``) and selective activation checkpointing (full when the
    model has no transformer shape), the fewest stages that fit."""
    config = p.profile.model_config
    rc = Recompute.SELECTIVE if config.get("num_attention_heads", config.get("n_head")) else Recompute.FULL

    def attempt(pp: int):
        dp = p.cluster.devices // pp
        layout = Layout(tp=1, dp=dp, dp_mode=DPMode.FSDP if dp > 1 else DPMode.DDP, reshard_after_forward=pp == 1)
        return lambda: _build(p, torchtitan_split(p.profile, pp), "1F1B", pp, 1, layout, p.microbatch_size, rc)

    return _first_fitting([[attempt(pp)] for pp in _pipeline_degrees(p, 1)])


#: name -> the recipe's plan beside a plan (None when it cannot be built)
RECIPES = {"megatron": megatron_style, "torchtitan-fsdp": torchtitan_style}
