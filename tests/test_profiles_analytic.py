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


# -- GEMMs by shape, rooflines per op, attention as the kernel runs it ------------------------

GPT_SMALL = {"n_embd": 1024, "n_head": 16, "n_layer": 2, "vocab_size": 8192, "n_positions": 2048}
LLAMA_SMALL = {
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "num_hidden_layers": 2,
    "vocab_size": 8192,
    "max_position_embeddings": 1024,
}


def test_matmul_efficiency_from_the_published_maximum_and_waves():
    """A large, well-quantised GEMM runs at the device's published achievable share; a GEMM of
    fewer tiles than SMs runs slower by its wave share."""
    from profiles.gemm import GEMM_DEVICES, gemm_efficiency, matmul_efficiency

    a100 = GEMM_DEVICES["a100"]
    assert a100.achievable == pytest.approx(271.2 / 312 * 1305 / 1410)  # the burst rate at the sustained clock
    assert matmul_efficiency(1024, 10240, a100) == pytest.approx(a100.achievable)  # the measured shape
    assert matmul_efficiency(256 * 108, 128, a100) == pytest.approx(a100.achievable)  # one full wave: capped
    small = matmul_efficiency(256, 128 * 10, a100)  # 10 tiles on 108 SMs
    assert small == pytest.approx(
        a100.achievable * gemm_efficiency(256, 1280, a100) / gemm_efficiency(1024, 10240, a100)
    )
    assert small < 0.1 * a100.achievable


def test_hopper_gemms_run_at_the_sustained_rate():
    """Where a sustainable matmul rate is published (H100/H200), GEMMs are priced at it, below the
    burst rate, and at their full share for the shape it was measured at (one full wave)."""
    from profiles.gemm import GEMM_DEVICES, gemm_efficiency, matmul_efficiency

    h100 = GEMM_DEVICES["h100"]
    assert h100 is GEMM_DEVICES["h200"] and "sustainable" in h100.source
    assert h100.achievable == pytest.approx(745 / 989.5) and h100.achievable < 794.5 / 989.5  # below the burst
    assert gemm_efficiency(1536, 2816, h100) == 1.0  # 6 x 22 tiles: one wave on 132 SMs
    assert matmul_efficiency(1536, 2816, h100) == pytest.approx(h100.achievable)
    assert "sustained clock" in GEMM_DEVICES["a100"].source  # no sustainable A100 figure: its burst one, derated


def test_a100_burst_figures_at_its_sustained_clock():
    """The A100's burst measurements (matmul sweep, FlashAttention-2) are taken at the clock it
    sustains at its power limit: 1305 of 1410 MHz."""
    from profiles.devices import A100_SUSTAINED_CLOCK_SHARE, DEVICE_SPECS, FA2_A100

    assert A100_SUSTAINED_CLOCK_SHARE == pytest.approx(1305 / 1410)
    assert DEVICE_SPECS["a100"].attention_efficiency == pytest.approx(FA2_A100 * 1305 / 1410)
    assert DEVICE_SPECS["h100"].attention_efficiency == 0.35  # no sustained H100 clock is taken


def test_op_roofline_and_fused_pointwise():
    """A GEMM op is priced at its shape's rate or its bytes, whichever is slower; a pointwise run is
    one kernel of its outside reads and last write; a unit is the sum of its ops."""
    from profiles.analytic import DEVICE_SPECS, op_seconds
    from profiles.gemm import GEMM_DEVICES, matmul_efficiency
    from profiles.ops import Op

    spec, dev = DEVICE_SPECS["h100"], GEMM_DEVICES["h100"]
    big = Op("mm", 2.0 * 8192**3, 3 * 8192**2 * 2, gemm=(1, 8192, 8192, 8192))
    rate = 989.4e12 * matmul_efficiency(8192, 8192, dev)
    assert 0.95 * dev.achievable < rate / 989.4e12 <= dev.achievable
    assert op_seconds(big, spec, "bf16", dev) == pytest.approx(2.0 * 8192**3 / rate)
    thin = Op("mm", 2.0 * 8192 * 8192 * 8, (8192 * 8 * 2 + 8192 * 8 * 2 + 8192 * 8192 * 2), gemm=(1, 8192, 8192, 8))
    assert op_seconds(thin, spec, "bf16", dev) == pytest.approx(thin.bytes / (spec.bandwidth * spec.memory_efficiency))
    p = analytic_profile("gpt2", overrides=GPT_SMALL, seq_len=2048, device_spec_name="h100")
    block = p.entries[0].units[1]
    assert block.backward_s == pytest.approx(block.backward_input_s + block.backward_weight_s)
    w_gemms = 2 * 2048 * 12 * 1024**2  # the weight-gradient products: 2 x tokens x 12h² weights
    assert w_gemms / (989.4e12 * dev.achievable) < block.backward_weight_s < 1.5 * w_gemms / (989.4e12 * 0.5)


