"""Tensor-parallel unit costs: Korthikanti et al.'s activation bytes (with the paper's own
numbers), the selective-recompute overhead, the GEMM quantisation model and unit scaling."""

import math
from dataclasses import replace

import pytest

from profiles.types import UnitCost
from simulator.collectives import Link, all_reduce_s, tp_block_comm_s
from simulator.tensor_parallel import (
    GemmDevice,
    TransformerShape,
    block_activation_bytes,
    block_compute_scale,
    block_forward_flops,
    gemm_efficiency,
    head_compute_scale,
    scale_unit,
    selective_recompute_share,
    tp_degrees,
)

# Korthikanti et al. 2022 §5: "For GPT-3, a = 96, s = 2048, and h = 12288 ... 5as/h = 80.
# For MT-NLG, a = 128, s = 2048, and h = 20480 so 5as/h = 64." Vocabulary 51200 (§6).
GPT3 = TransformerShape(seq_len=2048, microbatch=1, hidden=12288, heads=96, kv_heads=96, ffn=4 * 12288, vocab=51200)
MTNLG = TransformerShape(seq_len=2048, microbatch=1, hidden=20480, heads=128, kv_heads=128, ffn=4 * 20480, vocab=51200)
SBH = 2048 * 12288  # GPT-3's s·b·h


def test_table2_formulas_on_gpt3_at_t8():
    assert 5 * GPT3.heads * GPT3.seq_len / GPT3.hidden == 80
    assert 5 * MTNLG.heads * MTNLG.seq_len / MTNLG.hidden == 64
    assert block_activation_bytes(GPT3) == pytest.approx(SBH * (34 + 80))  # no parallelism
    assert block_activation_bytes(GPT3, 8) == pytest.approx(SBH * (10 + 24 / 8 + 80 / 8))  # TP: 23 sbh
    assert block_activation_bytes(GPT3, 8, sequence_parallel=True) == pytest.approx(SBH / 8 * 114)  # TP + SP
    assert block_activation_bytes(GPT3, 8, recompute="selective") == pytest.approx(SBH * 13)  # TP + selective
    assert block_activation_bytes(GPT3, 8, sequence_parallel=True, recompute="selective") == pytest.approx(34 * SBH / 8)
    assert block_activation_bytes(GPT3, 8, recompute="full") == pytest.approx(2 * SBH)
    # with SP the checkpointed block input is split along the sequence
    assert block_activation_bytes(GPT3, 8, sequence_parallel=True, recompute="full") == pytest.approx(2 * SBH / 8)


def test_selective_recompute_saves_70_and_65_percent():
    # §5: "we can save 70% and 65% of the required memory for activations for GPT-3 and MT-NLG"
    for shape, saving in ((GPT3, 0.70), (MTNLG, 0.65)):
        kept = block_activation_bytes(shape, recompute="selective") / block_activation_bytes(shape)
        assert 1 - kept == pytest.approx(saving, abs=0.005)


def test_sequence_parallel_plus_selective_is_about_five_times_less():
    # §6.1 / Figure 7: against TP alone (Eq. 2), SP + selective is "under 20%" (about 5x less) and full
    # recompute "at 10%" for the 175B-1T models at t = 8
    for shape in (GPT3, MTNLG):
        tp = block_activation_bytes(shape, 8)
        both = block_activation_bytes(shape, 8, sequence_parallel=True, recompute="selective")
        assert 0.17 < both / tp < 0.21
        assert 0.08 < block_activation_bytes(shape, 8, recompute="full") / tp < 0.10


def test_selective_recompute_overhead_matches_the_paper():
    # §5: "The recomputation of these activations introduces only 2.7% and 1.6% FLOPs overhead"
    assert block_forward_flops(GPT3) == pytest.approx(24 * SBH * 12288 + 4 * 2048**2 * 12288)
    assert selective_recompute_share(GPT3) == pytest.approx(0.027, abs=0.0005)
    assert selective_recompute_share(MTNLG) == pytest.approx(0.016, abs=0.0005)


def test_other_dtypes_and_flash_attention():
    fp32 = TransformerShape(2048, 1, 12288, 96, 96, 4 * 12288, 51200, dtype_bytes=4)
    assert block_activation_bytes(fp32) == pytest.approx(2 * block_activation_bytes(GPT3))
    flash = TransformerShape(2048, 1, 12288, 96, 96, 4 * 12288, 51200, attention_scores_stored=False)
    assert block_activation_bytes(flash, 8) == pytest.approx(SBH * 13)


