"""``pipeplan profile``: measure a zoo model and write its Profile."""

from __future__ import annotations

import argparse
from pathlib import Path

from .clikit import Command
from .types import OFF_CPU_WARN

__all__ = ["COMMAND", "default_path", "format_table"]


def _csv(kind):
    def parse(text: str):
        try:
            return tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        nargs="?",
        help="a preset (gpt2-demo, llama3-8b, mixtral-8x7b, ...: see --list), a transformers model type "
        "(qwen2, mistral, gemma2, ...), a path to a config.json, or a user model package.module:function",
    )
    p.add_argument("--list", action="store_true", help="print the presets and the supported model types, then exit")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to measure (default cpu)")
    p.add_argument(
        "--dtypes",
        type=_csv(str),
        default=None,
        help="comma list of fp32,bf16,fp16 (default fp32; bf16 with --analytic)",
    )
    p.add_argument("--microbatch-sizes", type=_csv(int), default=(1,), help="comma list (default 1)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sample (default 128)")
    p.add_argument(
        "--analytic",
        action="store_true",
        help="count FLOPs and bytes on the meta device instead of measuring (any size, seconds)",
    )
    p.add_argument(
        "--device-spec",
        default="h100",
        help="device for --analytic: h100, h200, a100, or cpu (measured here) (default h100)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of the model's Hugging Face config (repeatable)",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per unit (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up repeats (default 2)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=60.0,
        help="seconds per (dtype, microbatch size) after which timing stops at >= 2 repeats (default 60)",
    )
    p.add_argument(
        "--side-by-side",
        type=int,
        default=0,
        metavar="N",
        help="CPU: time the units while N other processes train the same model, as the other "
        "ranks of a host compute beside each rank in a pipeline (default 0: alone)",
    )
    p.add_argument("-o", "--output", type=Path, help="output file (default profiles/<device>/<model>.json)")
    p.add_argument("--json", action="store_true", help="print the Profile JSON instead of the table")


def default_path(model: str, device: str) -> Path:
    """``profiles/<device>/<model>.json``; a user spec ``pkg.mod:fn`` is stored as ``pkg.mod__fn``, a
    config file ``path/to/config.json`` as ``path_to_config``."""
    return Path("profiles") / device / f"{model.removesuffix('.json').replace(':', '__').replace('/', '_')}.json"


def format_table(profile) -> str:
    """A per-unit table, one block per (dtype, microbatch size)."""
    lines = [f"{profile.model_name} on {profile.device_name} ({profile.method}), seq_len {profile.seq_len}"]
    for g in profile.tied:
        lines.append(
            f"tied: {' and '.join(g.units)} hold one parameter of {g.params:,d} elements (each counts it; "
            "stages on different ranks sum its gradient every step)"
        )
    for e in profile.entries:
        lines.append(f"\n[{e.dtype}, microbatch {e.microbatch_size}]")
        lines.append(
            f"{'unit':<10} {'F ms':>8} {'B ms':>8} {'I ms':>8} {'W ms':>8} {'params':>11} "
            f"{'saved MiB':>10} {'out KiB':>9} {'GFLOP':>8}"
        )
        for u in e.units:
            lines.append(
                f"{u.name:<10.10} {u.forward_s * 1e3:8.2f} {u.backward_s * 1e3:8.2f} {u.backward_input_s * 1e3:8.2f} "
                f"{u.backward_weight_s * 1e3:8.2f} {u.params:11,d} {u.saved_bytes / 2**20:10.2f} "
                f"{u.output_bytes / 2**10:9.1f} {u.forward_flops / 1e9:8.3f}"
            )
        if profile.method == "measured":
            c = e.consistency
            b = sum(u.backward_s for u in e.units)
            iw = sum(u.backward_input_s + u.backward_weight_s for u in e.units) / b if b > 0 else float("nan")
            lines.append(
                f"sum of units / whole model: forward {c['forward']:.2f}, backward {c['backward']:.2f}, "
                f"saved bytes {c['saved_bytes']:.3f}; sum (I+W) / sum B {iw:.2f}"
            )
            off = (profile.measurement.get("off_cpu_fraction") or {}).get(f"{e.dtype}/mb{e.microbatch_size}", 0.0)
            if off > OFF_CPU_WARN:
                lines.append(
                    f"note: the profiler was ready but off the CPU for {off:.0%} of its timing (other load "
                    f"on this machine), so these times run high: profile again on a quiet machine"
                )
        else:
            w = e.whole_model
            lines.append(
                f"whole model: forward {w.forward_s * 1e3:.2f} ms, backward {w.backward_s * 1e3:.2f} ms, "
                f"saved {w.saved_bytes / 2**30:.2f} GiB, params {sum(u.params for u in e.units) / 1e9:.3f} B"
            )
    return "\n".join(lines)


def list_models() -> str:
    """The presets (model type, layers, parameters) and the model types built from their pp plan."""
    from .zoo import CODE_FAMILIES, PRESETS, model_types

    lines = ["presets (named configurations; --set changes any field):"]
    for name, (family, cfg) in PRESETS.items():
        layers = cfg.get("num_hidden_layers", cfg.get("n_layer", cfg.get("depth")))
        experts = cfg.get("num_local_experts") or cfg.get("n_routed_experts")
        more = f", {experts} experts, top-{cfg['num_experts_per_tok']}" if experts else ""
        tied = ", tied embeddings" if cfg.get("tie_word_embeddings") else ""
        lines.append(f"  {name:<14} {family:<12} {layers} layers{more}{tied}")
    types = [t for t in model_types() if t not in CODE_FAMILIES]
    lines.append(f"\nmodel types built from their config's base_model_pp_plan ({len(types)}):")
    line = " "
    for t in types:
        if len(line) + len(t) > 100:
            lines.append(line)
            line = " "
        line += f" {t}"
    lines.append(line)
    lines.append("with code of their own: gpt2 (no pp plan), bert (an encoder), mlp; or a config.json, or pkg.mod:fn")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json

    from . import profile_model
    from .contract import UserError
    from .zoo import parse_overrides

    if args.list:
        print(list_models())
        return 0
    if not args.model:
        raise UserError("give a MODEL to profile (a preset, a model type, a config.json or pkg.mod:fn), or --list")

    overrides = parse_overrides(args.set)
    if args.analytic:
        from .analytic import analytic_profile

        profile = analytic_profile(
            args.model,
            device_spec_name=args.device_spec,
            dtypes=args.dtypes or ("bf16",),
            microbatch_sizes=args.microbatch_sizes,
            seq_len=args.seq_len,
            overrides=overrides,
        )
        device = args.device_spec.lower()
    else:
        profile = profile_model(
            args.model,
            device=args.device,
            dtypes=args.dtypes or ("fp32",),
            microbatch_sizes=args.microbatch_sizes,
            seq_len=args.seq_len,
            overrides=overrides,
            repeats=args.repeats,
            warmup=args.warmup,
            progress=not args.json,
            budget_s=args.budget_s,
            side_by_side=args.side_by_side,
        )
        device = args.device
    out = args.output or default_path(args.model, device)
    profile.save(out)
    if args.json:
        print(json.dumps(profile.to_dict()))
    else:
        print(format_table(profile))
        print(f"\nwrote {out}")
    return 0


COMMAND = Command(
    "profile",
    "Measure (or count, with --analytic) each unit of a model: forward, backward I/W, memory; write a Profile.",
    add_arguments,
    run,
)