def test_pointwise_run_is_one_kernel():
    import torch

    from profiles.ops import OpRecorder

    x = torch.empty(1024, 1024, device="meta", dtype=torch.bfloat16)
    with OpRecorder() as rec:
        y = torch.nn.functional.gelu(x * 2.0 + 1.0, approximate="tanh")  # several pointwise ops
        torch.mm(y, x)
    rec.flush()
    names = [op.name for op in rec.ops]
    assert names == ["pointwise", "aten.mm"]
    assert rec.ops[0].bytes == 2 * x.numel() * 2  # read x, write the result: nothing in between


def test_unfused_pointwise_each_its_own_kernel():
    """``fusion="none"`` (eager): each pointwise operation reads its inputs and writes its output."""
    import torch

    from profiles.ops import OpRecorder

    x = torch.empty(1024, 1024, device="meta", dtype=torch.bfloat16)
    with OpRecorder(fusion="none") as rec:
        y = (x * 2.0 + 1.0).relu()  # three pointwise ops
        torch.mm(y, x)
    rec.flush()
    assert [op.name for op in rec.ops] == ["aten.mul", "aten.add", "aten.relu", "aten.mm"]
    assert [op.bytes for op in rec.ops[:3]] == [2 * x.numel() * 2] * 3  # read one, write one each
    with pytest.raises(ValueError, match="fusion"):
        OpRecorder(fusion="some")


class _RMSNorm(__import__("torch").nn.Module):
    """An eager RMSNorm as torchtitan's ``rmsnorm`` and Hugging Face's Llama write it."""

    def __init__(self, dim: int) -> None:
        import torch

        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim, device="meta"))

    def forward(self, x):
        import torch

        y = x.float()
        return (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6)).type_as(x) * self.weight


def test_fused_norm_is_one_kernel_forward_and_backward():
    """``fusion="norm"``: a norm layer is one kernel each way (it reads its input and weight and
    writes its output), the operations around it each their own kernel; ``none`` runs the norm's
    operations one by one and moves several times the bytes."""
    import torch

    from profiles.ops import OpRecorder

    norm = _RMSNorm(1024)
    x = torch.empty(8, 1024, device="meta", dtype=torch.float32, requires_grad=True)
    moved = {}
    for fusion in ("norm", "none"):
        rec = OpRecorder(fusion=fusion)
        with rec.fusing_norms(norm), rec:
            y = norm(x * 2.0).relu()
        rec.flush()
        forward = [op.name for op in rec.ops]
        rec.ops, rec.backward, grad = [], True, torch.ones_like(y)
        with rec:
            y.backward(grad)
        rec.flush()
        moved[fusion] = sum(op.bytes for op in rec.ops)
        if fusion == "norm":
            assert forward == ["aten.mul", "fused norm", "aten.relu"]
            assert rec.ops[0].name == "aten.threshold_backward" and "fused norm" in [op.name for op in rec.ops]
            assert rec.ops[-1].name == "aten.mul"  # x * 2's backward, after the norm's
        else:
            assert "fused norm" not in forward and forward.count("aten.pow") == 1
    assert moved["none"] > 2 * moved["norm"]


def test_fusion_recorded_and_priced():
    """The profile records its fusion; eager blocks cost more than fused ones, and a fused norm
    costs less than the default's norm (whose reduction and casts break its pointwise runs)."""
    kw = {"overrides": LLAMA_SMALL, "seq_len": 1024, "device_spec_name": "a100", "attention": "flash"}
    blocks = {f: analytic_profile("llama3-8b", fusion=f, **kw) for f in ("default", "none", "norm")}
    assert {f: p.measurement["fusion"] for f, p in blocks.items()} == {f: f for f in blocks}
    d, n, m = (blocks[f].entries[0].units[1] for f in ("default", "none", "norm"))
    assert n.forward_s > d.forward_s and n.backward_input_s > d.backward_input_s
    assert m.residual_forward_s < d.residual_forward_s
    assert n.forward_flops == d.forward_flops == m.forward_flops
    with pytest.raises(UserError, match="--fusion"):
        analytic_profile("llama3-8b", fusion="eager", **kw)


