"""``pipeplan profile``: measure a zoo model and write its Profile."""

from __future__ import annotations

import argparse
from pathlib import Path

from .clikit import Command

__all__ = ["COMMAND", "default_path", "format_table"]


def _csv(kind):
    def parse(text: str):
        try:
            return tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="zoo preset, e.g. gpt2-demo (the default model), gpt2-tiny, gpt2, mlp-tiny")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to measure (default cpu)")
    p.add_argument("--dtypes", type=_csv(str), default=("fp32",), help="comma list of fp32,bf16,fp16 (default fp32)")
    p.add_argument("--microbatch-sizes", type=_csv(int), default=(1,), help="comma list (default 1)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sample (default 128)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the model's Hugging Face config (repeatable)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per unit (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs per unit (default 2)")
    p.add_argument("-o", "--output", type=Path, help="output file (default profiles/<device>/<model>.json)")
    p.add_argument("--json", action="store_true", help="print the Profile JSON instead of the table")


def default_path(model: str, device: str) -> Path:
    return Path("profiles") / device / f"{model}.json"


def format_table(profile) -> str:
    """A per-unit table, one block per (dtype, microbatch size)."""
    lines = [f"{profile.model_name} on {profile.device_name} ({profile.method}), seq_len {profile.seq_len}"]
    for e in profile.entries:
        lines.append(f"\n[{e.dtype}, microbatch {e.microbatch_size}]")
        lines.append(f"{'unit':<10} {'F ms':>8} {'B ms':>8} {'I ms':>8} {'W ms':>8} {'params':>11} {'saved MiB':>10} {'out KiB':>9} {'GFLOP':>8}")
        for u in e.units:
            lines.append(f"{u.name:<10} {u.forward_s*1e3:8.2f} {u.backward_s*1e3:8.2f} {u.backward_input_s*1e3:8.2f} "
                         f"{u.backward_weight_s*1e3:8.2f} {u.params:11,d} {u.saved_bytes/2**20:10.2f} "
                         f"{u.output_bytes/2**10:9.1f} {u.forward_flops/1e9:8.3f}")
        c = e.consistency
        lines.append(f"sum of units / whole model: forward {c['forward']:.2f}, backward {c['backward']:.2f}, "
                     f"saved bytes {c['saved_bytes']:.3f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json

    from . import profile_model
    from .zoo import parse_overrides

    overrides = parse_overrides(args.set)
    profile = profile_model(args.model, device=args.device, dtypes=args.dtypes,
                            microbatch_sizes=args.microbatch_sizes, seq_len=args.seq_len,
                            overrides=overrides, repeats=args.repeats, warmup=args.warmup,
                            progress=not args.json)
    out = args.output or default_path(args.model, args.device)
    profile.save(out)
    if args.json:
        print(json.dumps(profile.to_dict()))
    else:
        print(format_table(profile))
        print(f"\nwrote {out}")
    return 0


COMMAND = Command("profile", "Measure each unit of a model (forward, backward I/W, memory) and write a Profile.",
                  add_arguments, run)
