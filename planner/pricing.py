"""The planner's door to the one cost layer (``simulator/costs.py``): the CostModel of a
profile on a cluster for a job, at one microbatch size and layout (tp, dp, dp mode, sequence
parallelism).

The search, the MILP, the refinement, the baselines and ``Plan.sim_input`` all price plans
through :func:`cost_model`, so a plan is priced the same way wherever it is looked at.
"""

from __future__ import annotations

from profiles.contract import UserError
from profiles.types import Profile
from simulator.costs import CostModel, Layout, Option, Recompute
from simulator.tensor_parallel import model_tp_degrees, sequence_parallel_choices

from .cluster import Cluster, Job

__all__ = ["job_options", "cost_model", "job_sequence_parallel", "job_tp_degrees", "profile_tp_degrees"]


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
        tp_layer_s=(cluster.tp_layer_s, cluster.tp_layer_backward_s),
        fsdp_unit_s=(cluster.fsdp_unit_s, cluster.fsdp_unit_backward_s),
    )


def job_sequence_parallel(job: Job, tp: int, profile: Profile) -> tuple[bool, ...]:
    """The sequence-parallel choices the job allows at ``tp`` for this profile's model (a
    ``--sequence-parallel on`` its blocks do not run is the user's error)."""
    try:
        return sequence_parallel_choices(job.sequence_parallel, tp, profile.model_config)
    except ValueError as e:
        raise UserError(f"--sequence-parallel on: {e}: use auto or off") from None


def job_tp_degrees(job: Job, profile: Profile, within: int) -> list[int]:
    """The job's tensor-parallel degrees, or every one valid for the model within ``within``
    devices (divisors that divide the attention and key/value heads). A model whose profile records
    no tensor-parallel plan the executor runs (``Profile.tp_plan == {}``) stays at tp 1, and a
    ``--tp`` above 1 for it is the user's error."""
    splittable = profile.tp_plan != {}
    if job.tp:
        if not splittable and max(job.tp) > 1:
            raise UserError(
                f"--tp {','.join(map(str, job.tp))}: {profile.model_config.get('model_type') or profile.model_name} "
                "has no tensor-parallel plan the executor runs (no per-layer base_model_tp_plan): use --tp 1"
            )
        return list(job.tp)
    return profile_tp_degrees(profile, within)


def profile_tp_degrees(profile: Profile, within: int) -> list[int]:
    """Tensor-parallel degrees valid for the profile's model within ``within`` devices: 1 only
    where the profile records no tensor-parallel plan the executor runs."""
    return model_tp_degrees(profile.model_config, within) if profile.tp_plan != {} else [1]
