"""What people run instead, so every plan can say what it gains over them.

Hand splits at the plan's own layout (1F1B), each with the cheapest recompute that fits
(none, then selective, then full):

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

And the published recipes, each priced with its own options (``RECIPES``):

- ``torchtitan``: torchtitan's Llama 3 configuration for the model's size (``torchtitan_style``);
- ``megatron``: Megatron-LM/NeMo's recipe: TP 8 + SP, the distributed optimizer, 1F1B or
  interleaved 1F1B with Megatron's layer layout, selective then full recompute (``megatron_style``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, replace

from profiles.contract import UserError
from profiles.types import Profile
from simulator.costs import DPMode, Layout, Option, Recompute
from simulator.schedules import schedule_spec
from simulator.tensor_parallel import model_tp_degrees, recompute_modes

from .candidate import Candidate
from .plan import Plan
from .scoring import Context, build_plan, fits
from .splits import even_split, min_max_split

__all__ = [
    "even_split",
    "torchtitan_split",
    "megatron_split",
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


def megatron_split(profile: Profile, p: int) -> list[tuple[int, int]]:
    """Megatron-LM's default layer layout for ``p`` (virtual) stages: the transformer layers dealt
    evenly, the embedding added to the first stage and the output layer and loss to the last (no
    ``--account-for-embedding-in-pipeline-split``; ``megatron/core/transformer/transformer_block.py``,
    ``get_num_layers_to_build``). Megatron asks for layers divisible by the stages; where they are
    not, the extra ones go to the first stages, as ``--decoder-first-pipeline-num-layers`` would.
    A model without transformer blocks has its units dealt evenly."""
    kinds = {u.kind for u in profile.entry(profile.entries[0].dtype).units}
    if "block" not in kinds:
        return even_split(profile.num_units, p)
    return torchtitan_split(profile, p, input_weight=0, output_weight=0)


#: name -> function (profile, p) -> bounds
BASELINES = {
    "even": lambda profile, p: even_split(profile.num_units, p),
    "torchtitan": torchtitan_split,
    "deepspeed-parameters": parameter_split,
}


class Recipes:
    """The published recipes beside plans of one profile, cluster and job, each built once per
    microbatch size and dtype: all they take from the plan they stand beside."""

    def __init__(self) -> None:
        self._made: dict[tuple, dict[str, Plan | None]] = {}

    def beside(self, p: Plan) -> dict[str, Plan | None]:
        """``{"megatron": plan or None, "torchtitan": ...}`` for ``p``'s profile, cluster and job."""
        key = (p.microbatch_size, p.stages[0].dtype)
        if key not in self._made:
            self._made[key] = {name: recipe.make(p) for name, recipe in RECIPES.items()}
        return self._made[key]


def compare(p: Plan, recipes: Recipes | None = None) -> tuple[dict, ...]:
    """What a user would run instead, simulated beside ``p`` on the same devices, global batch and
    dtype: the hand splits at ``p``'s own layout (1F1B) with the cheapest recompute that fits (none
    when ``p`` has one stage: there is no split to compare), and the published recipes
    (``recipes``: the ones already built for plans of the same job)."""
    out = []
    modes = [Recompute(m) for m in recompute_modes(p.profile.model_config)]
    for name, split_fn in BASELINES.items() if p.pp > 1 else ():
        try:
            bounds = split_fn(p.profile, p.pp)
        except UserError:
            continue
        c = _beside(p, "1F1B", p.pp, p.layout)
        tries = [[_attempt(p, c, bounds, rc)] for rc in modes]
        b = _first_fitting(tries)
        if b is not None:
            out.append(_row(f"{name}-1F1B", b, p, f"{name} split, cheapest recompute that fits"))
    for name, b in (recipes or Recipes()).beside(p).items():
        if b is not None:
            out.append(_row(name, b, p, RECIPES[name].describe(p)))
    return tuple(out)


def _row(name: str, b: Plan, p: Plan, recipe: str) -> dict:
    """A baseline as the plan table shows it. ``speedup`` is always its step over the plan's;
    ``fits_memory`` says whether it could run at all (readers show OOM, not the speedup)."""
    return {
        "name": name,
        "recipe": recipe,
        "config": _describe(b),
        "layout": b.pipeline_layout(),
        "split": b.split,
        "step_s": b.predicted.step_s,
        "speedup": b.predicted.step_s / p.predicted.step_s,
        "fits_memory": fits(b),
        "peak_bytes": max(b.predicted.peak_bytes),
    }


def _describe(b: Plan) -> str:
    rc = sorted({s.recompute.value for s in b.stages})
    sp = "+sp" if b.sequence_parallel else ""
    return (
        f"{b.schedule} pp={b.pp} v={b.virtual} tp={b.tp}{sp} dp={b.dp} {b.dp_mode.value} m={b.microbatches} "
        f"recompute={','.join(rc)}"
    )


