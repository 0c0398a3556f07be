"""Analytic profiles: counted on the meta device, seconds for any size."""

import subprocess
import sys
import time

import pytest

from profiles.analytic import DEVICE_SPECS, analytic_profile, device_spec
from profiles.contract import UserError


def _formula_check(profile, hidden):
    e = profile.entries[0]
    tokens = e.microbatch_size * profile.seq_len
    s, b = profile.seq_len, e.microbatch_size
    blocks = [u for u in e.units if u.kind == "block"]
    for u in blocks:
        want = 2 * u.params * tokens + 4 * b * s * s * hidden
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
    assert "assumptions" in p.measurement and p.measurement["units_built"] == 3
    u = blocks[0]
    assert u.backward_s == pytest.approx(u.backward_input_s + u.backward_weight_s)
    assert p.entries[0].units[0].backward_input_s == 0.0
    assert p.model_config["num_hidden_layers"] == 80


@pytest.mark.parametrize("name,hidden", [("gpt2", 768), ("bert-base", 768), ("llama-1b", 2048)])
def test_flops_formula_other_families(name, hidden):
    _formula_check(analytic_profile(name, device_spec_name="a100", dtypes=("fp32",), seq_len=512), hidden)


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
