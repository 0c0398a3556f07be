"""Hugging Face models cut into tensor-to-tensor units.

Each model is built from its config with random weights (nothing is downloaded), in eval
mode and with dropout off, with attention through PyTorch SDPA (or FlashAttention-2 when
asked for and installed; eager where the model supports neither). Units:

- **any causal LM whose config declares a ``base_model_pp_plan``** (Llama, Mistral, Qwen,
  Gemma, Phi-3, GPT-NeoX, OLMo, Mixtral, DeepSeek-V3, ...): ``embed`` (the plan's entries
  before its layer list), ``block{i}`` (each layer), ``head`` (the plan's entries after the
  layers, i.e. the final norm, then the causal LM's own head and logit processing). What the
  base model computes once and passes every layer (rotary position embeddings, the causal or
  sliding-window mask, position ids) is computed inside each unit by the base model's own
  forward, run with stand-ins for its layers (``BaseModelPrefix``), so no family is
  re-implemented here. Positions are ``0..s-1``: no padding, no cache;
- GPT-2 (its config declares no pp plan): ``embed`` (token + position embedding),
  ``block{i}``, ``head`` (final norm + LM head);
- BERT (an encoder): ``embed`` (word + position + token-type embedding and LayerNorm),
  ``layer{i}`` (bidirectional attention, no padding mask), ``head`` (the masked-LM head).

Tied input and output embeddings stay tied: the embedding and head units hold the same
parameter. Run in order, the units give the same logits as the Hugging Face model itself
(``tests/test_profiles_zoo.py`` checks it).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["BUILDERS", "build", "config_fields", "decoder_types", "full_config", "lm_loss", "moe_of", "token_batch"]


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-level cross entropy (computed in fp32)."""
    return nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())


def token_batch(vocab: int) -> Callable[[int, int, int], tuple[torch.Tensor, torch.Tensor]]:
    """Random token ids and the next token as the target (for BERT: every position is scored)."""

    def make(batch_size: int, seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, vocab, (batch_size, seq_len + 1), generator=g)
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    return make


# -- units -------------------------------------------------------------------------------


class GPT2Embedding(nn.Module):
    def __init__(self, wte: nn.Embedding, wpe: nn.Embedding):
        super().__init__()
        self.wte, self.wpe = wte, wpe

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[-1], device=input_ids.device)
        return self.wte(input_ids) + self.wpe(pos)


class HFBlock(nn.Module):
    """A Hugging Face block as a tensor-to-tensor unit (no mask, no cache)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.block(h)
        return out[0] if isinstance(out, tuple) else out


class LMHead(nn.Module):
    def __init__(self, norm: nn.Module, lm_head: nn.Linear):
        super().__init__()
        self.norm, self.lm_head = norm, lm_head

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(h))


class BertEmbeddingUnit(nn.Module):
    def __init__(self, embeddings: nn.Module):
        super().__init__()
        self.embeddings = embeddings

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embeddings(input_ids=input_ids)


# -- any decoder with a pp plan ------------------------------------------------------------


class _Reached(Exception):  # noqa: N818 - control flow, not an error
    """Raised by a stand-in layer: what the base model passed decoder layer ``index``."""

    def __init__(self, args: tuple, kwargs: dict):
        super().__init__()
        self.call_args, self.call_kwargs = args, kwargs


class _StandIn(nn.Module):
    """Takes the place of decoder layer ``index`` in a base-model prefix: hands the hidden states
    on unchanged until the layer asked for, then stops the base model's forward there."""

    def __init__(self, index: int, target: list[int]):
        super().__init__()
        self.index, self._target = index, target  # _target: a one-element list shared by the prefix

    def forward(self, *args, **kwargs):
        if self.index == self._target[0]:
            raise _Reached(args, kwargs)
        return args[0] if args else kwargs["hidden_states"]


