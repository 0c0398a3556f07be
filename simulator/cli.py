"""``pipeplan schedule`` and the what-if forms of ``pipeplan simulate`` (uniform costs, any table).

``pipeplan simulate PLAN`` is served by the planner's CLI (a Plan is the planner's
type); it reuses :func:`add_output_arguments` and :func:`report` from here.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

from profiles.clikit import Command, bounded
from profiles.contract import UserError, check_outputs

from .actions import (
    MAX_TABLE_ACTIONS,
    ScheduleError,
    Table,
    check_table_size,
    read_csv,
    table_shape,
    table_to_text,
    validate_table,
    write_csv,
)
from .costs import Links, StageCost
from .engine import SimInput, simulate
from .gantt import write_gantt
from .placement import check_placement, parse_placement, placement_table
from .schedules import SCHEDULES, canonical_name, make_schedule, schedule_spec
from .timeline import Timeline, write_trace

__all__ = [
    "SCHEDULE",
    "SIMULATE",
    "add_whatif_arguments",
    "add_output_arguments",
    "check_output_flags",
    "whatif_input",
    "report",
    "format_timeline",
]


def _schedule_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--pp", type=int, help="pipeline ranks (not with --placement)")
    p.add_argument("--microbatches", type=int, required=required, help="microbatches per step")
    p.add_argument("--virtual", type=int, default=1, help="stages per rank (default 1)")
    p.add_argument("--placement", help="Custom: the rank of each stage, e.g. 0,1,0 (rank 0 holds stages 0 and 2)")


def _check_schedule_flags(args: argparse.Namespace) -> None:
    """Bounds of --pp, --microbatches and --virtual, before a table is built: its size is
    at most MAX_TABLE_ACTIONS."""
    bounded("--pp", args.pp, 1, MAX_TABLE_ACTIONS)
    bounded("--microbatches", args.microbatches, 1, MAX_TABLE_ACTIONS)
    bounded("--virtual", args.virtual, 1, MAX_TABLE_ACTIONS)
    if args.placement:
        placement = parse_placement(args.placement)
        check_table_size(len(placement), args.microbatches or 1, what=f"--placement {args.placement[:40]}")
    elif args.pp is not None and args.microbatches is not None:
        check_table_size(args.pp * args.virtual, args.microbatches, what="this schedule's table")


def _make_table(name: str, args: argparse.Namespace) -> Table:
    """The named schedule's table, or Custom's for ``--placement`` (which ``--pp`` must agree with)."""
    _check_schedule_flags(args)
    if not schedule_spec(name).custom:
        if args.placement:
            raise UserError(f"--placement goes with the Custom schedule, not {name}: use Custom, or leave it out")
        if args.pp is None:
            raise UserError(f"{name} needs --pp")
        return make_schedule(name, args.pp, args.microbatches, args.virtual)
    if not args.placement:
        raise UserError("Custom needs --placement, the rank of each stage, e.g. --placement 0,1,0")
    placement = parse_placement(args.placement)
    check_placement(placement, args.pp)
    return placement_table(placement, args.microbatches)


@contextmanager
def _explained():
    """A ScheduleError's picture (grid, waiting chain) goes to stderr; its first line is the exit-2 reason."""
    try:
        yield
    except ScheduleError as e:
        first, *rest = str(e).splitlines() or [""]
        if rest:
            print("\n".join(rest), file=sys.stderr)
        raise ScheduleError(first) from None


def _schedule_help() -> str:
    return (
        "; ".join(
            f"{s.name} (virtual {s.virtual_text}{', I/W split' if s.split_backward else ''})"
            for s in SCHEDULES.values()
        )
        + "; Custom (with --placement)"
    )


def _add_schedule(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help=f"schedule, any case: {_schedule_help()}")
    _schedule_args(p, required=True)
    p.add_argument("--csv", type=Path, help="write the table as torch-loadable CSV (one row per rank)")
    p.add_argument("--json", action="store_true", help="print the table as JSON")


def check_output_flags(args: argparse.Namespace, inputs: list) -> None:
    """-o, --trace and --gantt: none of them an input or each other, each writable."""
    check_outputs(inputs, [("-o", args.output), ("--trace", args.trace), ("--gantt", args.gantt)])


def _run_schedule(args: argparse.Namespace) -> int:
    check_outputs([], [("--csv", args.csv)])
    with _explained():
        table = _make_table(args.name, args)
        validate_table(table)
    if args.csv:
        write_csv(table, args.csv)
    if args.json:
        print(json.dumps({"schedule": canonical_name(args.name), "table": table_to_text(table)}))
    else:
        for r in sorted(table):
            print(f"rank {r}: " + " ".join(str(a) for a in table[r]))
        if args.csv:
            print(f"wrote {args.csv}")
    return 0


