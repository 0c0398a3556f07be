"""Analytic profiles: counted on the meta device, seconds for any size."""

import subprocess
import sys
import time

import pytest

from profiles.analytic import DEVICE_SPECS, analytic_profile, device_spec
from profiles.contract import UserError
from profiles.zoo import CODE_FAMILIES, PRESETS


def _formula_check(profile, hidden):
    """Block FLOPs = 2 x active params x tokens + 4 b s^2 h, with h the attention width
    (heads x head dim; for DeepSeek's MLA the mean of its query-key and value widths)."""
    e = profile.entries[0]
    tokens = e.microbatch_size * profile.seq_len
    s, b = profile.seq_len, e.microbatch_size
    blocks = [u for u in e.units if u.kind == "block"]
    for u in blocks:
        want = 2 * u.active_params * tokens + 4 * b * s * s * hidden
        assert abs(u.forward_flops / want - 1) <= 0.02, (u.name, u.forward_flops, want)
    return blocks


def test_llama3_70b_in_seconds_and_flops_formula():
    t0 = time.perf_counter()
    p = analytic_profile("llama3-70b", device_spec_name="h100", dtypes=("bf16",), microbatch_sizes=(1, 2), seq_len=4096)
    assert time.perf_counter() - t0 < 30
    assert p.method == "analytic" and p.num_units == 82
    blocks = _formula_check(p, 8192)
    assert len(blocks) == 80
    assert 70.0e9 < sum(u.params for u in p.entries[0].units) < 71.0e9
    assert "assumptions" in p.measurement and p.measurement["units_counted"] == 3
    u = blocks[0]
    assert u.backward_s == pytest.approx(u.backward_input_s + u.backward_weight_s)
    assert p.entries[0].units[0].backward_input_s == 0.0
    assert p.model_config["num_hidden_layers"] == 80


@pytest.mark.parametrize("name,hidden", [("gpt2", 768), ("bert-base", 768), ("llama-1b", 2048)])
def test_flops_formula_other_families(name, hidden):
    _formula_check(analytic_profile(name, device_spec_name="a100", dtypes=("fp32",), seq_len=512), hidden)


def _attention_width(cfg: dict) -> int:
    if "v_head_dim" in cfg:  # multi-head latent attention: q.k over qk_nope + qk_rope, then values
        return cfg["num_attention_heads"] * (cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"] + cfg["v_head_dim"]) // 2
    return cfg["num_attention_heads"] * cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])


@pytest.mark.parametrize("name", [n for n, (family, _) in PRESETS.items() if family not in CODE_FAMILIES])
def test_every_decoder_preset_analytic_within_2_percent(name):
    """Every preset profiles analytically; MoE blocks count their active parameters (top-k
    experts and the router), while params hold every expert."""
    p = analytic_profile(name, seq_len=512)
    cfg = PRESETS[name][1]
    blocks = _formula_check(p, _attention_width(cfg))
    assert len(blocks) == cfg["num_hidden_layers"]
    moe = any(k in cfg for k in ("num_local_experts", "n_routed_experts"))
    assert any(u.active_params < u.params for u in blocks) == moe
    if cfg.get("tie_word_embeddings"):
        (tie,) = p.tied
        assert tie.units == ("embed", "head") and tie.params == cfg["vocab_size"] * cfg["hidden_size"]


def test_mixtral_params_total_and_active():
    p = analytic_profile("mixtral-8x7b", seq_len=256)
    units = p.entries[0].units
    total, active = sum(u.params for u in units), sum(u.active_params for u in units)
    assert 46.0e9 < total < 47.5e9 and 12.5e9 < active < 13.2e9  # Mixtral 8x7B: 46.7B total, 12.9B active


def test_device_specs_and_bad_names():
    assert set(DEVICE_SPECS) == {"h100", "h200", "a100"}
    assert DEVICE_SPECS["h200"].bandwidth > DEVICE_SPECS["h100"].bandwidth
    cpu = device_spec("cpu")
    assert cpu.flops["fp32"] > 1e8 and cpu.bandwidth > 1e8
    with pytest.raises(UserError):
        device_spec("tpu9")


def test_cli_analytic_writes_the_default_path(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "profiles", "llama-tiny", "--analytic", "--device-spec", "h200", "--seq-len", "32"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[1]), "PATH": ""},
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "profiles" / "h200" / "llama-tiny.json").is_file()
    assert "block1" in r.stdout