def _beside(p: Plan, schedule: str, pp: int, layout: Layout, v: int = 1) -> Candidate:
    """A configuration beside ``p``: at ``p``'s microbatch size, with the microbatches ``p``'s global
    batch makes on ``layout``'s replicas (checked when it is built)."""
    mbs = p.microbatch_size
    m = p.job.global_batch // (layout.dp * mbs)
    return Candidate(pp=pp, layout=layout, m=m, mbs=mbs, spec=schedule_spec(schedule), virtual=v)


def _attempt(p: Plan, c: Candidate, bounds, rc: Recompute) -> Callable[[], Plan]:
    """A deferred build of candidate ``c`` beside ``p`` (in ``p``'s dtype, every stage with ``rc``)."""
    return lambda: _build(p, c, bounds, rc)


def _build(p: Plan, c: Candidate, bounds, rc: Recompute) -> Plan:
    job = p.job
    if c.m < 1 or job.global_batch % (c.dp * c.mbs):
        raise UserError(f"global batch {job.global_batch} does not split into {c.dp} x {c.mbs}")
    ctx = Context(p.profile, p.profile_path, replace(p.cluster, devices=c.pp * c.dp * c.layout.tp), job)
    return build_plan(ctx, c, bounds, [Option(p.stages[0].dtype, rc)] * len(bounds))


def _tp_for(p: Plan, most: int) -> int:
    """The recipe's tensor-parallel degree ``most``, or the largest below it that the node, the
    devices and the model's heads allow."""
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
    """Pipeline degrees that divide the devices with ``per_pp`` devices per stage."""
    U = p.profile.num_units
    return [q for q in range(1, U + 1) if p.cluster.devices % (q * per_pp) == 0]


def _selective_then_full(p: Plan) -> list[Recompute]:
    """Recompute as Megatron and torchtitan users escalate it: selective, then full (none, then
    full, for a model without a transformer's shape)."""
    modes = recompute_modes(p.profile.model_config)
    return [Recompute.SELECTIVE, Recompute.FULL] if "selective" in modes else [Recompute.NONE, Recompute.FULL]


def _params(p: Plan) -> int:
    return sum(u.params for u in p.profile.entry(p.profile.entries[0].dtype).units)


# -- torchtitan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Titan:
    """One of torchtitan's published Llama 3 configurations."""

    source: str  #: where it is published
    up_to: float  #: used for models of at most this many parameters
    tp: int  #: tensor_parallel_degree
    pp: int  #: pipeline_parallel_degree
    schedule: str  #: pipeline_parallel_schedule (with pp > 1)
    _: KW_ONLY
    virtual: int  #: stages per rank: torchtitan's default, 2 for a multi-stage schedule
    ac: Recompute  #: activation_checkpoint.mode


#: torchtitan's Llama 3 recipes by model size (the boundaries: the geometric means of 8B, 70B
#: and 405B). Data parallelism is FSDP over every remaining device (data_parallel_shard_degree
#: -1). 8B and 70B: ``torchtitan/models/llama3/train_configs/llama3_8b.toml`` (FSDP, selective op
#: AC) and ``llama3_70b.toml`` (FSDP + TP 8, full AC). 405B: ``llama3_405b.toml`` (FSDP + TP 8, full
#: AC) run in 3D on 512 H100s in ``benchmarks/llama3_h100_202412_torchtitan.md`` (Table 5: FSDP 8,
#: TP 8, PP 8, Interleaved 1F1B the faster schedule), with torchtitan's 2 stages per rank for a
#: multi-stage schedule (``torchtitan/distributed/pipeline_parallel.py``) and its split rule.
_TITAN = (
    _Titan("torchtitan llama3_8b.toml", math.sqrt(8e9 * 70e9), 1, 1, "1F1B", virtual=1, ac=Recompute.SELECTIVE),
    _Titan("torchtitan llama3_70b.toml", math.sqrt(70e9 * 405e9), 8, 1, "1F1B", virtual=1, ac=Recompute.FULL),
    _Titan("torchtitan llama3_405b.toml, 3D", math.inf, 8, 8, "Interleaved1F1B", virtual=2, ac=Recompute.FULL),
)


def _titan_for(p: Plan) -> _Titan:
    params = _params(p)
    return next(t for t in _TITAN if params <= t.up_to)


def _titan_describe(p: Plan) -> str:
    t = _titan_for(p)
    pp = f" + PP {t.pp} ({t.schedule})" if t.pp > 1 else ""
    tp = f" + TP {t.tp}" if t.tp > 1 else ""
    return f"{t.source} (FSDP{tp}{pp}, {t.ac.value} AC)"


