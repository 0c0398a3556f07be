"""The command-line contract shared by ``pipeplan`` and every ``python -m <stage>``.

Exit codes: 0 done; 2 the input is wrong or the problem has no answer (one line on
stderr, no traceback); 1 a bug (traceback). Lives in the bottom floor so that no
stage's ``__main__`` has to import upwards.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from .contract import UserError

__all__ = ["Command", "run_command", "run_commands", "invoke", "progress_bar", "bounded"]

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


class Command:
    """One subcommand: its name, help line, argument builder and runner."""

    def __init__(self, name: str, help: str, add_arguments: AddArguments, run: Run):
        self.name, self.help, self.add_arguments, self.run = name, help, add_arguments, run


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as for every other input error
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_command(cmd: Command, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = _Parser(prog=prog or f"pipeplan {cmd.name}", description=cmd.help)
    cmd.add_arguments(parser)
    return invoke(parser.prog, cmd.run, parser.parse_args(argv))


def run_commands(
    commands: Sequence[Command], argv: Sequence[str] | None = None, prog: str = "pipeplan", description: str = ""
) -> int:
    """A parser with one subcommand per Command; runs the chosen one under the exit-code contract."""
    parser = _Parser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    runners = {}
    for cmd in commands:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        runners[cmd.name] = cmd.run
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    return invoke(f"{prog} {args.command}", runners[args.command], args)


def progress_bar(total: int, desc: str, unit: str = "step", enabled: bool = True):
    """A tqdm bar on stderr, shown only when stderr is a terminal (so logs, pipes and tests,
    and ``--json`` on stdout, stay clean); ``enabled=False`` hides it anyway."""
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, disable=not (enabled and sys.stderr.isatty())
    )


def bounded(flag: str, value, lo, hi, why: str = "") -> None:
    """Refuse a flag's number outside ``[lo, hi]`` (or not finite) with one line naming it."""
    import math

    if value is None:
        return
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
        if isinstance(v, float) and not math.isfinite(v) or not lo <= v <= hi:
            shown = str(v) if len(str(v)) <= 20 else f"a number of {len(str(v))} digits"
            raise UserError(f"{flag} {shown}: give a number from {lo} to {hi}{why}")


def invoke(prog: str, run: Run, args: argparse.Namespace) -> int:
    try:
        return run(args)
    except UserError as e:
        msg = " ".join(str(e).split())
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        # the file system said no (a path the checks could not foresee): the input, not a bug
        where = f"{e.filename}: " if e.filename else ""
        print(f"{prog}: error: {where}{e.strerror or e}: check the path", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
