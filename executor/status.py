"""Exit statuses of a run, and how they get from the ranks to ``pipeplan run``.

torchrun exits 1 whenever a worker fails, whatever the worker said; so each worker also writes its
status to a file in the folder ``$PIPEPLAN_STATUS_DIR`` (set by ``pipeplan run``), and the
launcher returns the workers' verdict. No torch import here: the command line reads this.
"""

from __future__ import annotations

__all__ = ["EXIT_BAD_INPUT", "EXIT_CHECK_FAILED", "STATUS_DIR_ENV"]

#: 0 done; 1 a failure or a bug; 2 bad input (the plan, the launch, a flag, the data file);
#: 3 ``--check`` beyond tolerance (CHECK FAILED; the report is still written). Stopped by a
#: signal: 128 + its number (130 Ctrl-C/SIGINT, 143 SIGTERM).
EXIT_BAD_INPUT, EXIT_CHECK_FAILED = 2, 3
STATUS_DIR_ENV = "PIPEPLAN_STATUS_DIR"
