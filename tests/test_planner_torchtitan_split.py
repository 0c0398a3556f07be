"""torchtitan's pipeline split rule, against splits worked out by hand from the rule."""

import pytest

from planner.baselines import torchtitan_split
from profiles.contract import UserError
from profiles.types import Profile, ProfileEntry, UnitCost, WholeModel


def profile(kinds: list[str]) -> Profile:
    units = tuple(UnitCost(f"u{i}", k, 1.0, 2.0, 1.0, 1.0, 10, 40, 100, 10, 0.0) for i, k in enumerate(kinds))
    entry = ProfileEntry("bf16", 1, units, WholeModel(len(units), 2.0 * len(units), 100 * len(units)))
    return Profile("t", {}, "test", "cpu", 16, "analytic", (entry,), {})


def llm(blocks: int) -> Profile:
    return profile(["embedding", *["block"] * blocks, "head"])


def first_units(bounds: list[tuple[int, int]]) -> list[int]:
    return [first for first, _ in bounds[1:]]


def test_llama3_8b_on_8_stages():
    # 34 effective layers over 8 stages: 5,5,4,4,4,4,4,4; less one block on the first and last stage:
    # E+4 | 5 | 4 | 4 | 4 | 4 | 4 | 3+L
    bounds = torchtitan_split(llm(32), 8)
    assert first_units(bounds) == [5, 10, 14, 18, 22, 26, 30]
    assert bounds[0] == (0, 5) and bounds[-1] == (30, 34)


def test_other_cases_by_hand():
    # 32 blocks, 4 stages: 34 = 9,9,8,8 -> E+8 | 9 | 8 | 7+L
    assert first_units(torchtitan_split(llm(32), 4)) == [9, 18, 26]
    # gpt2's 12 blocks, 4 stages: 14 = 4,4,3,3 -> E+3 | 4 | 3 | 2+L
    assert first_units(torchtitan_split(llm(12), 4)) == [4, 8, 11]
    # weights 2 and 2: 36 = 5,5,5,5,4,4,4,4 -> E+3 | 5 | 5 | 5 | 4 | 4 | 4 | 2+L
    assert first_units(torchtitan_split(llm(32), 8, 2, 2)) == [4, 9, 14, 19, 23, 27, 31]
    # 4 blocks, 4 stages: 6 = 2,2,1,1 -> E+1 | 2 | 1 | L (the head alone)
    assert torchtitan_split(llm(4), 4) == [(0, 2), (2, 4), (4, 5), (5, 6)]
    # one stage: everything
    assert torchtitan_split(llm(4), 1) == [(0, 6)]


def test_blocks_without_embedding_or_head_units():
    # 8 blocks, 4 stages: 10 = 3,3,2,2 -> 2 | 3 | 2 | 1 (the weights still come off the end stages)
    assert first_units(torchtitan_split(profile(["block"] * 8), 4)) == [2, 5, 7]


def test_refused_as_torchtitan_refuses():
    with pytest.raises(UserError, match="weight above"):
        torchtitan_split(llm(4), 4, input_weight=2)
    with pytest.raises(UserError, match="effective layers"):
        torchtitan_split(llm(4), 7)
    with pytest.raises(UserError, match="kind 'block'"):
        torchtitan_split(profile(["layer"] * 6), 2)
    with pytest.raises(UserError, match="empty"):
        torchtitan_split(profile(["block"] * 3), 3)  # 5 = 2,2,1 -> stage 2 gets 1 - 1 = 0 blocks
