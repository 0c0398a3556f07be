"""Synthetic Profiles for planner tests: random small chains, written to a file (plans refer to one)."""

from __future__ import annotations

import random
from pathlib import Path

from profiles.types import Profile, ProfileEntry, UnitCost, WholeModel


def synthetic_profile(units: list[dict], path: Path, name: str = "synthetic", seq_len: int = 16) -> Path:
    """``units``: dicts with f, b, params, saved, out (seconds, counts, bytes); I = b * 0.5 + W split."""
    costs = []
    for i, u in enumerate(units):
        i_share = u.get("i_share", 0.5)
        costs.append(
            UnitCost(
                u.get("name", f"block{i}"),
                u.get("kind", "block"),
                u["f"],
                u["b"],
                u["b"] * i_share,
                u["b"] * (1 - i_share),
                u["params"],
                u["params"] * 4,
                u["saved"],
                u["out"],
                0.0,
            )
        )
    whole = WholeModel(
        sum(c.forward_s for c in costs), sum(c.backward_s for c in costs), sum(c.saved_bytes for c in costs)
    )
    prof = Profile(
        name,
        {},
        "synthetic",
        "cpu",
        seq_len,
        "analytic",
        (ProfileEntry("fp32", 1, tuple(costs), whole),),
        {"note": "synthetic, for tests"},
    )
    prof.save(path)
    return path


def random_units(rng: random.Random, n: int) -> list[dict]:
    """A chain with uneven units: a light embedding, blocks of varying cost, sometimes a heavy head."""
    out = []
    for i in range(n):
        f = rng.uniform(0.5, 3.0) * 1e-3
        if i == n - 1 and rng.random() < 0.5:
            f *= rng.uniform(2, 5)
        out.append(
            {
                "f": f,
                "b": f * rng.uniform(1.5, 2.5),
                "params": rng.randint(10_000, 400_000),
                "saved": rng.randint(50_000, 2_000_000),
                "out": rng.randint(1_000, 200_000),
                "i_share": rng.uniform(0.4, 0.6),
            }
        )
    return out
