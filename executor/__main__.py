"""``torchrun --nproc_per_node N -m executor PLAN``: one process per rank runs the plan."""

from .runtime import main

raise SystemExit(main())
