"""A user's own model cut into units: an ``nn.Module`` with its blocks in an ``nn.ModuleList``.

The module is traced with ``torch.fx`` (the blocks kept whole, as leaves) and its graph split
at the blocks: what runs before the first block is the first unit, each block a unit, what runs
after the last block the last unit (``torch.fx.passes.split_module``). The split units hold the
model's own submodules, so shared parameters (a tied embedding) stay shared.

Limits (each a one-line error saying what to return instead):
- the forward must trace with ``torch.fx``: no Python control flow on tensor values;
- it takes one tensor and calls the blocks of one ``nn.ModuleList`` (the one holding the most
  parameters) once each, in order, each block taking one tensor: the previous block's output;
- exactly one tensor passes from one unit to the next (no skip connection around a block, no
  value computed before the blocks and used after them).

Batch and loss, when the user passes none: a first unit whose first weight layer is an
``nn.Embedding`` takes token ids below its ``num_embeddings`` (the vocabulary), and the target
is the next token; the loss is cross entropy when the last output's last dimension is the
vocabulary size, otherwise the mean square of the output. A first unit starting with
``nn.Linear`` takes ``randn(batch, seq, in_features)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import fx, nn

from .presets import ZooError as UserError

__all__ = ["split_module", "default_batch_and_loss"]


def _blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        return None
    return max(lists, key=lambda nm: (sum(p.numel() for p in nm[1].parameters()), -nm[0].count(".")))


class _BlocksAsLeaves(fx.Tracer):
    def __init__(self, blocks: nn.ModuleList):
        super().__init__()
        self.leaves = {id(b) for b in blocks}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return id(m) in self.leaves or super().is_leaf_module(m, qualname)


def split_module(spec: str, model: nn.Module, what: str) -> tuple[list[nn.Module], list[str], list[str]]:
    """Units (before the blocks, each block, after them), their names and kinds."""
    from torch.fx.passes.split_module import split_module as fx_split

    found = _blocks(model)
    if found is None:
        raise UserError(f"user model {spec!r}: {type(model).__name__} holds no nn.ModuleList of blocks; {what}")
    list_name, blocks = found
    try:
        graph = _BlocksAsLeaves(blocks).trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure is a model fx cannot follow
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"user model {spec!r}: torch.fx cannot trace its forward ({msg}); {what}") from None
    gm = fx.GraphModule(model, graph)
    index = {f"{list_name}.{i}": i for i in range(len(blocks))}
    part, parts, seen = 0, {}, []
    last = len(blocks) - 1
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in index:
            part = index[node.target] + 1
            seen.append(index[node.target])
        elif seen and seen[-1] == last:
            part = last + 2  # after the last block: the last unit
        parts[node] = part
    if seen != list(range(len(blocks))):
        raise UserError(f"user model {spec!r}: the forward calls {list_name}'s blocks in the order {seen}; {what}")
    split = fx_split(gm, model, lambda n: parts[n], keep_original_order=True)
    units, names, kinds, prev = [], [], [], None
    for node in split.graph.nodes:
        if node.op != "call_module":
            continue
        k = int(node.target.removeprefix("submod_"))
        ok = len(node.args) == 1 and not node.kwargs and (prev is None or node.args[0] is prev)
        if not ok or sum(1 for u in node.users if u.op != "output") > 1:
            raise UserError(
                f"user model {spec!r}: more than one value passes between {list_name}'s blocks and the code "
                f"around them (a skip connection or a value used on both sides); {what}"
            )
        prev = node
        units.append(getattr(split, node.target))
        if k == 0:
            embeds = any(isinstance(m, nn.Embedding) for m in units[-1].modules())
            names.append("embed" if embeds else "pre")
            kinds.append("embedding" if embeds else "layer")
        elif k <= len(blocks):
            names.append(f"block{k - 1}")
            kinds.append("block")
        else:
            names.append("head")
            kinds.append("head")
    return units, names, kinds


def default_batch_and_loss(spec: str, units: list[nn.Module], what: str) -> tuple[Callable, Callable]:
    """A batch maker and a loss for units whose first weight layer is an embedding or a linear."""
    first = next((m for m in units[0].modules() if isinstance(m, (nn.Embedding, nn.Linear))), None)
    if first is None:
        raise UserError(
            f"user model {spec!r}: no nn.Embedding or nn.Linear in the first unit to size the input; "
            "pass make_batch: return (model, make_batch, loss_fn)"
        )
    if isinstance(first, nn.Embedding):
        vocab = first.num_embeddings

        def tokens(batch_size: int, seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
            g = torch.Generator().manual_seed(seed)
            t = torch.randint(0, vocab, (batch_size, seq_len + 1), generator=g)
            return t[:, :-1].contiguous(), t[:, 1:].contiguous()

        def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            if out.shape[-1] == vocab and target.shape == out.shape[:-1]:
                return nn.functional.cross_entropy(out.flatten(0, -2).float(), target.flatten())
            return out.float().pow(2).mean()

        return tokens, loss
    d = first.in_features

    def features(batch_size: int, seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(batch_size, seq_len, d, generator=g), torch.empty(0)

    def mean_square(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return out.float().pow(2).mean()

    return features, mean_square