def test_gemm_efficiency_by_hand():
    dev = GemmDevice(sms=132)
    # 4096 x 1536: 16 x 12 = 192 tiles of 256x128 -> 2 waves of 132 -> 4096*1536 / (2*132*256*128)
    assert gemm_efficiency(4096, 1536, dev) == pytest.approx(4096 * 1536 / (2 * 132 * 256 * 128))
    assert gemm_efficiency(4096, 1536, None) == 1.0
    assert gemm_efficiency(256 * 132, 128, dev) == pytest.approx(1.0)  # exactly one full wave


def test_block_scale_is_one_over_t_without_quantisation():
    for t in (1, 2, 4, 8):
        assert block_compute_scale(GPT3, t, None) == pytest.approx(1 / t)
        assert head_compute_scale(GPT3, t, None) == pytest.approx(1 / t)


def test_block_scale_by_hand_when_every_gemm_fits_one_wave():
    # every GEMM of this block fits one wave at t = 1 and t = 2, so its time is proportional to k:
    # splitting n (QKV, MLP up) saves nothing, splitting k (output projection, MLP down) halves it.
    tiny = TransformerShape(seq_len=256, microbatch=1, hidden=256, heads=2, kv_heads=2, ffn=1024, vocab=1000)
    ks_t1 = 256 + 128 + 256 + 256 + 256 + 1024  # QKV, QK^T, AV, out, up, down
    ks_t2 = 256 + 128 + 256 + 128 + 256 + 512
    assert block_compute_scale(tiny, 2, GemmDevice(132)) == pytest.approx(ks_t2 / ks_t1)


def test_quantisation_makes_splitting_cost_more_than_ideal():
    llama70 = TransformerShape(seq_len=8192, microbatch=1, hidden=8192, heads=64, kv_heads=8, ffn=28672, vocab=128256)
    dev = GemmDevice(132)
    scales = [block_compute_scale(llama70, t, dev) * t for t in (1, 2, 4, 8)]
    assert scales[0] == 1.0 and all(x >= 1.0 - 1e-12 for x in scales)


def unit(kind, **kw):
    base = dict(
        name=kind,
        kind=kind,
        forward_s=1.0,
        backward_s=2.0,
        backward_input_s=1.0,
        backward_weight_s=1.0,
        params=800,
        param_bytes=3200,
        saved_bytes=114_000,
        output_bytes=8000,
        forward_flops=1.0,
    )
    return UnitCost(**{**base, **kw})


def test_scale_block_unit():
    link = Link(5e-6, 450e9)
    c = scale_unit(unit("block"), GPT3, 8, sequence_parallel=False, recompute="selective", link=link)
    assert c.forward_s == pytest.approx(1 / 8) and c.backward_weight_s == pytest.approx(1 / 8)
    assert c.saved_bytes == 13_000  # 114k measured * (13 sbh) / (114 sbh)
    assert c.recompute_s == pytest.approx(selective_recompute_share(GPT3) / 8)
    assert c.params == 100 and c.output_bytes == 8000
    assert (c.comm_forward_s, c.comm_backward_s) == tp_block_comm_s(8, SBH * 2, link, sequence_parallel=False)
    full = scale_unit(unit("block"), GPT3, 8, sequence_parallel=True, recompute="full", link=link)
    assert full.recompute_s == full.forward_s and full.saved_bytes == 250  # 2 sbh / 8 of 114 sbh
    assert full.output_bytes == 1000 and full.comm_backward_s == pytest.approx(2 * full.comm_forward_s)


def test_scale_embedding_and_head():
    link = Link(5e-6, 450e9)
    e = scale_unit(unit("embedding"), GPT3, 4, link=link)
    assert (e.forward_s, e.backward_weight_s, e.params) == (1.0, 1.0, 200)
    assert e.comm_forward_s == pytest.approx(all_reduce_s(4, SBH * 2, link)) and e.comm_backward_s == 0.0
    h = scale_unit(unit("head"), GPT3, 4, link=link)
    assert h.forward_s == pytest.approx(1 / 4) and h.params == 200 and h.saved_bytes == 28_500
    assert h.comm_forward_s == pytest.approx(3 * all_reduce_s(4, 2048 * 4, link))
    assert h.comm_backward_s == pytest.approx(all_reduce_s(4, SBH * 2, link))
    # recompute applies to blocks only
    assert scale_unit(unit("head"), GPT3, 4, recompute="full").recompute_s == 0.0


def test_units_without_a_tp_form_and_bad_degrees_refused():
    assert scale_unit(unit("layer"), GPT3, 1).forward_s == 1.0
    with pytest.raises(ValueError, match="no tensor-parallel form"):
        scale_unit(unit("layer"), GPT3, 2)
    with pytest.raises(ValueError, match="must divide"):
        scale_unit(unit("block"), GPT3, 5)


