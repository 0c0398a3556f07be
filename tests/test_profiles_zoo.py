"""The zoo: units in order give the Hugging Face model's output; seeds, configs, user models."""

import pytest
import torch

from profiles.zoo import PRESETS, ZooError, build_model, parse_overrides

#: tiny configs of decoder families (model type -> overrides); each declares a pp plan
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 1000,
}
FAMILIES = {
    "llama": {"num_key_value_heads": 2},
    "mistral": {"num_key_value_heads": 2, "sliding_window": 4},
    "qwen2": {"num_key_value_heads": 2},
    "gemma2": {"num_key_value_heads": 2, "head_dim": 16, "sliding_window": 4},  # tied, soft-capped
    "phi3": {"num_key_value_heads": 2, "pad_token_id": 0},
    "gpt_neox": {},
    "mixtral": {"num_key_value_heads": 2, "num_local_experts": 4},
    "deepseek_v3": {
        "num_key_value_heads": 4,
        "moe_intermediate_size": 32,
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "first_k_dense_replace": 1,
        "q_lora_rank": 32,
        "kv_lora_rank": 16,
        "qk_nope_head_dim": 8,
        "qk_rope_head_dim": 8,
        "v_head_dim": 8,
        "n_group": 2,
        "topk_group": 1,
    },
}


def _hf_logits(family, config, seed, ids, attn="sdpa"):
    import transformers

    cfg = transformers.AutoConfig.for_model(family, **{k: v for k, v in config.items() if k != "model_type"})
    cls = transformers.BertForMaskedLM if family == "bert" else transformers.AutoModelForCausalLM
    torch.manual_seed(seed)
    with torch.no_grad():
        if family == "bert":
            cfg._attn_implementation = attn
            return cls(cfg).eval()(ids).logits
        return cls.from_config(cfg, attn_implementation=attn).eval()(ids).logits


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny", "bert-tiny"])
def test_units_in_order_match_hugging_face(name):
    zm = build_model(name, seed=3)
    ids, _ = zm.make_batch(2, 16, 0)
    with torch.no_grad():
        out = zm.forward(ids)
    torch.testing.assert_close(out, _hf_logits(zm.family, zm.config, 3, ids))
    assert len(zm.units) == len(zm.unit_names) == len(zm.unit_kinds)
    assert zm.unit_kinds[0] == "embedding" and zm.unit_kinds[-1] == "head"


def test_llama_units_use_gqa_and_causal_attention():
    zm = build_model("llama-tiny")
    attn = zm.units[1].layer.self_attn
    assert attn.config.num_key_value_heads < attn.config.num_attention_heads
    ids, _ = zm.make_batch(1, 12, 0)
    with torch.no_grad():
        full = zm.forward(ids)
        prefix = zm.forward(ids[:, :6])
    torch.testing.assert_close(full[:, :6], prefix)  # causal: later tokens do not change earlier logits


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny", "bert-tiny", "mlp-tiny", "tests.user_model:build"])
def test_same_seed_same_weights_and_config_round_trip(name):
    a = build_model(name, seed=5)
    b = build_model(name, seed=5)
    c = build_model(a.name, config=a.config, seed=5)  # how the executor rebuilds from a profile
    x, _ = a.make_batch(2, 8, 1)
    with torch.no_grad():
        ya = a.forward(x)
        torch.testing.assert_close(ya, b.forward(x))
        torch.testing.assert_close(ya, c.forward(x))
        assert not torch.equal(ya, build_model(name, seed=6).forward(x))
    assert c.config == a.config and c.unit_names == a.unit_names


