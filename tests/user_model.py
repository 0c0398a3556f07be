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
