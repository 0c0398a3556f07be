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
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .presets import LAYER_KEYS, PRESETS, ZooError, check_override, config_defaults, family_of, parse_overrides

__all__ = ["ZooModel", "build_model", "PRESETS", "parse_overrides", "ZooError", "family_of", "LAYER_KEYS"]


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


def _builders() -> dict[str, Callable]:
    from .zoo_hf import BUILDERS

    return {**BUILDERS, "mlp": _build_mlp}


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
        defaults = {**config_defaults(family), **cfg}
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