def torchtitan_style(p: Plan) -> Plan | None:
    """torchtitan's published configuration for the model's size (``_TITAN``): FSDP over the data
    replicas, its tp and pp degrees (the largest below them the cluster and heads allow), its AC
    mode (full where the model has no transformer shape) and its split rule. Where it does not
    fit, torchtitan's lever: more pipeline stages (1F1B, its default schedule, or the recipe's),
    then full AC."""
    t = _titan_for(p)
    tp = _tp_for(p, t.tp)
    modes = recompute_modes(p.profile.model_config)
    acs = [t.ac if t.ac.value in modes else Recompute.FULL]
    if acs[0] is not Recompute.FULL:
        acs.append(Recompute.FULL)
    degrees = _pipeline_degrees(p, tp)
    start = max([q for q in degrees if q <= t.pp], default=1)

    def attempt(pp: int, ac: Recompute):
        schedule, v = (t.schedule, t.virtual) if t.pp > 1 and pp > 1 else ("1F1B", 1)
        dp = p.cluster.devices // (pp * tp)
        layout = Layout(
            tp=tp,
            dp=dp,
            dp_mode=DPMode.FSDP if dp > 1 else DPMode.DDP,
            sequence_parallel=tp > 1,  # torchtitan's TP plan shards the norms' sequence (SequenceParallel)
            grads_fp32=True,  # its FSDP2 reduce dtype and autocast's fp32 weights: it has no other
        ).on_pipeline(pp)
        return lambda: _build(p, _beside(p, schedule, pp, layout, v), torchtitan_split(p.profile, pp * v), ac)

    return _first_fitting([[attempt(pp, ac)] for ac in acs for pp in degrees if pp >= start])


# -- Megatron-LM / NeMo ----------------------------------------------------------------------------


def _megatron_describe(p: Plan) -> str:
    return "Megatron-LM/NeMo (TP 8 + SP, distributed optimizer, selective then full recompute)"


def megatron_style(p: Plan) -> Plan | None:
    """Megatron-LM's recipe (Narayanan et al. 2021, §3.3's takeaways): tensor parallel 8 (or the
    largest degree the node and heads allow) inside the node with sequence parallelism, the
    distributed optimizer (zero1) across data-parallel replicas, the fewest pipeline stages that
    fit, 1F1B or interleaved 1F1B (the fastest) on Megatron's layer layout (``megatron_split``),
    and selective recompute (Korthikanti et al. 2022, Megatron's ``--recompute-activations``)
    before full recompute. NeMo's Llama 3 70B pretraining recipe
    (``nemo/collections/llm/recipes/llama3_70b.py``: TP 4 x CP 2 inside the node, PP 4, virtual
    PP 5, sequence parallel, the distributed optimizer) runs the same pieces; with no context
    parallelism here its TP 4 x CP 2 is TP 8. Interleaving tries 2 to 5 chunks per rank (NeMo's
    5) where they divide the layers evenly, as Megatron asks, else 2."""
    tp = _tp_for(p, 8)
    blocks = sum(u.kind == "block" for u in p.profile.entry(p.profile.entries[0].dtype).units)

    def attempt(pp: int, schedule: str, v: int, rc: Recompute):
        dp = p.cluster.devices // (pp * tp)
        layout = Layout(
            tp=tp,
            dp=dp,
            dp_mode=DPMode.ZERO1 if dp > 1 else DPMode.DDP,
            sequence_parallel=tp > 1,
            grads_fp32=p.layout.grads_fp32,  # Megatron-LM's default for bf16, --grad-reduce-in-bf16 otherwise
        )
        return lambda: _build(p, _beside(p, schedule, pp, layout, v), megatron_split(p.profile, pp * v), rc)

    def group(pp: int, rc: Recompute) -> list:
        if pp == 1:
            return [attempt(1, "1F1B", 1, rc)]
        chunks = [v for v in range(2, 6) if blocks and blocks % (pp * v) == 0] or [2]
        return [attempt(pp, "1F1B", 1, rc), *(attempt(pp, "Interleaved1F1B", v, rc) for v in chunks)]

    return _first_fitting([group(pp, rc) for rc in _selective_then_full(p) for pp in _pipeline_degrees(p, tp)])


@dataclass(frozen=True)
class Recipe:
    """A published recipe: how to build it beside a plan, and what it is, in words."""

    make: Callable[[Plan], Plan | None]  #: the recipe beside a plan (None when it cannot be built)
    describe: Callable[[Plan], str]  #: what it is and where it is published


#: name -> the recipe beside a plan (its ``make`` returns None when it cannot be built)
RECIPES = {
    "megatron": Recipe(megatron_style, _megatron_describe),
    "torchtitan": Recipe(torchtitan_style, _titan_describe),
}
