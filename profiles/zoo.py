"""The model zoo: models as ordered lists of tensor-to-tensor units.

A stage of a pipeline is a run of consecutive units, so every model here is built as
``units[0] -> units[1] -> ... -> units[-1]`` plus a loss on the last output.

Sources of models (``build_model(name, ...)``):

- **a preset** (:data:`PRESETS`): a name for a model type and config fields, e.g.
  ``llama3-8b`` = ``llama`` + the published sizes. No code per preset;
- **a transformers model type** (``qwen2``, ``mixtral``, ...) with the config's defaults, or a
  **path to a config.json** (its ``model_type`` and fields). Any causal LM whose config declares
  a ``base_model_pp_plan`` is cut from that plan (``zoo_hf``); GPT-2 and BERT have builders of
  their own. Built from the config with random weights (nothing is downloaded);
- **a user function** named ``package.module:function``, called as ``function(**config)``
  (``config`` = the overrides, e.g. ``--set width=64`` passes ``width=64``) after
  ``torch.manual_seed(seed)``. It returns

  * an ``nn.Module`` whose blocks sit in an ``nn.ModuleList``: the units are found by
    tracing it (``zoo_user``): what runs before the blocks, each block, what runs after;
  * a list (or ``nn.Sequential``) of tensor-to-tensor units, which may start with an
    ``nn.Embedding`` (token inputs); units are named ``unit{i}`` of kind ``layer``;
  * either of these as ``(model, make_batch, loss_fn)``, with ``make_batch(batch_size,
    seq_len, seed) -> (inputs, target)`` and ``loss_fn(output, target) -> scalar`` (either
    may be None); without them the batch and loss follow ``zoo_user.default_batch_and_loss``:
    tokens for an embedding-first model, cross entropy when the last unit outputs the
    vocabulary size, else the mean square of the output;
  * or a :class:`ZooModel` (full control: units, names, kinds, batch maker and loss).

  The profile stores the spec as the model name and the keyword arguments as its config,
  so ``build_model(spec, config=...)`` rebuilds the same model. Code named in a profile
  runs only with ``trust_remote_code`` (``--trust-remote-code`` on run and validate).

``overrides`` (``--set key=value``) change config fields by their own names in every form;
the resulting config is ``ZooModel.config`` and is what a Profile stores under
``model.config`` (with ``model_type``, so the executor rebuilds a config.json model without
the file).

Tied embeddings stay tied: the first and last unit hold the same parameter
(:meth:`ZooModel.tied`), and the executor sums its gradient between the ranks holding it.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .presets import PRESETS, ZooError, parse_overrides

__all__ = [
    "ZooModel",
    "build_model",
    "PRESETS",
    "CODE_FAMILIES",
    "parse_overrides",
    "ZooError",
    "family_of",
    "model_types",
]


@dataclass
class ZooModel:
    """A model cut into units, with what is needed to feed it and score its output."""

    name: str
    family: str  # the model type ("gpt2", "llama", "mixtral", ...), "mlp" or "user"
    config: dict[str, Any]  # what rebuilds this model: build_model(name, config=config)
    units: list[nn.Module]
    unit_names: list[str]
    unit_kinds: list[str]
    make_batch: Callable[[int, int, int], tuple[torch.Tensor, torch.Tensor]] = field(repr=False)
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = field(repr=False)
    moe: tuple[int, int] | None = None  # (routed experts, experts per token) of a mixture-of-experts model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for u in self.units:
            x = u(x)
        return x

    def tied(self) -> list[tuple[list[int], nn.Parameter]]:
        """Parameters held by more than one unit (tied input and output embeddings), each with
        the indices of the units holding it."""
        holders: dict[int, tuple[list[int], nn.Parameter]] = {}
        for i, u in enumerate(self.units):
            for p in u.parameters():
                holders.setdefault(id(p), ([], p))[0].append(i)
        return [(units, p) for units, p in holders.values() if len(units) > 1]

    def active_params(self, idx: int) -> int:
        """Parameters unit ``idx`` uses per token: all of them, less the routed experts a token
        does not visit (a 3-D parameter with one slice per expert is an expert's weight)."""
        total = sum(p.numel() for p in self.units[idx].parameters())
        if self.moe is None:
            return total
        experts, k = self.moe
        routed = sum(p.numel() for p in self.units[idx].parameters() if p.dim() == 3 and p.shape[0] == experts)
        return total - routed + routed * k // experts


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


#: preset families built by code of their own rather than from a pp plan (see zoo_hf)
CODE_FAMILIES = ("gpt2", "bert", "mlp")
#: keys of a saved config.json that describe the file, not the model
_FILE_KEYS = (
    "model_type",
    "transformers_version",
    "architectures",
    "auto_map",
    "torch_dtype",
    "dtype",
    "_name_or_path",
)


def model_types() -> list[str]:
    """The model types ``build_model`` accepts by name: GPT-2, BERT, and every causal-LM type of
    the installed transformers whose config declares a ``base_model_pp_plan``."""
    from .zoo_hf import decoder_types

    return sorted({"gpt2", "bert", *decoder_types()})


def names_code(name: str) -> bool:
    """Whether model ``name`` is code to import (``package.module:function``)."""
    return ":" in name and name not in PRESETS and not _is_file_spec(name)


def check_trusted(name: str, trusted: bool, where) -> None:
    """A model named in a file (a profile, a plan) that is code runs only with ``--trust-remote-code``."""
    if names_code(name) and not trusted:
        raise ZooError(
            f"{where}: its profile names code to import and run on every rank, {name}: pass --trust-remote-code "
            "if you trust it"
        )


def _config_file(path: Path) -> tuple[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ZooError(f"{path}: cannot read it as a JSON config ({type(e).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise ZooError(f"{path}: no model_type field: a Hugging Face config.json names its model_type")
    return data["model_type"], {k: v for k, v in data.items() if k not in _FILE_KEYS}


def _is_file_spec(name: str) -> bool:
    return name.endswith(".json") or Path(name).is_file()


def family_of(name: str) -> str:
    """The model type of ``name`` (a preset, a model type, a config.json path), or ``"user"``."""
    if name in PRESETS:
        return PRESETS[name][0]
    if _is_file_spec(name):
        return _config_file(Path(name))[0] if Path(name).is_file() else _missing_file(name)
    if ":" in name:
        return "user"
    if name in CODE_FAMILIES or name in model_types():
        return name
    raise ZooError(
        f"unknown model {name!r}: give a preset or a model type (`pipeplan profile --list`), a path to a "
        "config.json, or a user model as package.module:function"
    )


def _missing_file(name: str) -> str:
    raise ZooError(f"{name}: no such config file")


def _base_config(name: str, family: str) -> dict[str, Any]:
    if name in PRESETS:
        return json.loads(json.dumps(PRESETS[name][1]))
    if _is_file_spec(name):
        return _config_file(Path(name))[1]
    return {}


def build_model(
    name: str,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
    config: dict[str, Any] | None = None,
    *,
    attention: str = "sdpa",
    device: str | torch.device | None = None,
    trust_remote_code: bool = True,
) -> ZooModel:
    """Build model ``name`` with weights from ``seed``: a preset, a transformers model type
    (``qwen2``), a path to a ``config.json``, or ``package.module:function``.

    ``config`` (a profile's stored ``model.config``) replaces the preset's or file's config;
    ``overrides`` then change single fields. ``attention`` is the Hugging Face attention
    implementation (``sdpa`` or ``flash_attention_2``); ``device`` builds the parameters
    there directly (``"meta"`` for analytic profiles: no memory used). ``trust_remote_code``
    False refuses a ``module:function`` model (code named in a file, not by the user).
    """
    if names_code(name):
        check_trusted(name, trust_remote_code, "model")
        return _build_user(name, {**(config or {}), **(overrides or {})}, seed, device)
    if config is not None and isinstance(config.get("model_type"), str):
        family = config["model_type"]
    else:
        family = family_of(name)
    cfg = dict(config) if config is not None else _base_config(name, family)
    if overrides:
        known = _known_keys(family) | set(cfg)
        for key, value in overrides.items():
            if key not in known:
                raise ZooError(
                    f"--set {key}: not a field of the {family} config (e.g. num_hidden_layers); "
                    "see the Hugging Face config class"
                )
            cfg[key] = value
    for key in _FILE_KEYS:
        cfg.pop(key, None)
    torch.manual_seed(seed)
    try:
        with torch.device(device) if device is not None else nullcontext():
            if family == "mlp":
                stored, units, names, kinds, make, loss = _build_mlp(cfg, attention)
            else:
                from .zoo_hf import build

                stored, units, names, kinds, make, loss = build(family, cfg, attention)
    except (TypeError, ValueError, KeyError, AttributeError, AssertionError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ZooError(f"model {name!r} cannot be built with this config: {msg}") from None
    moe = None
    if family != "mlp":
        from .zoo_hf import full_config, moe_of

        stored = {**stored, "model_type": family}
        moe = moe_of(full_config(family, stored))
    return ZooModel(name, family, stored, units, names, kinds, make, loss, moe=moe)


def _known_keys(family: str) -> set[str]:
    if family == "mlp":
        return {"width", "depth"}
    from .zoo_hf import config_fields

    return config_fields(family)


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
    make = loss = None
    if isinstance(got, tuple) and len(got) == 3 and all(f is None or callable(f) for f in got[1:]):
        got, make, loss = got
    if isinstance(got, (list, tuple, nn.Sequential)):
        units = list(got)
        if not units or not all(isinstance(u, nn.Module) for u in units):
            raise ZooError(f"user model {spec!r}: {_WHAT_TO_RETURN}")
        names, kinds = [f"unit{i}" for i in range(len(units))], ["layer"] * len(units)
    elif isinstance(got, nn.Module):
        from .zoo_user import split_module

        units, names, kinds = split_module(spec, got, _WHAT_TO_RETURN)
    else:
        raise ZooError(f"user model {spec!r} returned {type(got).__name__}: {_WHAT_TO_RETURN}")
    if make is None or loss is None:
        from .zoo_user import default_batch_and_loss

        default_make, default_loss = default_batch_and_loss(spec, units, _WHAT_TO_RETURN)
        make, loss = make or default_make, loss or default_loss
    return ZooModel(spec, "user", dict(kwargs), units, names, kinds, make, loss)


_WHAT_TO_RETURN = (
    "return an nn.Module whose blocks sit in an nn.ModuleList, a list of tensor-to-tensor units "
    "(e.g. [nn.Embedding, *blocks, head]), either optionally as (model, make_batch, loss_fn), or a ZooModel"
)
