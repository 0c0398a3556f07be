"""``torchrun --nproc_per_node N -m executor PLAN``: one process per rank runs the plan."""

import os

_AGENT = os.getppid()  # torchrun's agent, noted before the slow imports (the worker exits when it is gone)

from .runtime import main  # noqa: E402

raise SystemExit(main(agent=_AGENT))
