"""The model zoo: models as ordered lists of tensor-to-tensor units.

A stage of a pipeline is a run of consecutive units, so every model here is built as
``units[0] -> units[1] -> ... -> units[-1]`` plus a loss on the last output.

Three sources of models:

- **presets** (:data:`PRESETS`): Hugging Face GPT-2, Llama and BERT (see ``zoo_hf``)
  built from their configs with random weights (nothing is downloaded), and a plain
  MLP stack. ``overrides`` (``--set key=value``) change fields of the Hugging Face
  config by their own names; the resulting config is ``ZooModel.config`` and is what
  a Profile stores under ``model.config``.
- **a user function** named ``package.module:function``: it is called as
  ``function(**config)`` (``config`` = the overrides, e.g. ``--set width=64`` passes
  ``width=64``) after ``torch.manual_seed(seed)``, and returns either

  * a :class:`ZooModel` (full control: its units, names, kinds, batch maker and loss), or
  * a list (or ``nn.Sequential``) of tensor-to-tensor ``nn.Module`` units. Then the
    batch is ``torch.randn(batch, seq_len, d)`` with ``d`` the ``in_features`` of the
    first ``nn.Linear`` in the first unit (a ``ZooError`` when there is none: return a
    ZooModel instead), and the loss is the mean square of the last output (the targets
    are an empty tensor). Units are named ``unit{i}`` of kind ``layer``.

  The profile stores the spec as the model name and the keyword arguments as its
  config, so ``build_model(spec, config=...)`` rebuilds the same model.

Tied embeddings: presets set ``tie_word_embeddings=False``. A tied model shares one
weight between the first and last unit, and the executor cannot yet sum such a
weight's gradients across stages; the head therefore has its own weight here.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .contract import UserError

__all__ = ["ZooModel", "build_model", "PRESETS", "parse_overrides", "ZooError", "family_of", "LAYER_KEYS"]


class ZooError(UserError):
    """Unknown model, bad override or a user model that cannot be built (one line)."""


@dataclass
class ZooModel:
    """A model cut into units, with what is needed to feed it and score its output."""

    name: str
    family: str  # "gpt2" | "llama" | "bert" | "mlp" | "user"
    config: dict[str, Any]  # what rebuilds this model: build_model(name, config=config)
    units: list[nn.Module]
    unit_names: list[str]
    unit_kinds: list[str]
    make_batch: Callable[[int, int, int], tuple[torch.Tensor, torch.Tensor]] = field(repr=False)
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = field(repr=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for u in self.units:
            x = u(x)
        return x


# -- plain MLP stack ----------------------------------------------------------------------


def _build_mlp(config: dict[str, Any], attn: str):
    width, depth = int(config["width"]), int(config["depth"])
    units: list[nn.Module] = [
        nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)) for _ in range(depth)
    ]

    def make(batch_size: int, seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(batch_size, seq_len, width, generator=g), torch.randn(
            batch_size, seq_len, width, generator=g
        )

    def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(out.float(), target.float())

    return {"width": width, "depth": depth}, units, [f"layer{i}" for i in range(depth)], ["layer"] * depth, make, mse


# -- presets ------------------------------------------------------------------------------

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
    "use_cache": False,
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
}


def _llama(layers: int, hidden: int, inter: int, heads: int, kv: int, **more) -> tuple[str, dict[str, Any]]:
    return (
        "llama",
        {
            **_LLAMA3,
            "num_hidden_layers": layers,
            "hidden_size": hidden,
            "intermediate_size": inter,
            "num_attention_heads": heads,
            "num_key_value_heads": kv,
            **more,
        },
    )


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


#: name -> (family, config). Config keys are the Hugging Face config's own field names.
#: Real sizes follow the published configs (GPT-2 paper sizes; Llama 3.2 1B, Llama 3 8B
#: and 70B; BERT-base), with the RoPE scaling of Llama 3.x left out (it changes no cost).
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    # The built-in default: few small blocks and GPT-2's real vocabulary, so the head
    # outweighs several blocks, as it does in real models.
    "gpt2-demo": _gpt2(8, 256, 4),
    "gpt2-tiny": _gpt2(2, 64, 2, vocab=1000, positions=256),
    "gpt2": _gpt2(12, 768, 12),
    "gpt2-medium": _gpt2(24, 1024, 16),
    "gpt2-large": _gpt2(36, 1280, 20),
    "llama-tiny": _llama(
        2, 64, 128, 4, 2, vocab_size=1000, max_position_embeddings=256, bos_token_id=1, eos_token_id=2
    ),
    "llama-small": _llama(
        4, 256, 688, 8, 2, vocab_size=8000, max_position_embeddings=1024, bos_token_id=1, eos_token_id=2
    ),
    "llama-1b": _llama(16, 2048, 8192, 32, 8, head_dim=64),
    "llama3-8b": _llama(32, 4096, 14336, 32, 8),
    "llama3-70b": _llama(80, 8192, 28672, 64, 8),
    "bert-tiny": _bert(2, 64, 2, 128, vocab=1000, positions=256),
    "bert-small": _bert(4, 256, 4, 1024),
    "bert-base": _bert(12, 768, 12, 3072),
    "bert-large": _bert(24, 1024, 16, 4096),
    "mlp-tiny": ("mlp", {"width": 32, "depth": 4}),
}


def _builders() -> dict[str, Callable]:
    from .zoo_hf import BUILDERS

    return {**BUILDERS, "mlp": _build_mlp}


def family_of(name: str) -> str:
    """The family of preset ``name``, or ``"user"`` for a ``module:function`` spec."""
    if ":" in name:
        return "user"
    if name not in PRESETS:
        raise ZooError(
            f"unknown model {name!r}: choose one of {', '.join(sorted(PRESETS))}, "
            "or give a user model as package.module:function"
        )
    return PRESETS[name][0]


#: the config field holding the number of blocks, per family
LAYER_KEYS = {"gpt2": "n_layer", "llama": "num_hidden_layers", "bert": "num_hidden_layers", "mlp": "depth"}


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


def build_model(
    name: str,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
    config: dict[str, Any] | None = None,
    *,
    attention: str = "sdpa",
    device: str | torch.device | None = None,
) -> ZooModel:
    """Build model ``name`` (a preset or ``package.module:function``) with weights from ``seed``.

    ``config`` (a profile's stored ``model.config``) replaces the preset's config;
    ``overrides`` then change single fields. ``attention`` is the Hugging Face
    attention implementation (``sdpa`` or ``flash_attention_2``); ``device`` builds
    the parameters there directly (``"meta"`` for analytic profiles: no memory used).
    """
    family = family_of(name)
    if family == "user":
        return _build_user(name, {**(config or {}), **(overrides or {})}, seed, device)
    cfg = dict(config) if config is not None else json.loads(json.dumps(PRESETS[name][1]))
    if overrides:
        defaults = {**_defaults(family), **cfg}
        for key, value in overrides.items():
            if key not in defaults:
                raise ZooError(
                    f"--set {key}: not a field of the {family} config (e.g. "
                    f"{LAYER_KEYS[family]}); see the Hugging Face config class"
                )
            check_override(key, value, defaults[key], family)
            cfg[key] = value
    cfg.pop("model_type", None)
    cfg.pop("transformers_version", None)
    torch.manual_seed(seed)
    try:
        with torch.device(device) if device is not None else nullcontext():
            stored, units, names, kinds, make, loss = _builders()[family](cfg, attention)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ZooError(f"model {name!r} cannot be built with this config: {msg}") from None
    if family != "mlp":
        stored = {**stored, "model_type": family}
    return ZooModel(name, family, stored, units, names, kinds, make, loss)


def _defaults(family: str) -> dict[str, Any]:
    if family == "mlp":
        return {"width": 32, "depth": 4}
    from .zoo_hf import config_defaults

    return config_defaults(family)


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


# -- user models --------------------------------------------------------------------------


def _load_user_function(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ZooError(f"user model {spec!r}: expected package.module:function")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: modules in the current folder are found
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's input
        raise ZooError(
            f"user model {spec!r}: cannot import {module_name}: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ZooError(f"user model {spec!r}: {module_name} has no function {attr!r}")
    return fn


def _build_user(spec: str, kwargs: dict[str, Any], seed: int, device) -> ZooModel:
    fn = _load_user_function(spec)
    torch.manual_seed(seed)
    try:
        with torch.device(device) if device is not None else nullcontext():
            got = fn(**kwargs)
    except TypeError as e:
        raise ZooError(f"user model {spec!r} rejected its arguments {kwargs}: {str(e).splitlines()[0]}") from None
    if isinstance(got, ZooModel):
        return ZooModel(
            spec,
            "user",
            dict(kwargs),
            list(got.units),
            list(got.unit_names),
            list(got.unit_kinds),
            got.make_batch,
            got.loss_fn,
        )
    units = list(got) if isinstance(got, (list, tuple, nn.Sequential)) else None
    if not units or not all(isinstance(u, nn.Module) for u in units):
        raise ZooError(f"user model {spec!r} returned {type(got).__name__}: return a ZooModel or a list of nn.Module")
    first_linear = next((m for m in units[0].modules() if isinstance(m, nn.Linear)), None)
    if first_linear is None:
        raise ZooError(
            f"user model {spec!r}: no nn.Linear in the first unit to size the input; return a ZooModel "
            "with its own make_batch"
        )
    d = first_linear.in_features

    def make(batch_size: int, seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(batch_size, seq_len, d, generator=g), torch.empty(0)

    def mean_square(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return out.float().pow(2).mean()

    n = len(units)
    return ZooModel(spec, "user", dict(kwargs), units, [f"unit{i}" for i in range(n)], ["layer"] * n, make, mean_square)
