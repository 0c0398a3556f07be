"""The planner's door to the one cost layer (``simulator/costs.py``): the CostModel of a
profile on a cluster for a job, at one microbatch size and data-parallel degree.

The search, the MILP, the refinement, the baselines and ``Plan.sim_input`` all price plans
through :func:`cost_model`, so a plan is priced the same way wherever it is looked at.
"""

from __future__ import annotations

from dataclasses import replace

from profiles.types import Profile
from simulator.costs import CostModel, Option, Recompute

from .cluster import Cluster, Job

__all__ = ["job_options", "cost_model", "with_layout"]


def job_options(job: Job) -> list[Option]:
    """The options (dtype x recompute) a job lets the planner choose per stage."""
    recompute = (Recompute.NONE, Recompute.FULL) if job.recompute and not job.forward_only else (Recompute.NONE,)
    return [Option(d, rc) for d in job.dtypes for rc in recompute]


def cost_model(
    profile: Profile,
    cluster: Cluster,
    job: Job,
    microbatch_size: int | None,
    *,
    dp: int = 1,
    options: list[Option] | None = None,
) -> CostModel:
    """Records of ``options`` (default: the job's) plus the cluster's per-stage constants,
    for ``dp`` data-parallel replicas (which set the pipeline ranks' place on the nodes)."""
    model = CostModel.build(
        profile,
        options if options is not None else job_options(job),
        microbatch_size,
        optimizer_bytes_per_param=job.optimizer_bytes_per_param,
        optimizer_s_per_param=cluster.optimizer_s_per_param,
        action_overhead_s=cluster.action_overhead_s,
        forward_only=job.forward_only,
    )
    return with_layout(model, cluster, dp)


def with_layout(model: CostModel, cluster: Cluster, dp: int) -> CostModel:
    """The same records for ``dp`` replicas: pipeline neighbours sit ``dp`` devices apart
    (rank layout ``pp_index * dp + dp_index``), and gradients are all-reduced over ``dp``."""
    return replace(model, links=cluster.links(stride=dp), dp=dp)
