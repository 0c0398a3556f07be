"""``torchrun --nproc_per_node N -m executor PLAN``: one process per rank runs the plan."""

import os
import signal
import sys

_AGENT = os.getppid()  # torchrun's agent, noted before the slow imports (the worker exits when it is gone)
if sys.platform == "linux":  # the kernel kills this worker when its agent dies (runtime._exit_with_agent: elsewhere)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != _AGENT:  # the agent died before the call
        raise SystemExit(1)

from .runtime import main  # noqa: E402

raise SystemExit(main(agent=_AGENT))
