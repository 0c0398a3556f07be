"""``python -m planner plan|simulate ...``: the same as ``pipeplan plan`` and ``pipeplan simulate``."""

from profiles.clikit import run_commands

from .cli import PLAN, SIMULATE

raise SystemExit(
    run_commands(
        [PLAN, SIMULATE], prog="python -m planner", description="Plan a pipeline with a MILP and simulate plans."
    )
)
