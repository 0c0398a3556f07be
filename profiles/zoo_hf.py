"""Hugging Face GPT-2, Llama and BERT cut into tensor-to-tensor units.

Each model is built from its config with random weights (nothing is downloaded),
in eval mode and with dropout off, with attention through PyTorch SDPA (or
FlashAttention-2 when asked for and installed). Units:

- GPT-2:  ``embed`` (token + position embedding), ``block{i}``, ``head`` (final norm + LM head);
- Llama:  ``embed``, ``block{i}`` (RoPE cos/sin computed inside each block unit from
  its own copy of the rotary module, causal attention, GQA as the config says), ``head``;
- BERT:   ``embed`` (word + position + token-type embedding and LayerNorm), ``layer{i}``
  (bidirectional attention, no padding mask), ``head`` (the masked-LM head).

Run in order, the units give the same logits as the Hugging Face model itself
(``tests/test_profiles_zoo.py`` checks it).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["BUILDERS", "config_fields", "lm_loss", "token_batch"]


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


class LlamaBlock(nn.Module):
    """A Llama decoder layer that computes its own RoPE cos/sin, so it stays tensor-to-tensor.

    Positions are ``0..s-1`` (no padding, no cache), as in ``LlamaModel.forward``.
    """

    def __init__(self, layer: nn.Module, rotary: nn.Module):
        super().__init__()
        self.layer, self.rotary = layer, rotary

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
        cos_sin = self.rotary(h, pos)
        out = self.layer(h, attention_mask=None, position_ids=pos, position_embeddings=cos_sin)
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


def _build_llama(config: dict[str, Any], attn: str) -> Built:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**config)
    stored = _finish(cfg, attn)
    hf = LlamaForCausalLM(cfg).eval()
    m = hf.model
    n = len(m.layers)
    units: list[nn.Module] = [m.embed_tokens]
    units += [LlamaBlock(layer, copy.deepcopy(m.rotary_emb)) for layer in m.layers]
    units.append(LMHead(m.norm, hf.lm_head))
    return stored, units, *_labels(n, "block"), token_batch(cfg.vocab_size), lm_loss


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


BUILDERS: dict[str, Callable[[dict[str, Any], str], Built]] = {
    "gpt2": _build_gpt2,
    "llama": _build_llama,
    "bert": _build_bert,
}


def config_fields(family: str) -> set[str]:
    """The field names of the family's Hugging Face config (what ``--set`` accepts)."""
    from .presets import config_defaults

    return set(config_defaults(family))
