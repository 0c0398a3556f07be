"""pipeplan: the front door. Parses arguments, calls one stage per subcommand, prints.

profile -> plan -> simulate -> run / validate, plus schedule, calibrate, export and dashboard.
No logic lives here: each subcommand is a ``Command`` of the package that owns it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from dashboard.cli import DASHBOARD
from executor.cli import CALIBRATE, RUN, VALIDATE
from planner.cli import PLAN, SIMULATE
from planner.export_cli import EXPORT
from profiles.cli import COMMAND as PROFILE
from profiles.clikit import run_commands
from simulator.cli import SCHEDULE

COMMANDS = [PROFILE, PLAN, SIMULATE, SCHEDULE, RUN, VALIDATE, CALIBRATE, EXPORT, DASHBOARD]


def main(argv: Sequence[str] | None = None) -> int:
    return run_commands(
        COMMANDS,
        argv,
        prog="pipeplan",
        description="Cut a PyTorch model into a pipeline, predict what it does, run it, compare.",
    )


if __name__ == "__main__":
    sys.exit(main())
