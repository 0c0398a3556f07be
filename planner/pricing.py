"""The planner's door to the one cost layer (``simulator/costs.py``): the CostModel of a
profile on a cluster for a job, at one microbatch size and layout (tp, dp, dp mode, sequence
parallelism).

The search, the MILP, the refinement, the baselines and ``Plan.sim_input`` all price plans
through :func:`cost_model`, so a plan is priced the same way wherever it is looked at.
"""

from __future__ import annotations

from profiles.types import Profile
from simulator.costs import CostModel, Layout, Option, Recompute

from .cluster import Cluster, Job

__all__ = ["job_options", "cost_model"]


def job_options(job: Job) -> list[Option]:
    """The options (dtype x recompute) a job lets the planner choose per stage."""
    modes = (Recompute.NONE,) if job.forward_only else tuple(Recompute(r) for r in job.recompute)
    return [Option(d, rc) for d in job.dtypes for rc in modes]


def cost_model(
    profile: Profile,
    cluster: Cluster,
    job: Job,
    microbatch_size: int | None,
    *,
    layout: Layout | None = None,
    options: list[Option] | None = None,
) -> CostModel:
    """Records of ``options`` (default: the job's) on ``layout``, with the cluster's links and
    per-stage constants."""
    return CostModel.build(
        profile,
        options if options is not None else job_options(job),
        microbatch_size,
        layout=layout or Layout(),
        links=cluster.links(),
        optimizer_bytes_per_param=job.optimizer_bytes_per_param,
        optimizer_s_per_param=cluster.optimizer_s_per_param,
        action_overhead_s=cluster.action_overhead_s,
        forward_only=job.forward_only,
    )
