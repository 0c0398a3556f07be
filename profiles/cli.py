"""``pipeplan profile``: measure a zoo model and write its Profile."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .clikit import Command, bounded
from .contract import UserError, check_outputs
from .neighbour import default_count
from .presets import check_overrides, check_seq_len, parse_overrides
from .types import DTYPES, OFF_CPU_WARN

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
    p.add_argument(
        "--seq-len",
        type=int,
        help="tokens per sample (default 128; with --analytic, the model's training context: its config's "
        "max_position_embeddings, at most 8192)",
    )
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
        "--attention",
        choices=["flash", "efficient", "math"],
        default=None,
        help="attention kernel for --analytic: flash or efficient (fused: no s x s scores kept, causal half "
        "the products) or math (products and softmax, scores kept) (default math)",
    )
    p.add_argument(
        "--fusion",
        choices=["default", "none", "norm"],
        default=None,
        help="how pointwise operations run, for --analytic: default (each run of them one kernel, as fused "
        "kernels or a compiler run them), none (eager PyTorch: each its own kernel), norm (eager, but each norm "
        "layer one kernel) (default default)",
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
        default=None,
        metavar="N",
        help="CPU: time the units while N other processes train the same model, as the other "
        "ranks of a host compute beside each rank in a pipeline (default: 1 on a CPU host with 2 "
        "or more cores, where a plan's ranks share the host; 0 on GPU; 0: alone)",
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
                    f"on this machine); the times count its CPU time only, but the load also shared caches "
                    f"and memory bandwidth: profile again on a quiet machine to be sure"
                )
        else:
            w = e.whole_model
            lines.append(
                f"whole model: forward {w.forward_s * 1e3:.2f} ms, backward {w.backward_s * 1e3:.2f} ms, "
                f"saved {w.saved_bytes / 2**30:.2f} GiB, params {sum(u.params for u in e.units) / 1e9:.3f} B"
            )
    return "\n".join(lines)


#: the largest microbatch size the profiler measures, and the longest sequence
MAX_MICROBATCH_SIZE = 4096
MAX_SEQ_LEN = 2**20


def _check_flags(args: argparse.Namespace) -> None:
    """Flags that are wrong whatever the model, refused before torch is imported."""
    dtypes = args.dtypes or ()
    for d in dtypes:
        if d not in DTYPES:
            raise UserError(f"--dtypes: unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
    if len(set(dtypes)) != len(dtypes):
        raise UserError(f"--dtypes {','.join(dtypes)}: a dtype is named twice: name each once")
    if args.dtypes is not None and not dtypes or not args.microbatch_sizes:
        raise UserError("--dtypes and --microbatch-sizes must name at least one value")
    if len(set(args.microbatch_sizes)) != len(args.microbatch_sizes):
        raise UserError(
            f"--microbatch-sizes {','.join(map(str, args.microbatch_sizes))}: a size is named twice: name each once"
        )
    bounded("--microbatch-sizes", args.microbatch_sizes, 1, MAX_MICROBATCH_SIZE)
    if args.seq_len is not None:
        bounded("--seq-len", args.seq_len, 1, MAX_SEQ_LEN)
    bounded("--repeats", args.repeats, 1, 10_000)
    bounded("--warmup", args.warmup, 0, 1_000)
    bounded("--budget-s", args.budget_s, 0.001, 1e6, " seconds")
    if args.side_by_side is None:
        args.side_by_side = 0 if args.analytic else default_count(args.device)
    bounded("--side-by-side", args.side_by_side, 0, 256)
    model_file = Path(args.model) if ":" not in args.model and Path(args.model).exists() else None
    out = args.output or default_path(args.model, args.device_spec.lower() if args.analytic else args.device)
    check_outputs([model_file], [("-o", out)])


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


#: the longest default sequence of an analytic profile (a model's context may be far longer)
ANALYTIC_SEQ_CAP = 8192


def default_seq_len(model: str, overrides: dict, analytic: bool) -> int:
    """128 for a measured profile; for an analytic one the model's training context (its config's
    ``max_position_embeddings`` or ``n_positions``), at most ``ANALYTIC_SEQ_CAP``, else 2048."""
    if not analytic:
        return 128
    from .presets import PRESETS

    config = {**(PRESETS[model][1] if model in PRESETS else {}), **overrides}
    context = config.get("max_position_embeddings") or config.get("n_positions")
    if not context and model not in PRESETS and ":" not in model:
        try:
            from transformers import AutoConfig

            path = Path(model)
            cfg = AutoConfig.from_pretrained(path) if path.is_file() else AutoConfig.for_model(model)
            context = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        except Exception:  # noqa: BLE001 - no context known: the default below
            context = None
    return min(int(context), ANALYTIC_SEQ_CAP) if context else 2048


def run(args: argparse.Namespace) -> int:
    import json

    if args.list:
        print(list_models())
        return 0
    if not args.model:
        raise UserError("give a MODEL to profile (a preset, a model type, a config.json or pkg.mod:fn), or --list")
    _check_flags(args)
    overrides = parse_overrides(args.set)
    check_overrides(args.model, overrides)  # before torch is imported: a slip costs a second
    seq_note = None
    if args.seq_len is None:
        args.seq_len = default_seq_len(args.model, overrides, args.analytic)
        if args.analytic:
            seq_note = f"--seq-len {args.seq_len} (the model's training context, at most {ANALYTIC_SEQ_CAP})"
    check_seq_len(args.model, overrides, args.seq_len)
    from . import profile_model

    if args.attention is not None and not args.analytic:
        raise UserError("--attention: the kernel is priced by analytic profiles only: add --analytic")
    if args.fusion is not None and not args.analytic:
        raise UserError("--fusion: a measured profile times the kernels as they ran: add --analytic to price them")
    if args.analytic:
        from .analytic import analytic_profile

        profile = analytic_profile(
            args.model,
            device_spec_name=args.device_spec,
            dtypes=args.dtypes or ("bf16",),
            microbatch_sizes=args.microbatch_sizes,
            seq_len=args.seq_len,
            overrides=overrides,
            attention=args.attention or "math",
            fusion=args.fusion or "default",
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
    if seq_note:
        print(seq_note, file=sys.stderr)
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
