"""Model presets and ``--set`` overrides, checked without torch.

What the zoo builds is named here: the presets (family and Hugging Face config), the
family of a model name, and the check of ``--set key=value`` against each config field's
default. Kept apart from ``zoo`` (which imports torch) so that a command refuses a wrong
model name or override in a second, before torch is imported.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .contract import UserError

__all__ = [
    "PRESETS",
    "LAYER_KEYS",
    "ZooError",
    "family_of",
    "parse_overrides",
    "config_defaults",
    "check_override",
    "check_overrides",
    "check_seq_len",
]


class ZooError(UserError):
    """Unknown model, bad override or a user model that cannot be built (one line)."""


# -- presets: named configurations ---------------------------------------------------------

_NO_DROPOUT_GPT2 = {
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "use_cache": False,
    "tie_word_embeddings": False,
}
_NO_DROPOUT_BERT = {
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "use_cache": False,
    "tie_word_embeddings": False,
}
_LLAMA3 = {
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
}
_TINY_VOCAB = {"vocab_size": 1000, "max_position_embeddings": 256, "bos_token_id": 1, "eos_token_id": 2}


def _decoder(layers: int, hidden: int, inter: int, heads: int, kv: int, **more) -> dict[str, Any]:
    return {
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        **more,
    }


def _gpt2(layers: int, width: int, heads: int, vocab: int = 50257, positions: int = 1024):
    return (
        "gpt2",
        {
            "n_layer": layers,
            "n_embd": width,
            "n_head": heads,
            "vocab_size": vocab,
            "n_positions": positions,
            "bos_token_id": vocab - 1,
            "eos_token_id": vocab - 1,
            **_NO_DROPOUT_GPT2,
        },
    )


def _bert(layers: int, hidden: int, heads: int, inter: int, vocab: int = 30522, positions: int = 512):
    return (
        "bert",
        {
            "num_hidden_layers": layers,
            "hidden_size": hidden,
            "num_attention_heads": heads,
            "intermediate_size": inter,
            "vocab_size": vocab,
            "max_position_embeddings": positions,
            **_NO_DROPOUT_BERT,
        },
    )


#: name -> (model type, config fields). Fields are the Hugging Face config's own names; the
#: model type is transformers' (``llama``, ``mixtral``, ...) or ``mlp``. Sizes follow the
#: published configs (GPT-2 paper sizes; Llama 3.2 1B, Llama 3 8B and 70B; Mistral 7B v0.3;
#: Qwen2.5 7B; Mixtral 8x7B; Gemma 2 9B; Phi-3 mini; DeepSeek-V3; BERT-base), with RoPE
#: scaling (Llama 3.x, DeepSeek-V3's YaRN) left out: it changes no cost.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    # The built-in default: few small blocks and GPT-2's real vocabulary, so the head
    # outweighs several blocks, as it does in real models.
    "gpt2-demo": _gpt2(8, 256, 4),
    "gpt2-tiny": _gpt2(2, 64, 2, vocab=1000, positions=256),
    "gpt2": _gpt2(12, 768, 12),
    "gpt2-medium": _gpt2(24, 1024, 16),
    "gpt2-large": _gpt2(36, 1280, 20),
    "llama-tiny": ("llama", _decoder(2, 64, 128, 4, 2, **{**_LLAMA3, **_TINY_VOCAB})),
    "llama-small": (
        "llama",
        _decoder(4, 256, 688, 8, 2, **{**_LLAMA3, **_TINY_VOCAB, "vocab_size": 8000, "max_position_embeddings": 1024}),
    ),
    "llama-1b": ("llama", _decoder(16, 2048, 8192, 32, 8, head_dim=64, **{**_LLAMA3, "tie_word_embeddings": True})),
    "llama3-8b": ("llama", _decoder(32, 4096, 14336, 32, 8, **_LLAMA3)),
    "llama3-70b": ("llama", _decoder(80, 8192, 28672, 64, 8, **_LLAMA3)),
    "mistral-7b": (
        "mistral",
        _decoder(32, 4096, 14336, 32, 8, vocab_size=32768, max_position_embeddings=32768, sliding_window=None),
    ),
    "qwen2.5-7b": (
        "qwen2",
        _decoder(
            28,
            3584,
            18944,
            28,
            4,
            vocab_size=152064,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
        ),
    ),
    "mixtral-8x7b": (
        "mixtral",
        _decoder(
            32,
            4096,
            14336,
            32,
            8,
            vocab_size=32000,
            max_position_embeddings=32768,
            num_local_experts=8,
            num_experts_per_tok=2,
        ),
    ),
    "gemma2-9b": (
        "gemma2",
        _decoder(
            42,
            3584,
            14336,
            16,
            8,
            head_dim=256,
            vocab_size=256000,
            sliding_window=4096,
            query_pre_attn_scalar=256,
            tie_word_embeddings=True,
        ),
    ),
    "phi3-mini": ("phi3", _decoder(32, 3072, 8192, 32, 32, vocab_size=32064, max_position_embeddings=4096)),
    "deepseek-v3": (
        "deepseek_v3",
        _decoder(
            61,
            7168,
            18432,
            128,
            128,
            vocab_size=129280,
            moe_intermediate_size=2048,
            n_routed_experts=256,
            n_shared_experts=1,
            num_experts_per_tok=8,
            first_k_dense_replace=3,
            q_lora_rank=1536,
            kv_lora_rank=512,
            qk_nope_head_dim=128,
            qk_rope_head_dim=64,
            v_head_dim=128,
            n_group=8,
            topk_group=4,
            max_position_embeddings=4096,
            tie_word_embeddings=False,
        ),
    ),
    "bert-tiny": _bert(2, 64, 2, 128, vocab=1000, positions=256),
    "bert-small": _bert(4, 256, 4, 1024),
    "bert-base": _bert(12, 768, 12, 3072),
    "bert-large": _bert(24, 1024, 16, 4096),
    "mlp-tiny": ("mlp", {"width": 32, "depth": 4}),
}


def family_of(name: str) -> str | None:
    """The model type of preset ``name``, ``"user"`` for a ``module:function`` spec, None for
    anything else (a model type or a config.json: ``zoo.family_of`` knows those, with torch)."""
    if name in PRESETS:
        return PRESETS[name][0]
    if ":" in name and not name.endswith(".json"):
        return "user"
    return None


#: the config field holding the number of blocks, per family
LAYER_KEYS = {"gpt2": "n_layer", "mlp": "depth"}  # every other family: num_hidden_layers


def layer_key(family: str) -> str:
    return LAYER_KEYS.get(family, "num_hidden_layers")


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["n_layer=8", "vocab_size=1000"]`` -> dict, values parsed as JSON where they can be."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ZooError(f"--set {pair!r}: expected key=value, e.g. --set n_layer=8")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def config_defaults(family: str) -> dict[str, Any]:
    """The family's config fields and their defaults (Hugging Face's, read without torch)."""
    if family == "mlp":
        return {"width": 32, "depth": 4}
    import transformers  # its config classes load without torch

    return transformers.AutoConfig.for_model(family).to_dict()


#: config fields that count something (layers, heads, widths, positions): at least 1
_COUNT = re.compile(r"^(n_|num_)|_size$|^hidden|^intermediate|_positions$|^width$|^depth$|_dim$|^n_?embd$")


def check_override(key: str, value: Any, default: Any, family: str) -> None:
    """``--set key=value`` against the field's default: the same type (an int where the
    default is one, a number where it is a float), counts at least 1, other integers not
    negative. A field whose default is None takes any value."""

    def bad(why: str) -> ZooError:
        shown = repr(value) if len(repr(value)) <= 30 else repr(value)[:27] + "..."
        return ZooError(f"--set {key}={shown}: {why}")

    if default is None:
        return
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("expected true or false")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(f"expected an integer, like the default {default}")
        if _COUNT.search(key) and value < 1:
            raise bad(f"{key} counts something: give 1 or more")
        if default >= 0 and value < 0:
            raise bad("must not be negative")
        if value > 2**31:
            raise bad("too large for any model this profiler can build")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad(f"expected a number, like the default {default}")
    elif not isinstance(value, type(default)):
        raise bad(f"expected a {type(default).__name__}, like the default {default!r}")


def check_overrides(name: str, overrides: dict[str, Any]) -> None:
    """Every ``--set`` of preset ``name`` against its field's default (see ``check_override``);
    fields outside the preset's own config are looked up in the Hugging Face config class
    (imported only then). A user model's keyword arguments are its own business."""
    family = family_of(name)
    if family in (None, "user") or not overrides:
        return  # a model type or config.json is checked against its config class when built
    cfg = PRESETS[name][1]
    defaults = cfg if set(overrides) <= set(cfg) else {**config_defaults(family), **cfg}
    for key, value in overrides.items():
        if key not in defaults:
            raise ZooError(
                f"--set {key}: not a field of the {family} config (e.g. {layer_key(family)}); "
                "see the Hugging Face config class"
            )
        check_override(key, value, defaults[key], family)


#: the config field sizing a family's learned position table: longer sequences cannot run
POSITION_KEYS = {"gpt2": "n_positions", "bert": "max_position_embeddings"}


def check_seq_len(name: str, overrides: dict[str, Any], seq_len: int) -> None:
    """Refuse a sequence longer than a preset's learned position table (GPT-2, BERT)."""
    family = family_of(name)
    key = POSITION_KEYS.get(family)
    if key is None:
        return
    positions = {**PRESETS[name][1], **overrides}.get(key)
    if isinstance(positions, int) and seq_len > positions:
        raise ZooError(
            f"--seq-len {seq_len}: {name} has {positions} positions ({key}): use --seq-len {positions} or less, "
            f"or --set {key}={seq_len}"
        )
