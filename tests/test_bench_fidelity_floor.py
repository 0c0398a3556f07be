"""The fidelity benchmark's floor: one round of the same plans taken as the prediction of another.
The note on every step-time and ranking target rests on it, so it must read zero when the
measurement repeats itself and follow the rounds when they part."""

import pytest

from bench.fidelity import _floor


def _rows(rounds: list[list[float]], pred: list[float], model: str = "m") -> list[dict]:
    """One row per plan; ``rounds[k][i]``: plan i's median step in round k."""
    return [
        {"model": model, "microbatches": 4, "pred_s": p, "rounds_s": [r[i] for r in rounds]} for i, p in enumerate(pred)
    ]


def test_a_measurement_that_repeats_itself_leaves_no_floor():
    steps = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5]
    floor = _floor(_rows([steps, steps], [s * 1.1 for s in steps]))
    assert floor["median"] == 0 and floor["max"] == 0
    assert floor["tau"] == {"m m=4": pytest.approx(1.0)}
    # the prediction's own error against one round is on the same footing: |1 / 1.1 - 1|
    assert floor["prediction_per_round"]["median"] == pytest.approx(1 - 1 / 1.1)


def test_the_floor_follows_the_rounds_apart_and_their_order():
    first = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5]
    second = list(reversed(first))  # the second round orders the plans the other way round
    floor = _floor(_rows([first, second], first))
    # |a / b - 1| over both orders of the pair: the largest is 1.5 / 1.0 - 1
    assert floor["max"] == pytest.approx(0.5)
    assert floor["tau"]["m m=4"] == pytest.approx(-1.0)
    assert floor["prediction_per_round"]["tau"]["m m=4"] == pytest.approx(0.0)  # +1 against one, -1 the other


def test_one_round_has_no_floor():
    assert _floor(_rows([[1.0] * 6], [1.0] * 6)) is None