def add_whatif_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what-if (uniform costs)")
    g.add_argument("--schedule", help="schedule name, with --pp and --microbatches")
    _schedule_args(g, required=False)
    g.add_argument("--table", type=Path, help="any compute-only CSV table instead of --schedule")
    g.add_argument("--f", type=float, default=1.0, help="forward time per stage and microbatch (default 1)")
    g.add_argument("--b", type=float, help="full backward time (default 2, or I + W when given)")
    g.add_argument("--i", type=float, help="input-gradient time (zero-bubble schedules)")
    g.add_argument("--w", type=float, help="weight-gradient time (zero-bubble schedules)")
    g.add_argument(
        "--fb",
        type=float,
        help="time of an overlapped forward+backward pair, DualPipe's F&B "
        "(DualPipeV; default F + B: one after the other, as torch runs it)",
    )
    g.add_argument("--comm", type=float, default=0.0, help="transfer time between ranks (default 0)")


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("-o", "--output", type=Path, help="write the Timeline JSON here")
    g.add_argument("--trace", type=Path, help="write a Chrome/Perfetto trace JSON here")
    g.add_argument("--gantt", type=Path, help="write a Gantt chart PNG here")
    g.add_argument("--json", action="store_true", help="print the Timeline JSON on stdout")


def whatif_input(args: argparse.Namespace) -> SimInput:
    if args.table is not None:
        table = read_csv(args.table)
        validate_table(table)  # every (stage, microbatch) is there: the engine's arrays are the table's size
    elif args.schedule:
        if args.microbatches is None:
            raise UserError("--schedule needs --microbatches (and --pp, or --placement with Custom)")
        table = _make_table(args.schedule, args)
    else:
        raise UserError("give a PLAN file, --schedule NAME --pp P --microbatches M, or --table CSV")
    stages, _ = table_shape(table)
    i = args.i if args.i is not None else (args.b / 2 if args.b is not None else 1.0)
    w = args.w if args.w is not None else (args.b - i if args.b is not None else 1.0)
    b = args.b if args.b is not None else i + w
    for flag, v in (("--f", args.f), ("--b", b), ("--i", i), ("--w", w), ("--comm", args.comm), ("--fb", args.fb)):
        bounded(flag, v, 0.0, 1e9, " (a time)")
    cost = StageCost(
        args.f, b, i, w, activation_bytes=1, static_bytes=0, output_bytes=1, input_bytes=1, overlap_f_b_s=args.fb
    )
    return SimInput(table, [cost] * stages, Links(latency_s=args.comm, inter_latency_s=args.comm))


def format_timeline(tl: Timeline, unit: str = "ms") -> str:
    scale = 1e3 if unit == "ms" else 1.0
    lines = [
        f"step time {tl.step_s * scale:.3f} {unit}".rstrip(),
        f"{'rank':>4} {('busy ' + unit).rstrip():>10} {'bubble':>7} {'peak MiB':>9}",
    ]
    for r in tl.ranks:
        lines.append(f"{r.rank:>4} {r.busy_s * scale:10.3f} {r.bubble_fraction:7.1%} {r.peak_bytes / 2**20:9.1f}")
    if tl.critical_path:
        path = " > ".join(tl.critical_path)
        lines.append("critical path: " + (path if len(path) < 300 else path[:140] + " ... " + path[-140:]))
    return "\n".join(lines)


def report(tl: Timeline, args: argparse.Namespace, label: str = "simulated", unit: str = "ms") -> int:
    """Write the files asked for, then print the Timeline (JSON with --json)."""
    written = []
    if args.output:
        written.append(tl.save(args.output))
    if args.trace:
        written.append(write_trace(tl, args.trace, label))
    if args.gantt:
        written.append(write_gantt(tl, args.gantt, [label]))
    if args.json:
        print(json.dumps(tl.to_dict()))
    else:
        print(format_timeline(tl, unit))
        for w in written:
            print(f"wrote {w}")
    return 0


def _add_simulate(p: argparse.ArgumentParser) -> None:
    add_whatif_arguments(p)
    add_output_arguments(p)


def _run_simulate(args: argparse.Namespace) -> int:
    check_output_flags(args, [args.table])
    with _explained():
        tl = simulate(whatif_input(args))
    return report(tl, args, "what-if", unit="")


SCHEDULE = Command(
    "schedule", "Write a schedule's per-rank action table (torch-loadable CSV).", _add_schedule, _run_schedule
)
SIMULATE = Command(
    "simulate", "Simulate a schedule with uniform costs, or any CSV table (what-if).", _add_simulate, _run_simulate
)
