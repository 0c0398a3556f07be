"""A tiny user model for tests: ``tests.user_model:build`` and ``tests.user_model:build_zoo``."""

import torch
from torch import nn

from profiles.zoo import ZooModel


def build(width: int = 16, depth: int = 3):
    """A list of units: the zoo supplies a random batch and a mean-square loss."""
    return [nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, width)) for _ in range(depth)]


def build_zoo(width: int = 8):
    """A ZooModel with its own batch maker and loss."""
    units = [nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1)]

    def make(batch_size, seq_len, seed):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(batch_size, seq_len, width, generator=g), torch.zeros(batch_size, seq_len, 1)

    return ZooModel(
        "ignored",
        "user",
        {},
        units,
        ["in", "act", "out"],
        ["layer", "act", "layer"],
        make,
        lambda out, t: nn.functional.mse_loss(out, t),
    )


def broken():
    raise TypeError("takes no arguments")  # noqa: EM101 - a test fixture


NOT_A_FUNCTION = 3


class TinyLM(nn.Module):
    """A user's own model: an embedding, blocks in an nn.ModuleList, a norm and a head tied to the embedding."""

    def __init__(self, vocab: int = 100, width: int = 16, depth: int = 3, tied: bool = True):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        if tied:
            self.head.weight = self.embed.weight

    def forward(self, ids):
        h = self.embed(ids) * 2.0
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))


def build_module(vocab: int = 100, width: int = 16, depth: int = 3, tied: bool = True):
    """An nn.Module with a ModuleList: the zoo finds the units."""
    return TinyLM(vocab, width, depth, tied)


def build_embedding_first(vocab: int = 1000, width: int = 64):
    """A list of units that starts with an nn.Embedding (token inputs) and ends at the vocabulary."""
    mlp = [nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)) for _ in range(3)]
    return [nn.Embedding(vocab, width), *mlp, nn.Linear(width, vocab)]


class Skips(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))

    def forward(self, x):
        y = self.blocks[0](x)
        return self.blocks[1](y) + x


def build_skip():
    """A value used on both sides of the blocks: its units cannot be found."""
    return Skips()


def build_with_functions(width: int = 8):
    """(model, make_batch, loss_fn): the user's own batch and loss."""

    def make(batch_size, seq_len, seed):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(batch_size, seq_len, width, generator=g), torch.ones(batch_size, seq_len, width)

    return TinyMLP(width), make, lambda out, t: nn.functional.l1_loss(out, t)


class TinyMLP(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(3))

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))

    def forward(self, x):
        if x.sum() > 0:  # control flow on a tensor's value: torch.fx cannot trace it
            x = -x
        for b in self.blocks:
            x = b(x)
        return x


def build_branchy():
    return Branchy()


def build_no_list():
    return nn.Linear(4, 4)