def test_overrides_change_the_config_and_are_stored():
    zm = build_model("gpt2-tiny", parse_overrides(["n_layer=3", "n_embd=32"]))
    assert zm.config["n_layer"] == 3 and zm.config["n_embd"] == 32 and len(zm.units) == 5
    again = build_model("gpt2-tiny", config=zm.config)
    assert len(again.units) == 5
    ll = build_model("llama-tiny", {"num_hidden_layers": 1})
    assert ll.unit_names == ["embed", "block0", "head"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_decoder_units_from_the_pp_plan_match_hugging_face(family):
    """Embedding, each layer, norm + head, found from the config's base_model_pp_plan; positions,
    rotary embeddings and (sliding-window) masks computed inside each unit by the model's own code."""
    zm = build_model(family, {**TINY, **FAMILIES[family]}, seed=3)
    assert zm.unit_names == ["embed", "block0", "block1", "head"] and zm.family == family
    ids, _ = zm.make_batch(2, 12, 0)
    attn = "eager" if family == "gemma2" else "sdpa"  # Gemma 2 supports no SDPA (soft-capping)
    with torch.no_grad():
        torch.testing.assert_close(zm.forward(ids), _hf_logits(family, zm.config, 3, ids, attn))
        other, _ = zm.make_batch(2, 12, 1)  # the layers' inputs (positions, masks) now come from the cache
        torch.testing.assert_close(zm.forward(other), _hf_logits(family, zm.config, 3, other, attn))


def test_tied_embeddings_stay_tied_and_moe_counts_active_params():
    gemma = build_model("gemma2", {**TINY, **FAMILIES["gemma2"]})
    (units, p), *more = gemma.tied()
    assert not more and units == [0, 3] and p is gemma.units[0].prefix.shell.embed_tokens.weight
    mix = build_model("mixtral", {**TINY, **FAMILIES["mixtral"]})
    assert mix.moe == (4, 2) and not mix.tied()
    block = sum(p.numel() for p in mix.units[1].parameters())
    experts = 4 * 3 * 64 * 128  # gate, up and down projections of 4 experts
    assert mix.active_params(1) == block - experts // 2 and mix.active_params(0) == 1000 * 64


def test_an_unseen_model_type_from_a_config_json(tmp_path):
    """A config.json of a model type no preset names (OLMo 2) builds from its pp plan alone."""
    import json

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "olmo2", "architectures": ["Olmo2ForCausalLM"], **TINY}))
    zm = build_model(str(path), {"num_hidden_layers": 3})
    assert zm.family == "olmo2" and len(zm.units) == 5 and zm.config["model_type"] == "olmo2"
    again = build_model(str(path), config=zm.config)  # how the executor rebuilds it: from the profile alone
    ids, _ = zm.make_batch(1, 8, 0)
    with torch.no_grad():
        torch.testing.assert_close(zm.forward(ids), again.forward(ids))


def test_presets_are_configurations_and_model_types_are_listed():
    from profiles.zoo import CODE_FAMILIES, model_types

    types = model_types()
    assert {"llama", "mistral", "qwen2", "gemma2", "phi3", "gpt_neox", "mixtral", "deepseek_v3"} <= set(types)
    for name, (family, cfg) in PRESETS.items():
        assert isinstance(cfg, dict) and (family in CODE_FAMILIES or family in types), name


def test_user_module_with_a_module_list_is_cut_at_its_blocks():
    from tests.user_model import TinyLM

    zm = build_model("tests.user_model:build_module", seed=1)
    assert zm.unit_names == ["embed", "block0", "block1", "block2", "head"]
    assert [u for u, _ in zm.tied()] == [[0, 4]]  # the head's weight is the embedding's
    torch.manual_seed(1)
    ref = TinyLM()
    ids, target = zm.make_batch(2, 5, 0)
    with torch.no_grad():
        torch.testing.assert_close(zm.forward(ids), ref(ids))
    loss = zm.loss_fn(zm.forward(ids), target)  # last unit outputs the vocabulary: cross entropy
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(ref(ids).flatten(0, 1), target.flatten()))


def test_user_batch_and_loss_functions_and_analytic_on_meta():
    zm = build_model("tests.user_model:build_with_functions", {"width": 6})
    assert zm.unit_names == ["block0", "block1", "block2", "head"]  # nothing runs before the blocks
    x, t = zm.make_batch(2, 3, 0)
    assert x.shape == (2, 3, 6) and float(t.mean()) == 1.0
    torch.testing.assert_close(zm.loss_fn(zm.forward(x), t), torch.nn.functional.l1_loss(zm.forward(x), t))
    from profiles.analytic import analytic_profile

    p = analytic_profile("tests.user_model:build_module", dtypes=("fp32",), seq_len=16)
    assert p.unit_names == ["embed", "block0", "block1", "block2", "head"] and p.measurement["units_counted"] == 3
    assert [g.units for g in p.tied] == [("embed", "head")]