def test_shape_from_config_and_tp_degrees():
    llama = {
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 128256,
        "hidden_act": "silu",
    }
    s = TransformerShape.from_config(llama, seq_len=4096, microbatch=1)
    assert (s.kv_heads, s.ffn, s.gated_mlp, s.head_dim) == (8, 14336, True, 128)
    assert block_forward_flops(s) == pytest.approx(
        2 * 4096 * (4096 * (4096 + 2 * 8 * 128) + 4096 * 4096 + 3 * 4096 * 14336) + 4 * 4096**2 * 4096
    )
    gpt2 = TransformerShape.from_config({"n_embd": 768, "n_head": 12, "vocab_size": 50257}, seq_len=1024, microbatch=2)
    assert (gpt2.ffn, gpt2.gated_mlp, gpt2.kv_heads) == (3072, False, 12)
    assert tp_degrees(8, 64, 8) == [1, 2, 4, 8]
    assert tp_degrees(8, 12, 12) == [1, 2, 4]
    assert tp_degrees(8, 32, 2) == [1, 2]


def test_activation_bytes_generalised_to_llama_by_hand():
    # llama3-8b: a=32, kv=8, h=4096, ffn=14336, gated, no dropout. In sbh units: kept whole 2+2+4 = 8;
    # split Q 2 + K,V 2*(8/32) each + out 2 + MLP 6*14336/4096 = 21 -> 26; scores 2*a*s/h = 2*32*4096/4096 = 64
    llama = TransformerShape(4096, 1, 4096, 32, 8, 14336, 128256, gated_mlp=True, dropout=False)
    sbh = 4096 * 4096
    assert block_activation_bytes(llama) == pytest.approx(98 * sbh)
    assert block_activation_bytes(llama, 8) == pytest.approx((8 + 26 / 8 + 64 / 8) * sbh)
    assert block_activation_bytes(llama, 8, sequence_parallel=True) == pytest.approx(98 / 8 * sbh)
    assert block_activation_bytes(llama, 8, sequence_parallel=True, recompute="selective") == pytest.approx(
        34 / 8 * sbh
    )
    cfg = {"hidden_size": 4096, "num_attention_heads": 32, "vocab_size": 10, "attention_dropout": 0.0}
    assert not TransformerShape.from_config(cfg, seq_len=8, microbatch=1).dropout
    cfg = {"n_embd": 768, "n_head": 12, "vocab_size": 50257, "resid_pdrop": 0.1}
    assert TransformerShape.from_config(cfg, seq_len=8, microbatch=1).dropout


def test_analytic_blocks_keep_korthikanti_bytes():
    """An analytic profile's block keeps Korthikanti et al.'s activation bytes at every degree (the
    eager model counted on meta keeps more); with a fused attention kernel the s×s term is gone."""
    from profiles.analytic import analytic_profile
    from simulator.costs import Layout, Option, Recompute, unit_records

    over = {"n_embd": 512, "n_head": 8, "n_layer": 2, "vocab_size": 4096, "n_positions": 1024, "attn_pdrop": 0.1}
    for attention in ("math", "flash"):
        prof = analytic_profile("gpt2", overrides=over, seq_len=1024, device_spec_name="a100", attention=attention)
        shape = TransformerShape.from_config(prof.model_config, seq_len=1024, microbatch=1, flash=attention == "flash")
        for t, sp in ((1, False), (2, True)):
            recs = unit_records(prof, Option("bf16", Recompute.NONE), layout=Layout(tp=t, sequence_parallel=sp))
            want = block_activation_bytes(shape, t, sequence_parallel=sp)
            assert recs[1].activation_bytes == math.ceil(want), (attention, t)
    s, a = 1024, 8
    assert block_activation_bytes(replace(shape, attention_scores_stored=True)) - block_activation_bytes(
        shape
    ) == pytest.approx(5 * a * s * s)


def test_residual_stream_work_runs_whole_without_sequence_parallelism():
    """Korthikanti et al. §4.2.2: norms, residual adds and hidden dropouts are replicated across the
    tensor-parallel group; sequence parallelism splits them along the sequence."""
    u = unit("block", residual_forward_s=0.25, residual_backward_s=0.125)  # of forward 1 s, I 1 s
    tp = scale_unit(u, GPT3, 8, recompute="full")
    assert tp.forward_s == pytest.approx(0.75 / 8 + 0.25)
    assert tp.backward_input_s == pytest.approx(0.875 / 8 + 0.125)
    assert tp.backward_weight_s == pytest.approx(1 / 8) and tp.recompute_s == tp.forward_s
    sp = scale_unit(u, GPT3, 8, sequence_parallel=True, recompute="full")
    assert sp.forward_s == pytest.approx(1 / 8) and sp.backward_input_s == pytest.approx(1 / 8)
    assert scale_unit(u, GPT3, 1).forward_s == pytest.approx(1.0)
