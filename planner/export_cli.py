"""``pipeplan export PLAN --to torchtitan|megatron|launch|slurm [-o FILE]``: a plan as an engine takes it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from profiles.clikit import Command
from profiles.contract import check_outputs, write_files

from .export import TARGETS, export_text
from .plan import load_plan

__all__ = ["EXPORT", "run_export"]


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", type=Path, help="a Plan JSON file (pipeplan plan -o)")
    p.add_argument(
        "--to",
        required=True,
        choices=list(TARGETS),
        help="; ".join(f"{k}: {v}" for k, v in TARGETS.items()),
    )
    p.add_argument("-o", "--output", type=Path, help="write the text here (default: stdout)")


def _module_name(output: Path | None) -> str:
    """The import name of a torchtitan config written to ``output`` (its file stem)."""
    stem = output.stem if output is not None and output.suffix == ".py" else ""
    return stem if stem.isidentifier() else "MODULE"


def run_export(args: argparse.Namespace) -> int:
    """Write the export (or refuse in one line, writing nothing)."""
    check_outputs([args.plan], [("-o", args.output)])
    plan = load_plan(args.plan)
    check_outputs([plan.profile_file(args.plan.parent)], [("-o", args.output)])
    text = export_text(plan, args.to, args.plan, name=args.plan.name, module=_module_name(args.output))
    if args.output is None:
        sys.stdout.write(text)
    else:
        write_files({args.output: text})
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


EXPORT = Command(
    "export",
    "Write a Plan as a torchtitan config, Megatron-LM arguments, or per-node launch lines.",
    _add_export,
    run_export,
)
