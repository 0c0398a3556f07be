"""``python -m simulator schedule|simulate ...``: schedule tables and what-if simulation."""

from profiles.clikit import run_commands

from .cli import SCHEDULE, SIMULATE

raise SystemExit(
    run_commands(
        [SCHEDULE, SIMULATE],
        prog="python -m simulator",
        description="Schedule tables and what-if simulation of pipeline schedules.",
    )
)
