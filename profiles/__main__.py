"""``python -m profiles MODEL ...``: the same as ``pipeplan profile``."""

from .cli import COMMAND
from .clikit import run_command

raise SystemExit(run_command(COMMAND, prog="python -m profiles"))