def test_embedding_first_unit_list_takes_tokens():
    zm = build_model("tests.user_model:build_embedding_first")
    ids, target = zm.make_batch(2, 6, 0)
    assert ids.dtype == torch.long and int(ids.max()) < 1000
    out = zm.forward(ids)
    torch.testing.assert_close(
        zm.loss_fn(out, target), torch.nn.functional.cross_entropy(out.flatten(0, 1), target.flatten())
    )


def test_user_function_list_and_zoo_model():
    zm = build_model("tests.user_model:build", {"width": 8, "depth": 2})
    assert zm.family == "user" and zm.name == "tests.user_model:build" and zm.config == {"width": 8, "depth": 2}
    x, t = zm.make_batch(2, 4, 0)
    assert x.shape == (2, 4, 8)
    assert zm.loss_fn(zm.forward(x), t).ndim == 0
    z2 = build_model("tests.user_model:build_zoo")
    assert z2.unit_names == ["in", "act", "out"] and z2.name == "tests.user_model:build_zoo"


@pytest.mark.parametrize(
    "name,overrides,match",
    [
        ("no-such-model", None, "unknown model"),
        ("gpt2-tiny", {"not_a_field": 1}, "not a field"),
        ("qwen2", {"not_a_field": 1}, "not a field"),
        ("gpt2-tiny", {"n_embd": 30, "n_head": 4}, "cannot be built"),
        ("no_such_pkg.mod:fn", None, "cannot import"),
        ("tests.user_model:missing", None, "has no function"),
        ("tests.user_model:NOT_A_FUNCTION", None, "has no function"),
        ("tests.user_model:build", {"bogus": 1}, "rejected its arguments"),
        ("tests.user_model:build_skip", None, "more than one value passes"),
        ("tests.user_model:build_branchy", None, "torch.fx cannot trace"),
        ("tests.user_model:build_no_list", None, "holds no nn.ModuleList"),
        ("tests.user_model:NOT_A_FUNCTION", None, "has no function"),
        ("no/such/config.json", None, "no such config file"),
    ],
)
def test_bad_input_is_a_zoo_error(name, overrides, match):
    with pytest.raises(ZooError, match=match):
        build_model(name, overrides)


def test_parse_overrides():
    assert parse_overrides(["n_layer=8", "act=gelu", "x=1.5"]) == {"n_layer": 8, "act": "gelu", "x": 1.5}
    with pytest.raises(ZooError):
        parse_overrides(["n_layer"])


def test_profile_file_keeps_the_tie_and_refuses_a_bad_one(tmp_path):
    import json

    from profiles.analytic import analytic_profile
    from profiles.contract import ContractError
    from profiles.types import load_profile

    p = analytic_profile("gemma2", overrides={**TINY, **FAMILIES["gemma2"]}, seq_len=16)
    path = p.save(tmp_path / "g.json")
    assert load_profile(path).tied == p.tied and p.tied[0].params == 1000 * 64
    d = json.loads(path.read_text())
    d["tied"][0]["units"] = ["embed", "no-such-unit"]
    path.write_text(json.dumps(d))
    with pytest.raises(ContractError, match="tied"):
        load_profile(path)


def test_a_decoder_whose_layers_need_more_than_hidden_states_is_refused_in_one_line():
    """Gemma 4 feeds every layer per-layer token embeddings: its units cannot run on their own."""
    from profiles.zoo_hf import config_fields

    small = {**TINY, "num_key_value_heads": 2, "head_dim": 16}
    with pytest.raises(ZooError, match="do not run on their own") as err:
        build_model("gemma4_text", {k: v for k, v in small.items() if k in config_fields("gemma4_text")})
    assert "\n" not in str(err.value) and "package.module:function" in str(err.value)
