"""What to say when no plan fits: the least memory any split needs, and the lever that helps most."""

from __future__ import annotations

from dataclasses import replace

from profiles.contract import UserError
from simulator.actions import ScheduleError
from simulator.costs import CostModel, DPMode, Option, Recompute

from .batching import entry_sizes
from .milp import StepModel, min_memory_split
from .pricing import cost_model, profile_tp_degrees

__all__ = ["InfeasibleError", "infeasible_error"]

LEAST_OF = 3  #: refused candidates whose least memory is bounded (smallest microbatch, deepest pipeline first)


class InfeasibleError(UserError):
    """No plan fits: the message names the smallest memory that would and the lever that helps."""


def infeasible_error(s, infeasible: list[tuple]) -> InfeasibleError:
    """The error for a search whose candidates all failed on memory. ``s``: the search's shared
    inputs (profile, cluster, job, schedules, CostModels); ``infeasible``: (candidate, StepModel)."""

    profile, cluster, job = s.profile, s.cluster, s.job
    if not infeasible:
        return InfeasibleError(
            f"no pipeline degree, microbatch size and schedule fit the job: global batch {job.global_batch} on "
            f"{cluster.devices} devices with profiled microbatch sizes {sorted(entry_sizes(profile, job.dtypes))} "
            f"and schedules {', '.join(job.schedules)}; adjust --global-batch, --devices or --schedules"
        )

    def least(costs: CostModel, model: StepModel) -> float:
        return min_memory_split(costs, model, time_limit=s.time_limit, solver=s.solver)[0]

    # the least memory any refused candidate needs (candidates with the smallest microbatch first)
    need, where = None, None
    seen = set()
    for c, model in sorted(infeasible, key=lambda cm: (cm[0].mbs, -cm[0].pp))[:LEAST_OF]:
        key = (c.mbs, c.layout, model.key())
        if key in seen:
            continue
        seen.add(key)
        n = least(s.costs(c.mbs, c.layout), model)
        if need is None or n < need:
            need, where = n, c
    c = where
    levers = []
    # more devices: twice the pipeline stages, same schedule and microbatching
    # (each of the 2 pp ranks' virtual stages needs a unit; a Custom placement does not scale with pp)
    if 2 * c.pp * c.virtual <= profile.num_units and c.placement is None:
        try:
            n2 = least(s.costs(c.mbs, c.layout), s.schedules.model(c.schedule, 2 * c.pp, c.m, c.virtual))
            levers.append((n2, f"--devices {cluster.devices * 2} (pp={2 * c.pp}) needs {n2 / 2**30:.2f} GiB"))
        except ScheduleError:
            pass
    if "full" not in job.recompute and not job.forward_only:
        options = [Option(d, Recompute.FULL) for d in job.dtypes]
        costs = cost_model(profile, cluster, job, c.mbs, layout=c.layout, options=options)
        n3 = least(costs, s.model(c))
        levers.append((n3, f"recompute (--recompute) needs {n3 / 2**30:.2f} GiB"))
    lay = c.layout
    most = max(DPMode, key=lambda m: m.spec.sharded_parts)  # the mode that shards the most state
    if lay.dp > 1 and lay.dp_mode is not most and most.value not in job.dp_modes:
        n4 = least(cost_model(profile, cluster, job, c.mbs, layout=replace(lay, dp_mode=most)), s.model(c))
        levers.append((n4, f"--dp-mode {most.value} needs {n4 / 2**30:.2f} GiB"))
    tp2 = 2 * lay.tp
    if lay.dp % 2 == 0 and tp2 not in job.tp and tp2 in profile_tp_degrees(profile, cluster.devices_per_node):
        wider = replace(lay, tp=tp2, dp=lay.dp // 2, sequence_parallel=True)
        try:
            n5 = least(
                cost_model(profile, cluster, job, c.mbs, layout=wider),
                s.schedules.model(c.schedule, c.pp, 2 * c.m, c.virtual, c.placement),
            )
            levers.append((n5, f"--tp {tp2} needs {n5 / 2**30:.2f} GiB"))
        except ScheduleError:
            pass
    smaller = sorted(b for b in entry_sizes(profile, job.dtypes) if b < c.mbs)
    if smaller:
        levers.append((None, f"a microbatch size below {c.mbs} needs less (profile it with --microbatch-sizes)"))
    best_lever = min((lv for lv in levers if lv[0] is not None), default=None, key=lambda lv: lv[0])
    hint = best_lever[1] if best_lever else (levers[0][1] if levers else "add devices")
    return InfeasibleError(
        f"no plan fits {cluster.memory_bytes / 2**30:.2f} GiB per device: the least found for any split is "
        f"{need / 2**30:.2f} GiB ({c.schedule}, pp={c.pp}, m={c.m}, microbatch size {c.mbs}); "
        f"raise --device-memory to that, or the lever that helps most: {hint}"
    )