@pytest.mark.parametrize("device", ["a100", "h100"])
def test_flash_attention_keeps_no_scores_and_halves_causal_flops(device):
    """A fused kernel keeps no s×s tensors and counts half of QKᵀ and attention over V when causal;
    math keeps today's counts. The kernel is written into the profile and read back."""
    kw = {"overrides": GPT_SMALL, "seq_len": 2048, "device_spec_name": device}
    math_p, flash_p = analytic_profile("gpt2", **kw), analytic_profile("gpt2", attention="flash", **kw)
    m, f = math_p.entries[0].units[1], flash_p.entries[0].units[1]
    s, h, a = 2048, 1024, 16
    assert m.forward_flops - f.forward_flops == pytest.approx(2 * s * s * h, rel=1e-6)  # 4bs²h halved
    assert m.saved_bytes - f.saved_bytes == a * s * s * 2 - a * s * 4  # bf16 probabilities, not the fp32 lse
    assert f.saved_bytes < m.saved_bytes / 2
    assert flash_p.attention == "flash" and math_p.attention == "math"


def test_unfused_attention_reproduces_the_standard_attention_benchmark():
    """The math path's s×s kernels run at the bandwidth share derived from FlashAttention-3's
    standard-attention measurement (119 TFLOP/s forward, H100, sequence 2k, head dim 128, 16k
    tokens, hidden 2048): the path as the profiler counts and prices it gives that rate back, the
    derivation counts the bytes the profiler counts, and a fused kernel's traffic is not slowed."""
    import torch

    from profiles.analytic import op_seconds
    from profiles.devices import SCORES_MEMORY_EFFICIENCY, standard_attention_bytes
    from profiles.gemm import GEMM_DEVICES
    from profiles.ops import _attention_ops

    spec, dev = DEVICE_SPECS["h100"], GEMM_DEVICES["h100"]
    q = torch.empty(8, 16, 2048, 128, dtype=torch.bfloat16, device="meta")
    ops = _attention_ops(q, q, q, False, "math", False, backward=False)
    assert all(op.scores for op in ops)
    assert sum(op.bytes for op in ops) == standard_attention_bytes(8, 16, 2048, 128)
    flops = 4 * 8 * 2048**2 * 16 * 128
    assert flops / sum(op_seconds(op, spec, "bf16", dev) for op in ops) == pytest.approx(119e12, rel=1e-6)
    assert 0.55 < SCORES_MEMORY_EFFICIENCY < spec.memory_efficiency
    for kernel in ("flash", "efficient"):
        (fused,) = _attention_ops(q, q, q, True, kernel, False, backward=False)
        assert not fused.scores
    for name in ("a100", "h200"):  # the one published share on every device
        assert DEVICE_SPECS[name].scores_bandwidth == pytest.approx(
            DEVICE_SPECS[name].bandwidth * SCORES_MEMORY_EFFICIENCY
        )


def test_attention_field_round_trip_and_old_profiles(tmp_path):
    import json

    from profiles.contract import ContractError
    from profiles.types import load_profile

    p = analytic_profile("gpt2-tiny", attention="efficient", seq_len=64)
    path = p.save(tmp_path / "p.json")
    assert load_profile(path).attention == "efficient" and load_profile(path).fused_attention
    data = json.loads(path.read_text())
    del data["attention"]  # a profile written before the field: read as math
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = load_profile(tmp_path / "old.json")
    assert old.attention is None and not old.fused_attention
    data["attention"] = "cudnn"
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ContractError, match="attention"):
        load_profile(tmp_path / "bad.json")
    with pytest.raises(UserError, match="--attention"):
        analytic_profile("gpt2-tiny", attention="cudnn", seq_len=64)


def test_residual_stream_operations_are_recorded_apart():
    """A GPT block's layer norms and residual adds (with their dropouts) are its residual-stream work:
    no FLOPs, a tokens × width result; products, attention and the MLP's activation are not."""
    overrides = {**GPT_SMALL, "attn_pdrop": 0.1, "resid_pdrop": 0.1}
    block = analytic_profile("gpt2", overrides=overrides, seq_len=2048, device_spec_name="a100").entries[0].units[1]
    assert 0 < block.residual_forward_s < 0.2 * block.forward_s
    assert 0 < block.residual_backward_s < 0.2 * block.backward_input_s

    import torch

    from profiles.ops import OpRecorder

    x = torch.empty(4, 1024, device="meta", dtype=torch.bfloat16)
    w = torch.empty(1024, 4096, device="meta", dtype=torch.bfloat16)
    with OpRecorder(tokens=4, width=1024) as rec:
        y = torch.nn.functional.layer_norm(x, (1024,))
        z = torch.nn.functional.gelu(torch.mm(y, w))  # a 4 × 4096 pointwise run
        torch.mm(z, w.t()) + x  # back to the width, added to the stream
    rec.flush()
    assert [(op.name, op.residual) for op in rec.ops] == [
        ("aten.native_layer_norm", True),
        ("aten.mm", False),
        ("pointwise", False),
        ("aten.mm", False),
        ("pointwise", True),
    ]