class BaseModelPrefix(nn.Module):
    """The base model's own forward up to decoder layer ``i``, with the layers replaced by stand-ins.

    Calling it returns the positional and keyword arguments the base model passes layer ``i``
    (hidden states, rotary position embeddings, the causal or sliding-window mask, position ids,
    ...), computed by the model's own code, so nothing per family is re-implemented here. It
    holds the base model's parameter-free modules (the rotary embedding, dropout); ``keep`` names
    the parameter-holding modules it keeps (the embedding, for the first unit).

    Layer inputs for given hidden states are kept and reused (``cached_layer_inputs``) once the
    first call has shown they do not depend on the hidden states' values: with positions
    ``0..s-1`` they are a function of shape, dtype and device alone, as for every decoder here,
    and running the base model's preamble per layer would otherwise cost as much as a small layer.
    """

    def __init__(self, base: nn.Module, layers_key: str, keep: tuple[str, ...] = ()):
        super().__init__()
        shell = copy.copy(base)  # a shallow copy whose module tables are its own
        shell.__dict__ = {k: (type(v)(v) if isinstance(v, dict) else v) for k, v in base.__dict__.items()}
        for name, child in list(shell._modules.items()):
            if name not in keep and child is not None and any(True for _ in child.parameters()):
                shell._modules[name] = None
        self._target = [-1]
        n = len(base._modules[layers_key])
        shell._modules[layers_key] = nn.ModuleList(_StandIn(i, self._target) for i in range(n))
        held = [n for n, _ in shell.named_parameters(recurse=False)]
        if held:
            raise ValueError(f"the base model holds parameters of its own outside its modules: {held}")
        self.shell = shell
        self._cache: dict[tuple, tuple[tuple, dict]] = {}
        self._values_matter = False  # set when a layer's inputs turned out to depend on the hidden states

    def layer_inputs(self, index: int, **inputs) -> tuple[tuple, dict]:
        self._target[0] = index
        try:
            with _one_sequence_per_row():
                self.shell(**inputs, use_cache=False)
        except _Reached as r:
            return r.call_args, r.call_kwargs
        raise RuntimeError(f"the base model's forward never called decoder layer {index}")

    def cached_layer_inputs(self, index: int, h: torch.Tensor) -> tuple[tuple, dict]:
        """What the base model passes layer ``index`` besides the hidden states ``h`` (the hidden
        states left out: ``None`` in their place), computed once per shape, dtype, device and
        autocast state. Equal results for different layers are stored once."""
        kind = h.device.type
        if kind == "meta":  # analytic counting: nothing to compare values with
            return _without_hidden(*self.layer_inputs(index, inputs_embeds=h))
        key = (
            index,
            tuple(h.shape),
            h.dtype,
            h.device,
            torch.is_autocast_enabled(kind),
            torch.get_autocast_dtype(kind),
        )
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        got = _without_hidden(*self.layer_inputs(index, inputs_embeds=h))
        if self._values_matter:
            return got
        with torch.no_grad():
            other = _without_hidden(*self.layer_inputs(index, inputs_embeds=h.detach() * 2 + 1))
        if not _same(got, other) or _needs_grad(got):
            self._values_matter = True
            return got
        same_shape = [v for k, v in self._cache.items() if k[1:] == key[1:]]
        self._cache[key] = next((v for v in same_shape if _same(v, got)), got)
        return self._cache[key]


@contextmanager
def _one_sequence_per_row():
    """transformers' mask utilities look for several sequences packed in one row by reading the
    position ids: a device-to-host sync on every call, and impossible on the meta device. Every
    row here is one sequence at positions 0..s-1, so the answer is known: none packed."""
    from transformers import masking_utils

    find = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = _none_packed
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = find


def _none_packed(position_ids: torch.Tensor) -> None:
    return None


