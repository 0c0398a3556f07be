"""The model zoo: models as ordered lists of tensor-to-tensor units.

A stage of a pipeline is a run of consecutive units, so every model here is built as
``units[0] -> units[1] -> ... -> units[-1]`` plus a loss on the last output.
Hugging Face models are built from their configs with random weights: nothing is
downloaded. Dropout is switched off so runs are deterministic and comparable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .contract import UserError

__all__ = ["ZooModel", "build_model", "PRESETS", "parse_overrides", "ZooError"]


class ZooError(UserError):
    """Unknown model, bad override or a user model that cannot be built (one line)."""


@dataclass
class ZooModel:
    """A model cut into units, with what is needed to feed it and score its output."""

    name: str
    family: str
    config: dict[str, Any]
    units: list[nn.Module]
    unit_names: list[str]
    unit_kinds: list[str]
    make_batch: Callable[[int, int, int], tuple[torch.Tensor, torch.Tensor]] = field(repr=False)
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = field(repr=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for u in self.units:
            x = u(x)
        return x


# -- GPT-2 -------------------------------------------------------------------------------


class GPT2Embedding(nn.Module):
    def __init__(self, wte: nn.Embedding, wpe: nn.Embedding):
        super().__init__()
        self.wte, self.wpe = wte, wpe

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[-1], device=input_ids.device)
        return self.wte(input_ids) + self.wpe(pos)


class HFBlock(nn.Module):
    """A Hugging Face decoder block as a tensor-to-tensor unit (causal attention, no cache)."""

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


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())


def _token_batch(vocab: int) -> Callable[[int, int, int], tuple[torch.Tensor, torch.Tensor]]:
    def make(batch_size: int, seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, vocab, (batch_size, seq_len + 1), generator=g)
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    return make


def _build_gpt2(name: str, config: dict[str, Any], seed: int) -> ZooModel:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(**config)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(cfg).eval()  # eval: no dropout even if a config asks for it
    t = hf.transformer
    units: list[nn.Module] = [GPT2Embedding(t.wte, t.wpe)]
    units += [HFBlock(b) for b in t.h]
    units.append(LMHead(t.ln_f, hf.lm_head))
    names = ["embed"] + [f"block{i}" for i in range(len(t.h))] + ["head"]
    kinds = ["embedding"] + ["block"] * len(t.h) + ["head"]
    return ZooModel(name, "gpt2", cfg.to_diff_dict() | {"model_type": "gpt2"}, units, names, kinds,
                    _token_batch(cfg.vocab_size), lm_loss)


# -- plain MLP stack ----------------------------------------------------------------------


def _build_mlp(name: str, config: dict[str, Any], seed: int) -> ZooModel:
    width, depth = int(config["width"]), int(config["depth"])
    torch.manual_seed(seed)
    units: list[nn.Module] = [
        nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)) for _ in range(depth)
    ]

    def make(batch_size: int, seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(batch_size, seq_len, width, generator=g), torch.randn(batch_size, seq_len, width, generator=g)

    def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(out.float(), target.float())

    return ZooModel(name, "mlp", dict(config), units, [f"layer{i}" for i in range(depth)], ["layer"] * depth, make, mse)


# -- presets ------------------------------------------------------------------------------

_NO_DROPOUT_GPT2 = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "use_cache": False}

#: name -> (family, config). Config keys are the Hugging Face config's own field names.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    # The built-in default: few small blocks and GPT-2's real vocabulary, so the head
    # outweighs several blocks, as it does in real models. Untied head (see README).
    "gpt2-demo": ("gpt2", {"n_layer": 8, "n_embd": 256, "n_head": 4, "vocab_size": 50257,
                           "n_positions": 1024, "tie_word_embeddings": False, **_NO_DROPOUT_GPT2}),
    "gpt2-tiny": ("gpt2", {"n_layer": 2, "n_embd": 64, "n_head": 2, "vocab_size": 1000,
                           "n_positions": 256, "tie_word_embeddings": False, **_NO_DROPOUT_GPT2}),
    "gpt2": ("gpt2", {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257,
                      "n_positions": 1024, "tie_word_embeddings": False, **_NO_DROPOUT_GPT2}),
    "mlp-tiny": ("mlp", {"width": 32, "depth": 4}),
}

_BUILDERS: dict[str, Callable[[str, dict[str, Any], int], ZooModel]] = {
    "gpt2": _build_gpt2,
    "mlp": _build_mlp,
}


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


def build_model(name: str, overrides: dict[str, Any] | None = None, seed: int = 0,
                config: dict[str, Any] | None = None) -> ZooModel:
    """Build a zoo model by preset ``name``; ``config`` (a profile's stored config) wins over the preset."""
    if name not in PRESETS:
        raise ZooError(f"unknown model {name!r}: choose one of {', '.join(sorted(PRESETS))}")
    family, preset = PRESETS[name]
    cfg = dict(config) if config is not None else dict(preset)
    for key, value in (overrides or {}).items():
        if family != "mlp" and key not in _known_keys(family, cfg):
            raise ZooError(f"--set {key}: not a field of the {family} config")
        cfg[key] = value
    cfg.pop("model_type", None)
    try:
        return _BUILDERS[family](name, cfg, seed)
    except (TypeError, ValueError, KeyError) as e:
        raise ZooError(f"model {name!r} with config {cfg}: {str(e).splitlines()[0]}") from None


def _known_keys(family: str, cfg: dict[str, Any]) -> set[str]:
    from transformers import GPT2Config

    return set(GPT2Config().to_dict()) | set(cfg)
