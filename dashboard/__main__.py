"""``python -m dashboard [--port P]``: the same as ``pipeplan dashboard``."""

from profiles.clikit import run_command

from .cli import DASHBOARD

raise SystemExit(run_command(DASHBOARD, prog="python -m dashboard"))
