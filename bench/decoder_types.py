"""Which model types of the installed transformers pipeplan cuts from their pp plan.

    python bench/decoder_types.py [MODEL_TYPE ...]

For every causal-LM model type whose config declares a ``base_model_pp_plan`` (or those
named), builds a small model (two layers, width 64, vocabulary 1000, four experts where it has
experts: the config fields of that name it has), runs its units in order on random tokens and
compares the logits with the Hugging Face model's own. Prints one row per type and a count:

- ``ok``: the units give the model's logits (max abs difference < 1e-4);
- ``differs``: they run but give other logits;
- ``refused``: pipeplan refuses the model in one line (its layers need more than the hidden
  states, or no layer list), while the Hugging Face model runs;
- ``config``: the small config is not valid for the model itself (the Hugging Face model fails
  too): no verdict;
- ``skipped``: still over 20M parameters with these fields (no verdict).
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SMALL = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
    "head_dim": 16,
    "moe_intermediate_size": 32,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "max_position_embeddings": 256,
    "first_k_dense_replace": 1,
    "n_group": 1,
    "topk_group": 1,
    "shared_expert_intermediate_size": 64,
}


def _hf_runs(model_type: str, fields: dict) -> str | None:
    """None when the Hugging Face model runs with ``fields``, else why not."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **fields)).eval()
        with torch.no_grad():
            hf(torch.zeros(1, 2, dtype=torch.long))
    except Exception as e:  # noqa: BLE001 - any failure means the config is not valid for the model
        return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:90]}"
    return None


def check(model_type: str) -> tuple[str, str]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from profiles.zoo import build_model
    from profiles.zoo_hf import config_fields

    known = config_fields(model_type)
    fields = {k: v for k, v in SMALL.items() if k in known}
    try:
        meta = build_model(model_type, fields, device="meta")
        n = sum(p.numel() for u in meta.units for p in u.parameters())
        if n > 20e6:
            return "skipped", f"{n / 1e6:.0f}M parameters"
        zm = build_model(model_type, fields, seed=3)
    except Exception as e:  # noqa: BLE001 - reported per type
        why = _hf_runs(model_type, fields)
        return ("config", why) if why else ("refused", str(e)[:150])
    ids, _ = zm.make_batch(2, 8, 0)
    cfg = AutoConfig.for_model(model_type, **{k: v for k, v in zm.config.items() if k != "model_type"})
    attn = getattr(zm.units[1].layer, "config", cfg)._attn_implementation
    torch.manual_seed(3)
    hf = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn).eval()
    with torch.no_grad():
        diff = (zm.forward(ids) - hf(ids).logits).abs().max().item()
    return ("ok", f"{diff:.1e}") if diff < 1e-4 else ("differs", f"{diff:.1e}")


def main() -> int:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import transformers

    from profiles.zoo_hf import decoder_types

    types = sys.argv[1:] or decoder_types()
    counts: dict[str, int] = {}
    for t in types:
        verdict, note = check(t)
        counts[verdict] = counts.get(verdict, 0) + 1
        print(f"{t:<22} {verdict:<8} {note}", flush=True)
    print(
        f"\ntransformers {transformers.__version__}, {len(types)} types: "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
