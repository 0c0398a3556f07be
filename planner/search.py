"""The outer search: pipeline degree x schedule x microbatches, each split from the MILP,
every candidate re-scored by the event simulator, ranked by simulated step time."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from profiles.contract import UserError, sha256_of
from profiles.types import Profile
from simulator.actions import stage_ranks
from simulator.costs import DTYPE_BYTES, stage_costs
from simulator.engine import simulate
from simulator.schedules import canonical_name, make_schedule

from .cluster import Cluster, Job
from .milp import UnitData, in_flight, min_memory_split, solve_split
from .plan import Plan, Prediction, StagePlan

__all__ = ["plan", "score_split", "even_split", "InfeasibleError", "unit_data"]


class InfeasibleError(UserError):
    """No plan fits: the message names the smallest memory that would and the lever that helps."""


def unit_data(profile: Profile, cluster: Cluster, job: Job, dtype: str, microbatch_size: int) -> list[UnitData]:
    entry = profile.entry(dtype, microbatch_size)
    links = cluster.links()
    out = []
    for u in entry.units:
        params = u.params
        static = 2 * params * DTYPE_BYTES[dtype] + (params * 4 if DTYPE_BYTES[dtype] < 4 else 0) \
            + int(params * job.optimizer_bytes_per_param)
        out.append(UnitData(u.forward_s + u.backward_s, int(static), u.saved_bytes,
                            links.transfer_s(0, 1, u.output_bytes)))
    return out


def even_split(num_units: int, p: int) -> list[tuple[int, int]]:
    """Units dealt as evenly as possible, the extra ones to the first stages."""
    if p > num_units:
        raise UserError(f"cannot cut {num_units} units into {p} stages: lower --pp")
    q, r = divmod(num_units, p)
    bounds, first = [], 0
    for s in range(p):
        end = first + q + (1 if s < r else 0)
        bounds.append((first, end))
        first = end
    return bounds


def _microbatching(job: Job, dp: int) -> list[tuple[int, int]]:
    """(microbatch count, microbatch size) pairs that make the global batch on ``dp`` replicas."""
    if job.global_batch % dp:
        return []
    per_replica = job.global_batch // dp
    if job.microbatch_size:
        if per_replica % job.microbatch_size:
            raise UserError(f"--global-batch {job.global_batch} over {dp} replicas is not a multiple of "
                            f"--microbatch-size {job.microbatch_size}")
        pairs = [(per_replica // job.microbatch_size, job.microbatch_size)]
    else:
        pairs = [(per_replica // b, b) for b in range(1, per_replica + 1) if per_replica % b == 0]
    if job.microbatches:
        pairs = [(m, b) for m, b in pairs if m in job.microbatches]
    return pairs


def _build(profile: Profile, profile_path: str, cluster: Cluster, job: Job, bounds, schedule: str, pp: int, dp: int,
           m: int, mbs: int, dtype: str, solver: dict | None = None) -> Plan:
    table = make_schedule(schedule, pp, m)
    owner = stage_ranks(table)
    stages = tuple(StagePlan(i, f, e, owner[i], dtype, False) for i, (f, e) in enumerate(bounds))
    plan = Plan(profile_path, sha256_of(profile_path), profile.model_name, pp, dp, 1, m, mbs, stages,
                canonical_name(schedule), table, cluster, job, solver=solver or {}, profile=profile)
    tl = simulate(plan)
    pred = Prediction(tl.step_s, tuple(r.bubble_fraction for r in tl.ranks), tuple(r.peak_bytes for r in tl.ranks),
                      throughput=job.global_batch / tl.step_s if tl.step_s > 0 else 0.0)
    return replace(plan, predicted=pred)


def _entry_sizes(profile: Profile, dtype: str) -> set[int]:
    return {e.microbatch_size for e in profile.entries if e.dtype == dtype}


def plan(profile: Profile, cluster: Cluster, job: Job, top: int = 3, profile_path: str | Path | None = None,
         time_limit: float = 20.0) -> list[Plan]:
    """The ``top`` plans for ``job`` on ``cluster``, best simulated step time first."""
    profile_path = str(profile_path or profile.measurement.get("path", ""))
    if not profile_path or not Path(profile_path).exists():
        raise UserError("plan() needs the profile's file path (profile_path=...) so the plan can refer to it")
    dtype = job.dtypes[0]
    U = profile.num_units
    pps = job.pp or tuple(p for p in range(1, min(U, cluster.devices) + 1) if cluster.devices % p == 0)
    candidates: list[Plan] = []
    tightest: tuple[float, int, str, int] | None = None
    for pp in pps:
        dp = cluster.devices // pp
        if pp * dp != cluster.devices or pp > U:
            continue
        for m, mbs in _microbatching(job, dp):
            if mbs not in _entry_sizes(profile, dtype):
                continue
            units = unit_data(profile, cluster, job, dtype, mbs)
            for sched in job.schedules:
                sched = canonical_name(sched)
                res = solve_split(units, pp, m, cluster.memory_bytes, sched, time_limit)
                if res is None:
                    need, _ = min_memory_split(units, pp, m, sched, time_limit)
                    if tightest is None or need < tightest[0]:
                        tightest = (need, pp, sched, m)
                    continue
                solver = {"status": res.status, "solver": res.solver, "time_s": round(res.time_s, 4),
                          "gap": res.gap, "objective_s": res.objective}
                candidates.append(_build(profile, profile_path, cluster, job, res.bounds, sched, pp, dp, m, mbs,
                                         dtype, solver))
    if not candidates:
        if tightest is None:
            raise InfeasibleError(f"no pipeline degree, microbatch size and schedule fit the job: global batch "
                                  f"{job.global_batch} on {cluster.devices} devices with profiled microbatch sizes "
                                  f"{sorted(_entry_sizes(profile, dtype))}; adjust --global-batch or --devices")
        need, pp, sched, m = tightest
        raise InfeasibleError(
            f"no plan fits {cluster.memory_bytes / 2**30:.2f} GiB per device: the best split ({sched}, pp={pp}, "
            f"m={m}) needs {need / 2**30:.2f} GiB on its fullest stage; raise --device-memory to at least that, "
            f"add --devices, or allow recompute")
    candidates.sort(key=lambda p: (p.predicted.step_s, p.pp, p.schedule, p.split))
    best = candidates[:top]
    # baselines: the even split with 1F1B at the same pp and microbatching as each plan
    out = []
    for p in best:
        base = _even_baseline(profile, profile_path, cluster, job, p)
        out.append(replace(p, baselines=(base,) if base else ()))
    return out


def _even_baseline(profile, profile_path, cluster, job, p: Plan) -> dict | None:
    bounds = even_split(profile.num_units, p.pp)
    try:
        even = _build(profile, profile_path, cluster, job, bounds, "1F1B", p.pp, p.dp, p.microbatches,
                      p.microbatch_size, p.stages[0].dtype)
    except UserError:
        return None
    fits = max(even.predicted.peak_bytes) <= cluster.memory_bytes
    return {"name": "even-1F1B", "split": even.split, "step_s": even.predicted.step_s,
            "speedup": even.predicted.step_s / p.predicted.step_s, "fits_memory": fits}


def score_split(profile: Profile, cluster: Cluster, job: Job, split: list[int] | str, schedule: str = "1F1B",
                microbatches: int | None = None, pp: int | None = None,
                profile_path: str | Path | None = None) -> Plan:
    """Simulate a split the user gives: first unit of stages 1..p-1, or ``"even"`` (with ``pp``)."""
    profile_path = str(profile_path or "")
    U = profile.num_units
    if split == "even":
        if not pp:
            raise UserError("--split even needs --pp")
        bounds = even_split(U, pp)
    else:
        cuts = list(split)
        if cuts != sorted(set(cuts)) or not all(0 < c < U for c in cuts):
            raise UserError(f"--split {','.join(map(str, cuts))}: give increasing unit indices between 1 and {U - 1}")
        if pp and pp != len(cuts) + 1:
            raise UserError(f"--split has {len(cuts) + 1} stages but --pp is {pp}")
        edges = [0, *cuts, U]
        bounds = list(zip(edges[:-1], edges[1:]))
    pp = len(bounds)
    if cluster.devices % pp:
        raise UserError(f"--devices {cluster.devices} is not a multiple of {pp} stages")
    dp = cluster.devices // pp
    pairs = _microbatching(job, dp)
    if microbatches:
        pairs = [(mm, b) for mm, b in pairs if mm == microbatches]
    dtype = job.dtypes[0]
    pairs = [(mm, b) for mm, b in pairs if b in _entry_sizes(profile, dtype)]
    if not pairs:
        raise UserError(f"no profiled microbatch size gives {microbatches or 'any'} microbatches for global batch "
                        f"{job.global_batch} on {dp} replicas: adjust --microbatches or --global-batch")
    m, mbs = pairs[0]
    p = _build(profile, profile_path, cluster, job, bounds, schedule, pp, dp, m, mbs, dtype,
               {"status": "given", "solver": "none"})
    costs = stage_costs(profile, bounds, dtype=dtype, microbatch_size=mbs,
                        optimizer_bytes_per_param=job.optimizer_bytes_per_param)
    for s, (c, (f, e)) in enumerate(zip(costs, bounds)):
        k = in_flight(p.schedule, pp, s, m)
        need = c.static_bytes + k * c.activation_bytes
        if need > cluster.memory_bytes:
            raise InfeasibleError(f"stage {s} (units {f}..{e - 1}) needs {need / 2**30:.2f} GiB but devices have "
                                  f"{cluster.memory_bytes / 2**30:.2f} GiB: it is over by "
                                  f"{(need - cluster.memory_bytes) / 2**30:.2f} GiB; move units off it, raise "
                                  f"--device-memory or lower the microbatch size")
    return p
