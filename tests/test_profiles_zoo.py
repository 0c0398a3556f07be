"""The zoo: units in order give the Hugging Face model's output; seeds, configs, user models."""

import pytest
import torch

from profiles.zoo import PRESETS, ZooError, build_model, parse_overrides


def _hf_logits(family, config, seed, ids):
    import transformers

    model_cls, cfg_cls = {
        "gpt2": (transformers.GPT2LMHeadModel, transformers.GPT2Config),
        "llama": (transformers.LlamaForCausalLM, transformers.LlamaConfig),
        "bert": (transformers.BertForMaskedLM, transformers.BertConfig),
    }[family]
    cfg = cfg_cls(**{k: v for k, v in config.items() if k != "model_type"})
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.no_grad():
        return model_cls(cfg).eval()(ids).logits


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


def test_presets_keep_embeddings_untied():
    for name, (family, cfg) in PRESETS.items():
        if family != "mlp":
            assert cfg["tie_word_embeddings"] is False, name


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
        ("gpt2-tiny", {"n_embd": 30, "n_head": 4}, "cannot be built"),
        ("no_such_pkg.mod:fn", None, "cannot import"),
        ("tests.user_model:missing", None, "has no function"),
        ("tests.user_model:NOT_A_FUNCTION", None, "has no function"),
        ("tests.user_model:build", {"bogus": 1}, "rejected its arguments"),
    ],
)
def test_bad_input_is_a_zoo_error(name, overrides, match):
    with pytest.raises(ZooError, match=match):
        build_model(name, overrides)


def test_parse_overrides():
    assert parse_overrides(["n_layer=8", "act=gelu", "x=1.5"]) == {"n_layer": 8, "act": "gelu", "x": 1.5}
    with pytest.raises(ZooError):
        parse_overrides(["n_layer"])
