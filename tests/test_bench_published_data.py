"""The published-configurations table and its FLOP formulas: each table's own columns must agree
with each other and with the papers' equations, so a mistyped figure fails here."""

import pytest

from bench.published_data import (
    A100_BF16_PEAK,
    KORTHIKANTI_2022,
    LLAMA3_2024,
    NARAYANAN_2021,
    PUBLISHED,
    model_flops_per_iteration,
    narayanan_flops_per_iteration,
    narayanan_params,
)


def test_flop_formulas_by_hand():
    # B=2, s=4, l=3, h=8, V=16: 96*2*4*3*64 * (1 + 4/48 + 16/384) = 147456 * 1.125
    assert narayanan_flops_per_iteration(2, 4, 3, 8, 16) == pytest.approx(165888)
    # 72*2*3*4*64 * (1 + 4/48 + 16/288)
    assert model_flops_per_iteration(2, 4, 3, 8, 16) == pytest.approx(110592 * (1 + 1 / 12 + 1 / 18))
    # Eq. (3) is Eq. (7) plus one more forward of the layers (recomputation), 24*B*s*l*h^2*(1 + s/(6h))
    b, s, l_, h, v = 1536, 2048, 80, 12288, 51200
    extra = narayanan_flops_per_iteration(b, s, l_, h, v) - model_flops_per_iteration(b, s, l_, h, v)
    assert extra == pytest.approx(24 * b * s * l_ * h**2 * (1 + s / (6 * h)))


def test_narayanan_table1_is_self_consistent():
    assert len(NARAYANAN_2021) == 10
    for r in NARAYANAN_2021:
        assert r.gpus == r.tp * r.pp * r.dp, r.model
        assert round(narayanan_params(r.layers, r.hidden, r.vocab, r.seq_len) / 1e9, 1) == r.params_b, r.model
        assert r.gpus * r.tflops_per_gpu / 1000 == pytest.approx(r.aggregate_pflops, rel=0.01), r.model
        assert r.tflops_per_gpu * 1e12 / A100_BF16_PEAK == pytest.approx(r.peak_fraction, abs=0.006), r.model


def test_korthikanti_mfu_follows_from_eq7_and_iteration_time():
    for r in KORTHIKANTI_2022:
        flops = model_flops_per_iteration(r.global_batch, r.seq_len, r.layers, r.hidden, r.vocab)
        mfu = flops / r.iteration_s / r.gpus / A100_BF16_PEAK
        assert mfu == pytest.approx(r.peak_fraction, abs=0.002), r.model
        assert r.gpus == r.tp * r.pp * r.dp


def test_llama3_rows_multiply_out():
    for r in LLAMA3_2024:
        assert r.gpus == r.tp * r.cp * r.pp * r.dp
        assert r.global_batch * r.seq_len == 16 * 2**20  # "16M" tokens per batch


def test_every_row_is_a_valid_layout():
    for r in PUBLISHED:
        assert r.hidden % r.heads == 0 and r.heads % r.tp == 0 and r.kv_heads % r.tp == 0, r.model
        assert r.layers >= r.pp and r.source


def test_every_row_states_how_it_ran():
    """Attention kernel, recompute, dp mode, schedule and where the settings come from, on every row;
    the microbatches divide each replica's batch and the stages fit the layers."""
    from profiles.types import ATTENTION_KERNELS
    from simulator.modes import DPMode
    from simulator.schedules import schedule_spec

    modes = [m.value for m in DPMode]

    for r in PUBLISHED:
        assert r.attention in ATTENTION_KERNELS and r.recompute in ("none", "selective", "full"), r.model
        assert r.dp_mode in modes and r.settings, r.model
        schedule_spec(r.schedule)  # a known schedule
        assert r.microbatch and (r.global_batch // r.dp) % r.microbatch == 0, r.model
        assert r.virtual >= 1 and r.pp * r.virtual <= r.layers + (2 if r.ends_take_a_layer else 0), r.model
    # the SC'21 script's virtual stages: layers / (pp x layers per virtual stage)
    assert [r.virtual for r in NARAYANAN_2021] == [1, 1, 1, 1, 1, 3, 2, 2, 3, 1]
    assert [r.microbatch for r in NARAYANAN_2021] == [16, 16, 16, 8, 4, 2, 2, 1, 1, 1]


def test_torchtitan_rows_mfu_follows_from_tokens_per_second():
    from bench.published_data import TORCHTITAN_2024, llama_params, torchtitan_flops_per_token

    assert 70.0e9 < llama_params(80, 8192, 64, 8, 28672, 128256) < 71.0e9  # Llama 3 70B: 70.6B
    assert 12.9e9 < llama_params(40, 5120, 40, 40, 13824, 32000) < 13.1e9  # Llama 2 13B: 13.0B
    for r in TORCHTITAN_2024:
        params = llama_params(r.layers, r.hidden, r.heads, r.kv_heads, r.ffn, r.vocab)
        wps = float(r.notes.split()[0])
        mfu = wps * torchtitan_flops_per_token(params, r.layers, r.hidden, r.seq_len) / A100_BF16_PEAK
        assert mfu == pytest.approx(r.peak_fraction, abs=0.003), r.model
        assert r.gpus == r.tp * r.pp * r.dp


def test_llama3_layout_is_the_papers_balanced_ends():
    """Llama 3 §3.3.2: one layer fewer on the first and the last stage, "the first model chunk on the
    first stage has only the embedding" (and the last only the head): one layer per model chunk."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
    from published import _bounds

    for r in LLAMA3_2024:
        assert r.ends_take_a_layer and r.pp * r.virtual == r.layers + 2
        bounds = _bounds(r.layers, r.pp * r.virtual, r.ends_take_a_layer)
        assert bounds[0] == (0, 1) and bounds[-1] == (r.layers + 1, r.layers + 2)  # embedding; head
        assert all(e - f == 1 for f, e in bounds)
    # Megatron's default: blocks dealt evenly, the embedding with the first, the head with the last
    assert _bounds(5, 2) == [(0, 4), (4, 7)]
    assert _bounds(4, 3, True) == [(0, 2), (2, 4), (4, 6)]
