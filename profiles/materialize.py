"""Units one at a time: any unit of a meta-device model, materialised on a device with the
model's own initialisation, its random numbers seeded by the unit's index.

A pipeline rank builds the model on the meta device (no memory), then materialises only the
units of its own stages; a unit's weights depend on ``(seed, index)`` alone, not on which rank
builds it or what was built before, so a single-process reference that materialises the same
units gets the same weights. Initialisation, per unit, children before parents:

- Hugging Face models (a ``model_type`` in the config): the model's own ``_init_weights`` (the
  family's ``PreTrainedModel`` method, as ``initialize_weights`` applies it), which also fills
  buffers such as RoPE's ``inv_freq`` and BERT's ``position_ids``;
- other models (the MLP preset, user models): ``reset_parameters()`` of each submodule, torch's
  own initialisation. A user model with parameters or buffers outside any module that has a
  ``reset_parameters()`` cannot be initialised a unit at a time: ``ZooError`` says which.

Tied weights are not re-tied here (the presets untie them).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable

import torch
from torch import nn

from .zoo import ZooError, ZooModel

__all__ = ["unit_materializer", "unit_seed"]


def unit_seed(seed: int, index: int) -> int:
    """The seed of unit ``index`` of a model built with ``seed`` (a hash: unrelated streams)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "little") >> 1


def unit_materializer(model: ZooModel, seed: int = 0) -> Callable[[int, torch.device | str], nn.Module]:
    """``make(index, device)``: a fresh copy of unit ``index`` of ``model`` (best built with
    ``build_model(..., device="meta")``) on ``device``, initialised the model's own way under
    ``torch.manual_seed(unit_seed(seed, index))`` (the global RNG state is restored after)."""
    init = _hf_initializer(model) if "model_type" in model.config else _torch_initializer(model)

    def make(index: int, device: torch.device | str) -> nn.Module:
        device = torch.device(device)
        unit = copy.deepcopy(model.units[index]).to_empty(device=device)
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=device.type), torch.no_grad():
            torch.manual_seed(unit_seed(seed, index))
            unit.apply(init)  # children first, then their parents (which may override, as GPT-2's do)
        return unit

    return make


def _hf_initializer(model: ZooModel) -> Callable[[nn.Module], None]:
    import transformers

    cfg = dict(model.config)
    config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    with torch.device("meta"):
        owner = transformers.AutoModel.from_config(config)  # only its _init_weights (and config) is used
    return owner._init_weights


def _torch_initializer(model: ZooModel) -> Callable[[nn.Module], None]:
    for i, unit in enumerate(model.units):
        for name, mod in unit.named_modules():
            owned = list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False))
            if owned and not callable(getattr(mod, "reset_parameters", None)):
                where = f"{name} ({type(mod).__name__})" if name else type(mod).__name__
                raise ZooError(
                    f"model {model.name!r}: unit {i} module {where} holds parameters but has no "
                    "reset_parameters(), so a rank cannot initialise its own units: give it one"
                )

    def init(mod: nn.Module) -> None:
        reset = getattr(mod, "reset_parameters", None)
        if callable(reset):
            reset()

    return init
