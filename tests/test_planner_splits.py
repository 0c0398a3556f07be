"""The min-max splitter every balanced split comes from (the screen, the DeepSpeed-style
baseline, the fallback of a MILP without an answer) against brute force."""

from itertools import combinations

from hypothesis import given, settings
from hypothesis import strategies as st

from planner.splits import min_max_split


def _heaviest(weights, bounds):
    return max(sum(weights[a:b]) for a, b in bounds)


def _brute_force(weights, S):
    U = len(weights)
    best = None
    for ends in combinations(range(1, U), S - 1):
        edges = [0, *ends, U]
        heaviest = _heaviest(weights, list(zip(edges[:-1], edges[1:])))
        best = heaviest if best is None else min(best, heaviest)
    return best


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(min_value=0.001, max_value=10.0), min_size=1, max_size=12),
    st.integers(min_value=1, max_value=6),
)
def test_the_heaviest_stage_is_as_light_as_any_contiguous_split_allows(weights, S):
    S = min(S, len(weights))
    bounds = min_max_split(weights, S)
    assert len(bounds) == S and bounds[0][0] == 0 and bounds[-1][1] == len(weights)
    assert all(a < b for a, b in bounds) and all(b == c for (_, b), (c, _) in zip(bounds, bounds[1:]))
    assert _heaviest(weights, bounds) <= _brute_force(weights, S) * (1 + 1e-9)


def test_a_long_chain_of_equal_blocks_is_cut_evenly_not_into_single_units():
    # llama3-70b's shape: a light embedding, 80 equal blocks, a head: the last stage used to
    # take 79 units (the greedy check never capped the stage after the last cut)
    weights = [0.0046] + [0.0164] * 80 + [0.0132]
    bounds = min_max_split(weights, 4)
    assert [b - a for a, b in bounds] == [21, 20, 20, 21]
