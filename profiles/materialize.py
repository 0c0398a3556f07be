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

Tied weights (input and output embeddings, ``ZooModel.tied``): every copy starts from the
first holder's initialisation (the unit with the lowest index), so copies on different ranks
are equal; copies on one rank are made one parameter again (``tie_local``), so autograd sums
their gradients, and ranks sum theirs every step (the executor).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable

import torch
from torch import nn

from .zoo import ZooError, ZooModel

__all__ = ["unit_materializer", "unit_seed", "tied_paths", "tie_local"]


def unit_seed(seed: int, index: int) -> int:
    """The seed of unit ``index`` of a model built with ``seed`` (a hash: unrelated streams)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "little") >> 1


def unit_materializer(model: ZooModel, seed: int = 0) -> Callable[[int, torch.device | str], nn.Module]:
    """``make(index, device)``: a fresh copy of unit ``index`` of ``model`` (best built with
    ``build_model(..., device="meta")``) on ``device``, initialised the model's own way under
    ``torch.manual_seed(unit_seed(seed, index))`` (the global RNG state is restored after)."""
    init = _hf_initializer(model) if "model_type" in model.config else _torch_initializer(model)

    def fresh(index: int, device: torch.device) -> nn.Module:
        unit = copy.deepcopy(model.units[index]).to_empty(device=device)
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=device.type), torch.no_grad():
            torch.manual_seed(unit_seed(seed, index))
            unit.apply(init)  # children first, then their parents (which may override, as GPT-2's do)
        return unit

    ties = tied_paths(model)

    def make(index: int, device: torch.device | str) -> nn.Module:
        device = torch.device(device)
        unit = fresh(index, device)
        for paths in ties:  # a tied copy starts as its first holder's
            owner = min(paths)
            if index in paths and index != owner:
                src = fresh(owner, device).get_parameter(paths[owner])
                with torch.no_grad():
                    unit.get_parameter(paths[index]).copy_(src)
        return unit

    return make


def tied_paths(model: ZooModel) -> list[dict[int, str]]:
    """Each tied parameter as ``{unit index: its name inside that unit}``."""
    out = []
    for units, p in model.tied():
        paths = {}
        for u in units:
            paths[u] = next(n for n, q in model.units[u].named_parameters(remove_duplicate=False) if q is p)
        out.append(paths)
    return out


def tie_local(model: ZooModel, units: list[nn.Module], mine: set[int]) -> None:
    """Copies of one tied parameter in units this rank holds (``mine``) become one parameter
    (the first holder's), so autograd sums their gradients as in the whole model."""
    for paths in tied_paths(model):
        here = sorted(u for u in paths if u in mine)
        if len(here) < 2:
            continue
        keep = units[here[0]].get_parameter(paths[here[0]])
        for u in here[1:]:
            owner_path, _, leaf = paths[u].rpartition(".")
            holder = units[u].get_submodule(owner_path) if owner_path else units[u]
            setattr(holder, leaf, keep)


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