def _without_hidden(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    if args:
        return (None, *args[1:]), kwargs
    return args, {k: v for k, v in kwargs.items() if k != "hidden_states"}


def _same(a, b) -> bool:
    """Equal nested tuples, lists and dicts of tensors and plain values."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        return (
            torch.is_tensor(a)
            and torch.is_tensor(b)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and (torch.equal(a, b))
        )
    if isinstance(a, (tuple, list)):
        return isinstance(b, type(a)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and (a is b or a == b)


def _needs_grad(x) -> bool:
    if torch.is_tensor(x):
        return x.requires_grad
    if isinstance(x, (tuple, list)):
        return any(_needs_grad(v) for v in x)
    if isinstance(x, dict):
        return any(_needs_grad(v) for v in x.values())
    return False


def _with_hidden(args: tuple, kwargs: dict, h: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (h, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": h}


class DecoderEmbedding(nn.Module):
    """Token ids -> the hidden states the base model hands its first layer (embedding, scaling, ...)."""

    def __init__(self, prefix: BaseModelPrefix):
        super().__init__()
        self.prefix = prefix

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        args, kwargs = self.prefix.layer_inputs(0, input_ids=input_ids)
        return args[0] if args else kwargs["hidden_states"]


class DecoderLayer(nn.Module):
    """Decoder layer ``index`` as a tensor-to-tensor unit: what the base model computes once and
    passes every layer (position embeddings, masks, position ids) is computed here by the base
    model's own code (``BaseModelPrefix``), from this unit's input."""

    def __init__(self, layer: nn.Module, index: int, prefix: BaseModelPrefix):
        super().__init__()
        self.layer, self.index, self.prefix = layer, index, prefix

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        args, kwargs = _with_hidden(*self.prefix.cached_layer_inputs(self.index, h), h)
        out = self.layer(*args, **kwargs)
        return out[0] if isinstance(out, tuple) else out


class _Tail(nn.Module):
    """Stands in for the base model inside the causal LM: the modules after the layers, in order."""

    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        self.after = nn.ModuleList(modules)

    def forward(self, *args, inputs_embeds: torch.Tensor, **kwargs):
        from transformers.modeling_outputs import MoeModelOutputWithPast

        h = inputs_embeds
        for m in self.after:
            h = m(h)
        return MoeModelOutputWithPast(last_hidden_state=h)  # router_logits: None


class DecoderHead(nn.Module):
    """Hidden states -> logits: the final norm, then the causal LM's own forward (its head, and
    whatever it does to the logits, e.g. Gemma 2's final soft-capping)."""

    def __init__(self, lm: nn.Module, base_key: str, after: list[nn.Module]):
        super().__init__()
        shell = copy.copy(lm)
        shell.__dict__ = {k: (type(v)(v) if isinstance(v, dict) else v) for k, v in lm.__dict__.items()}
        shell._modules[base_key] = _Tail(after)
        self.lm = shell

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm(inputs_embeds=h, use_cache=False).logits


# -- builders ----------------------------------------------------------------------------

Built = tuple[dict[str, Any], list[nn.Module], list[str], list[str], Callable, Callable]


def _finish(cfg, attn: str) -> dict[str, Any]:
    cfg._attn_implementation = attn
    d = cfg.to_diff_dict()
    d.pop("transformers_version", None)
    return d


def _build_gpt2(config: dict[str, Any], attn: str) -> Built:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(**config)
    stored = _finish(cfg, attn)
    hf = GPT2LMHeadModel(cfg).eval()  # eval: no dropout even if a config asks for it
    t = hf.transformer
    n = len(t.h)
    units: list[nn.Module] = [GPT2Embedding(t.wte, t.wpe), *(HFBlock(b) for b in t.h), LMHead(t.ln_f, hf.lm_head)]
    return stored, units, *_labels(n, "block"), token_batch(cfg.vocab_size), lm_loss


def _labels(n: int, block: str) -> tuple[list[str], list[str]]:
    """Unit names and kinds of an embedding, ``n`` blocks and a head."""
    return ["embed", *(f"{block}{i}" for i in range(n)), "head"], ["embedding", *["block"] * n, "head"]


def _build_bert(config: dict[str, Any], attn: str) -> Built:
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(**config)
    stored = _finish(cfg, attn)
    hf = BertForMaskedLM(cfg).eval()
    b = hf.bert
    n = len(b.encoder.layer)
    units: list[nn.Module] = [BertEmbeddingUnit(b.embeddings), *(HFBlock(layer) for layer in b.encoder.layer), hf.cls]
    names, kinds = _labels(n, "layer")
    return stored, units, names, kinds, token_batch(cfg.vocab_size), lm_loss


def _build_decoder(model_type: str, config: dict[str, Any], attn: str) -> Built:
    """Any causal LM whose config declares a ``base_model_pp_plan``: the plan's first entries
    (the embedding) make the first unit, each layer of its ``nn.ModuleList`` a unit, and its last
    entries (the final norm) with the causal LM's head the last unit."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    cfg = AutoConfig.for_model(model_type, **config)
    plan = dict(getattr(cfg, "base_model_pp_plan", None) or {})
    if not plan:
        raise ValueError(f"{model_type} declares no base_model_pp_plan")
    cfg.use_cache = False
    if hasattr(cfg, "output_router_logits"):
        cfg.output_router_logits = False  # the router's auxiliary loss is left out (see the README)
    lm_cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(cfg)]
    if attn == "sdpa" and not getattr(lm_cls, "_supports_sdpa", True):
        attn = "eager"  # e.g. Gemma 2: SDPA has no attention-logit soft-capping
    if attn.startswith("flash") and not getattr(lm_cls, "_supports_flash_attn", False):
        attn = "sdpa" if getattr(lm_cls, "_supports_sdpa", True) else "eager"
    stored = cfg.to_diff_dict()
    stored.pop("transformers_version", None)
    lm = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn).eval()
    base = lm.base_model
    keys = list(plan)
    layers_key = next((k for k in keys if isinstance(getattr(base, k, None), nn.ModuleList)), None)
    if layers_key is None:
        raise ValueError(f"no nn.ModuleList among the pp plan's entries {keys}")
    cut = keys.index(layers_key)
    before, after = keys[:cut], keys[cut + 1 :]
    layers = getattr(base, layers_key)
    layer_prefix = BaseModelPrefix(base, layers_key)
    units: list[nn.Module] = [DecoderEmbedding(BaseModelPrefix(base, layers_key, keep=tuple(before)))]
    units += [DecoderLayer(layer, i, layer_prefix) for i, layer in enumerate(layers)]
    units.append(DecoderHead(lm, lm.base_model_prefix, [getattr(base, k) for k in after]))
    _probe(units)
    return stored, units, *_labels(len(layers), "block"), token_batch(cfg.vocab_size), lm_loss


def full_config(model_type: str, stored: dict[str, Any]) -> dict[str, Any]:
    """Every field of the config ``stored`` (a diff against the defaults) describes."""
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **{k: v for k, v in stored.items() if k != "model_type"}).to_dict()


def _probe(units: list[nn.Module]) -> None:
    """Two tokens through the embedding, the first layer and the head, so a model whose layers
    need more than the hidden states and what the base model derives from them (per-layer token
    embeddings, key-value states shared between layers) fails here, in one line."""
    chosen = (units[0], units[1], units[-1])
    if any(p.is_meta for p in units[1].parameters()):  # analytic: its counts run in 16 bits (grouped matmuls)
        chosen = tuple(copy.deepcopy(u).to(torch.bfloat16) for u in chosen)
    try:
        with torch.no_grad():
            x = torch.zeros(1, 2, dtype=torch.long)
            for unit in chosen:
                x = unit(x)
    except Exception as e:  # noqa: BLE001 - any failure: this model cannot be cut this way
        msg = (str(e).splitlines() or [""])[0][:200]
        raise ValueError(
            f"its units do not run on their own ({type(e).__name__}: {msg}); pipeplan cuts decoders whose layers "
            "take the hidden states and what the base model derives from them: give this model as "
            "package.module:function"
        ) from None


def moe_of(config: dict[str, Any]) -> tuple[int, int] | None:
    """(routed experts, experts per token) of a mixture-of-experts config, else None."""
    k = config.get("num_experts_per_tok")
    experts = next(
        (config[key] for key in ("num_local_experts", "n_routed_experts", "num_experts") if config.get(key)), None
    )
    return (int(experts), int(k)) if isinstance(k, int) and isinstance(experts, int) and k < experts else None


#: families with builders of their own: GPT-2 (its config declares no pp plan; learned
#: positions added in the embedding unit) and BERT (an encoder: bidirectional, a masked-LM head)
BUILDERS: dict[str, Callable[[dict[str, Any], str], Built]] = {
    "gpt2": _build_gpt2,
    "bert": _build_bert,
}


def decoder_types() -> list[str]:
    """Every causal-LM model type of the installed transformers whose config declares a pp plan."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    out = []
    for model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        try:
            cls = CONFIG_MAPPING[model_type]
        except KeyError:
            continue
        if getattr(cls, "base_model_pp_plan", None):
            out.append(model_type)
    return sorted(out)


def build(family: str, config: dict[str, Any], attn: str) -> Built:
    """Build ``family`` (gpt2, bert, or any model type with a pp plan) from ``config``."""
    if family in BUILDERS:
        return BUILDERS[family](config, attn)
    return _build_decoder(family, config, attn)


def config_fields(family: str) -> set[str]:
    """The field names of the family's Hugging Face config and their aliases (``hidden_size``
    for GPT-J's ``n_embd``): what ``--set`` accepts."""
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(family)
    return set(cfg.to_dict()) | set(getattr(type(cfg), "attribute_map", None) or {})
