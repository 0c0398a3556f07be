"""The outer search: pipeline degree x data-parallel degree x schedule x virtual stages x
microbatching, each split from the MILP, every answer re-scored by the event simulator.

Order of work (timed per phase in ``SearchStats``):
1. enumerate candidates the schedules accept (``ScheduleSpec.check``; refusals become notes);
   ``Custom`` adds placements where ranks hold different numbers of stages: the job's own
   (``--placement``), else for each p one family member, p + 1 stages with the last back on
   rank 0 (beside the first, so the split can pair a light stage with a heavy one); they
   are screened, solved and simulated like every other candidate, and win only when faster;
2. a lower bound per candidate from total work (``(m * work + all-reduce) / p``, and the
   fill/drain bound ``(m - 1) * work / p + work`` for one-stage-per-rank GPipe/1F1B), in
   the units of the job's objective (step, time per sample, or one microbatch's latency);
   candidates are visited best bound first and the visit stops once the bound reaches the
   ``top``-th best simulated value (nothing later can enter the top);
3. screen each visited candidate with its work-balanced split: refused without a table
   when its weights alone overflow, by its memory pattern when its activations do, else
   simulated (a real plan the bound prunes against);
4. one MILP per (stages, placement, memory pattern, step model, m, microbatch size),
   started from the screened split: schedules that share all of those share the answer.
   Small chains get one for every promising candidate; large ones (units x stages above
   ``SMALL_MILP``) for the best ``MILP_CANDIDATES``, and none after one ends at its time
   limit without improving its start (noted; those keep their balanced splits);
5. simulate each answer;
6. refine the best few: the MILP's next-best splits (no-good cuts) and a neighbourhood of
   cut moves, all simulated, so the *simulated* optimum is found where the MILP's step
   model is only a model (interleaved, zero-bubble, transfers).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from profiles.contract import UserError
from profiles.types import Profile
from simulator.actions import ScheduleError
from simulator.costs import stage_costs
from simulator.placement import check_placement, most_stages_per_rank
from simulator.schedules import SCHEDULES, canonical_name, schedule_spec

from .baselines import BASELINES, even_split
from .cluster import MAX_MICROBATCHES, Cluster, Job
from .memory import peak_bytes, static_bytes
from .milp import SolverError, StepModel, UnitData, min_memory_split, solve_split
from .plan import Plan
from .refine import ALTERNATIVES, REFINE_AT_LEAST, REFINE_WITHIN
from .refine import refine as refine_plan
from .scoring import Schedules, build_plan, fits, objective_s, option_label, parse_label, unit_options

__all__ = ["plan", "score_split", "even_split", "balanced_split", "InfeasibleError", "SearchStats", "search"]

_FAILED = object()  # a MILP that ended without an answer (the reason is in the notes)

MAX_VIRTUAL = 4  # stages per rank tried for schedules with no upper bound, unless the job says
SMALL_MILP = 2000  # units x stages up to which every promising candidate gets its MILP
MILP_CANDIDATES = 6  # above that, the MILP runs for this many (at least 2 x top) best-screened candidates


class InfeasibleError(UserError):
    """No plan fits: the message names the smallest memory that would and the lever that helps."""


@dataclass
class SearchStats:
    """What the search did, phase by phase (seconds and counts)."""

    seconds: dict[str, float] = field(
        default_factory=lambda: {
            "enumerate": 0.0,
            "bound": 0.0,
            "screen": 0.0,
            "milp": 0.0,
            "simulate": 0.0,
            "refine": 0.0,
            "baselines": 0.0,
        }
    )
    candidates: int = 0
    pruned: int = 0
    milps: int = 0
    milp_reused: int = 0
    simulations: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, phase: str, t0: float) -> None:
        self.seconds[phase] += time.perf_counter() - t0


@dataclass(frozen=True)
class _Candidate:
    pp: int
    dp: int
    m: int
    mbs: int
    schedule: str
    virtual: int
    lower_bound: float
    placement: tuple[int, ...] | None = None  # stage -> rank, for Custom only

    @property
    def stages(self) -> int:
        if self.placement:
            return len(self.placement)
        return schedule_spec(self.schedule).num_stages(self.pp, self.virtual)

    @property
    def rank_of(self) -> dict[int, int]:
        if self.placement:
            return dict(enumerate(self.placement))
        return schedule_spec(self.schedule).stage_to_rank(self.pp, self.virtual)

    def label(self) -> str:
        where = f" placement={','.join(map(str, self.placement))}" if self.placement else ""
        return f"{self.schedule} pp={self.pp} v={self.virtual}{where} m={self.m}"


# -- inputs of the MILP ----------------------------------------------------------------------


def balanced_split(work: list[float], S: int) -> list[tuple[int, int]]:
    """The contiguous split into S non-empty stages with the least largest work (binary search on
    the largest stage with a greedy check; each stage keeps enough units for the rest)."""
    U = len(work)
    if S > U:
        raise UserError(f"cannot cut {U} units into {S} stages: lower --pp or --virtual")

    def cut(cap: float) -> list[int] | None:
        ends, acc = [], 0.0
        for u, w in enumerate(work):
            if w > cap:
                return None
            stages_left = S - len(ends)  # the current one included
            if u > 0 and len(ends) < S - 1 and (acc + w > cap or U - u == stages_left - 1):
                ends.append(u)
                acc = 0.0
            acc += w
        return ends if len(ends) == S - 1 else None

    lo, hi = max(work), sum(work)
    for _ in range(60):
        mid = (lo + hi) / 2
        if cut(mid) is None:
            lo = mid
        else:
            hi = mid
    ends = cut(hi) or [u for u in range(1, S)]
    edges = [0, *ends, U]
    return list(zip(edges[:-1], edges[1:]))


def _model_key(model: StepModel) -> tuple:
    """Equal keys: the same MILP (schedules with one placement, memory pattern and step model share it)."""
    return (
        model.microbatches,
        model.rank_of,
        model.memory.key(),
        model.split_backward,
        model.phased,
        model.forward_only,
        model.latency,
    )


# -- enumeration and bounds -------------------------------------------------------------------


def _microbatching(job: Job, dp: int) -> list[tuple[int, int]]:
    """(microbatch count, microbatch size) pairs that make the global batch on ``dp`` replicas."""
    if job.global_batch % dp:
        return []
    per_replica = job.global_batch // dp
    if job.microbatch_size:
        if per_replica % job.microbatch_size:
            return []
        pairs = [(per_replica // job.microbatch_size, job.microbatch_size)]
    else:
        pairs = [(per_replica // b, b) for b in range(1, per_replica + 1) if per_replica % b == 0]
    if job.microbatches:
        pairs = [(m, b) for m, b in pairs if m in job.microbatches]
    return [(m, b) for m, b in pairs if m <= MAX_MICROBATCHES]  # bounded (planner.cluster)


def _entry_sizes(profile: Profile, dtypes: tuple[str, ...]) -> set[int]:
    sizes = [{e.microbatch_size for e in profile.entries if e.dtype == d} for d in dtypes]
    return set.intersection(*sizes) if sizes else set()


def _virtuals(spec, job: Job, pp: int, U: int) -> list[int]:
    hi = spec.max_virtual if spec.max_virtual is not None else MAX_VIRTUAL
    vs = [v for v in range(spec.min_virtual, hi + 1) if not job.virtual or v in job.virtual]
    return [v for v in vs if spec.num_stages(pp, v) <= U]


def _lower_bound(
    options, cluster: Cluster, pp: int, dp: int, m: int, single_stage_1f1b: bool, forward_only: bool
) -> float:
    """No split of this candidate simulates faster than this (compute and all-reduce only)."""
    per_unit = [min((d.forward_s if forward_only else d.work_s) for d in ds) for ds in zip(*options.values())]
    work = sum(per_unit)
    lb = m * work / pp
    if not forward_only and dp > 1:
        # every rank all-reduces its gradients after its last backward: the step is at least
        # the mean over ranks of (work + all-reduce); bandwidth term only (latency needs grads > 0)
        grad = sum(min(d.grad_bytes for d in ds) for ds in zip(*options.values()))
        links = cluster.links()
        bw = min(links.bandwidth_Bps, links.inter_bandwidth_Bps)
        lb += 2 * (dp - 1) * grad / dp / bw / pp
    if single_stage_1f1b:
        lb = max(lb, (m - 1) * max(work / pp, max(per_unit)) + work)
    return lb


def _objective_bound(step_lb: float, options, job: Job) -> float:
    """The step's lower bound in the units of ``objective_s``: per sample for throughput; for
    latency, one microbatch's forwards through every unit (sends only add)."""
    if job.objective == "latency":
        return sum(min(d.forward_s for d in ds) for ds in zip(*options.values()))
    if job.objective == "throughput":
        return step_lb / job.global_batch
    return step_lb


def _enumerate(profile: Profile, cluster: Cluster, job: Job, stats: SearchStats) -> list[tuple]:
    U = profile.num_units
    sizes = _entry_sizes(profile, job.dtypes)
    pps = job.pp or tuple(p for p in range(1, min(U, cluster.devices) + 1) if cluster.devices % p == 0)
    out = []
    for pp in pps:
        if cluster.devices % pp or pp > U:
            stats.notes.append(f"pp={pp} skipped: {cluster.devices} devices or {U} units do not allow it")
            continue
        dp = cluster.devices // pp
        for m, mbs in _microbatching(job, dp):
            if mbs not in sizes:
                continue
            for name in job.schedules:
                try:
                    spec = schedule_spec(name)
                except ScheduleError as e:
                    stats.notes.append(f"{name} skipped: {e}")
                    continue
                if spec.name == "Custom":
                    out += [
                        (pp, dp, m, mbs, spec, most_stages_per_rank(pl), pl) for pl in _custom_placements(job, pp, U)
                    ]
                    continue
                if spec.name == "GPipe" and any(
                    canonical_name(n) == "1F1B" for n in job.schedules if n.lower() in {k.lower() for k in SCHEDULES}
                ):
                    # dominated: 1F1B has the same placement, never more memory, and a fill-drain
                    # no longer ((m-1) max(F+B) <= (m-1) (max F + max B))
                    stats.notes.append(f"GPipe pp={pp} m={m} skipped: dominated by 1F1B")
                    continue
                for v in _virtuals(spec, job, pp, U):
                    try:
                        spec.check(pp, m, v)
                    except ScheduleError as e:
                        stats.notes.append(f"{spec.name} pp={pp} m={m} v={v} skipped: {str(e).splitlines()[0]}")
                        continue
                    out.append((pp, dp, m, mbs, spec, v, None))
    return out


def _custom_placements(job: Job, pp: int, U: int) -> list[tuple[int, ...]]:
    """The Custom placements tried on ``pp`` ranks: the job's own, else the wrap family
    (p + 1 stages, stage p back on rank 0); none that needs more stages than units."""
    if job.placements:
        return [tuple(pl) for pl in job.placements if max(pl) + 1 == pp and len(pl) <= U]
    return [tuple(range(pp)) + (0,)] if 2 <= pp < U else []


def _screen(
    profile: Profile,
    profile_path: str,
    cluster: Cluster,
    job: Job,
    c: _Candidate,
    options: dict[str, list[UnitData]],
    schedules: Schedules,
    splits: dict,
) -> Plan | None:
    """The candidate's work-balanced split under its first option, simulated; None when its
    weights or its memory pattern already say it does not fit (the pattern's peak is the
    simulator's, so nothing that fits is refused). ``splits``: the balanced splits and their
    stage costs so far, by (microbatch size, stages); candidates share them."""
    S = c.stages
    first = next(iter(options))
    dtype, rc = parse_label(first)
    if (c.mbs, S) not in splits:
        bounds = balanced_split([d.forward_s if job.forward_only else d.work_s for d in options[first]], S)
        splits[c.mbs, S] = (
            bounds,
            stage_costs(
                profile,
                bounds,
                dtype=dtype,
                microbatch_size=c.mbs,
                recompute=[rc] * S,
                optimizer_bytes_per_param=job.optimizer_bytes_per_param,
            ),
        )
    bounds, costs = splits[c.mbs, S]
    if max(static_bytes(c.rank_of, costs, job.forward_only).values()) > cluster.memory_bytes:
        return None  # the weights alone overflow a device: no table needed to say so
    model = schedules.model(c.schedule, c.pp, c.m, c.virtual, c.placement)
    if max(peak_bytes(model.memory, costs, job.forward_only).values()) > cluster.memory_bytes:
        return None
    return build_plan(
        profile,
        profile_path,
        cluster,
        job,
        bounds,
        c.schedule,
        c.pp,
        c.dp,
        c.m,
        c.mbs,
        [first] * S,
        c.virtual,
        schedules.table(c.schedule, c.pp, c.m, c.virtual, c.placement),
        {"status": "balanced split", "solver": "none"},
        c.placement,
    )


# -- the search -------------------------------------------------------------------------------


def search(
    profile: Profile,
    cluster: Cluster,
    job: Job,
    top: int = 3,
    profile_path: str | Path | None = None,
    time_limit: float = 20.0,
    solver: str = "auto",
    refine: int | None = None,
) -> tuple[list[Plan], SearchStats]:
    """The ``top`` plans, best simulated step time first, and what the search did."""
    profile_path = str(profile_path or profile.measurement.get("path", ""))
    if not profile_path or not Path(profile_path).exists():
        raise UserError("plan() needs the profile's file path (profile_path=...) so the plan can refer to it")
    if job.seq_len is not None and job.seq_len != profile.seq_len:
        raise UserError(
            f"the job's sequence length {job.seq_len} differs from the profile's {profile.seq_len}: "
            f"profile again with --seq-len {job.seq_len}"
        )
    stats = SearchStats()
    t0 = time.perf_counter()
    raw = _enumerate(profile, cluster, job, stats)
    stats.add("enumerate", t0)

    t0 = time.perf_counter()
    option_cache: dict[int, dict[str, list[UnitData]]] = {}
    cands: list[_Candidate] = []
    for pp, dp, m, mbs, spec, v, placement in raw:
        if mbs not in option_cache:
            option_cache[mbs] = unit_options(profile, cluster, job, mbs)
        single = v == 1 and spec.name in ("GPipe", "1F1B")
        lb = _objective_bound(
            _lower_bound(option_cache[mbs], cluster, pp, dp, m, single, job.forward_only), option_cache[mbs], job
        )
        cands.append(_Candidate(pp, dp, m, mbs, spec.name, v, lb, placement))
    cands.sort(key=lambda c: (c.lower_bound, c.pp, c.schedule, c.m))
    stats.candidates = len(cands)
    stats.add("bound", t0)

    # screen: every candidate that can still enter the top, best bound first, with the
    # work-balanced split, simulated. A screened plan that fits is a real plan, so the
    # bound may prune against it. Splits whose weights alone overflow a device are refused
    # before their table is built; the memory pattern refuses the rest without simulating.
    keep = max(top, 1)
    schedules = Schedules(job)
    results: list[Plan] = []
    screened: list[tuple[_Candidate, Plan | None]] = []
    splits: dict[tuple[int, int], tuple] = {}
    for i, c in enumerate(cands):
        if len(results) >= keep:
            kth = sorted(objective_s(p) for p in results)[keep - 1]
            if c.lower_bound >= kth:
                stats.pruned = len(cands) - i
                break
        t0 = time.perf_counter()
        p = _screen(profile, profile_path, cluster, job, c, option_cache[c.mbs], schedules, splits)
        stats.simulations += p is not None
        if p is not None and fits(p):
            results.append(p)
        else:
            p = None
        stats.add("screen", t0)
        screened.append((c, p))

    # MILP: small chains get one per screened candidate that can still beat the top; large
    # ones only the most promising (screened fastest first, then the ones that did not fit)
    small = profile.num_units * max(c.stages for c, _ in screened) <= SMALL_MILP if screened else True
    order = sorted(screened, key=lambda x: (x[1] is None, objective_s(x[1]) if x[1] else x[0].lower_bound))
    if not small:
        order = order[: max(2 * top, MILP_CANDIDATES)]
    answers: dict[tuple, object] = {}
    infeasible: list[tuple[_Candidate, StepModel]] = []
    failed: list[str] = []
    unproductive = None  # a large MILP that ended at its time limit on its own start
    for c, screen in order:
        if len(results) >= keep:
            kth = sorted(objective_s(p) for p in results)[keep - 1]
            if c.lower_bound >= kth:
                continue
        if unproductive and screen is not None:
            stats.notes.append(
                f"{c.label()}: kept the balanced split, no MILP "
                f"(the MILP of {unproductive} ended at its time limit without improving on it)"
            )
            continue
        t0 = time.perf_counter()
        model = schedules.model(c.schedule, c.pp, c.m, c.virtual, c.placement)
        key = (c.mbs, _model_key(model))
        start = (screen.bounds, [option_label(s.dtype, s.recompute) for s in screen.stages]) if screen else None
        res = answers.get(key)
        if key in answers:
            stats.milp_reused += 1
        else:
            try:
                res = solve_split(
                    option_cache[c.mbs], model, cluster.memory_bytes, time_limit=time_limit, solver=solver, start=start
                )
            except SolverError as e:  # said in the notes, and the candidate left out
                stats.notes.append(f"{c.label()} mbs={c.mbs} left out: {e}")
                failed.append(str(e))
                res = _FAILED
            answers[key] = res
            stats.milps += 1
        stats.add("milp", t0)
        if res is _FAILED:
            continue
        if res is None:
            infeasible.append((c, model))
            continue
        t0 = time.perf_counter()
        facts = {
            "status": res.status,
            "solver": res.solver,
            "time_s": round(res.time_s, 4),
            "gap": res.gap,
            "bound": res.bound,
            "objective_s": res.objective,
        }
        if start and (res.bounds, res.options) == start:
            p = replace(screen, solver={**facts, "start": "balanced split"})  # the same split: simulated already
            if not small and res.status == "TimeLimit":
                # large chains: the MILPs after one that could not improve its start within the
                # time limit keep their balanced splits (the refinement still searches around them)
                unproductive = c.label()
        else:
            p = build_plan(
                profile,
                profile_path,
                cluster,
                job,
                res.bounds,
                c.schedule,
                c.pp,
                c.dp,
                c.m,
                c.mbs,
                res.options,
                c.virtual,
                schedules.table(c.schedule, c.pp, c.m, c.virtual, c.placement),
                facts,
                c.placement,
            )
            stats.simulations += 1
        stats.add("simulate", t0)
        if fits(p):
            results.append(p)
    results = _dedupe(sorted(results, key=_rank))
    if not results and failed:
        raise SolverError(f"no candidate was solved; first failure: {failed[0]}")
    if not results:
        raise _infeasible(profile, cluster, job, infeasible, option_cache, schedules, time_limit, solver)

    # refine the best few with the simulator
    t0 = time.perf_counter()
    results.sort(key=_rank)
    close = [p for p in results if objective_s(p) <= objective_s(results[0]) * (1 + REFINE_WITHIN)]
    n_refine = min(len(close), refine if refine is not None else max(top, REFINE_AT_LEAST))
    refined = [
        refine_plan(
            p,
            option_cache[p.microbatch_size],
            schedules.model(p.schedule, p.pp, p.microbatches, p.virtual, p.custom_placement),
            time_limit,
            solver,
            stats,
            ALTERNATIVES if profile.num_units * len(p.stages) <= SMALL_MILP else 0,
        )
        for p in results[:n_refine]
    ]
    results = _dedupe(sorted(refined + results[n_refine:], key=_rank))
    stats.add("refine", t0)

    t0 = time.perf_counter()
    out = [replace(p, baselines=_baselines(p)) for p in results[:top]]
    stats.add("baselines", t0)
    return out, stats


def plan(
    profile: Profile,
    cluster: Cluster,
    job: Job,
    top: int = 3,
    profile_path: str | Path | None = None,
    time_limit: float = 20.0,
    solver: str = "auto",
) -> list[Plan]:
    """The ``top`` plans for ``job`` on ``cluster``, best simulated step time first."""
    return search(profile, cluster, job, top, profile_path, time_limit, solver)[0]


def _rank(p: Plan):
    # the job's objective; on a tie, the step, then the MILP's plan (with its solver facts)
    # before the screened balanced split
    return (
        objective_s(p),
        p.predicted.step_s,
        p.solver.get("status") == "balanced split",
        p.pp,
        p.schedule,
        p.virtual,
        p.microbatches,
        p.split,
    )


def _dedupe(plans: list[Plan]) -> list[Plan]:
    seen, out = set(), []
    for p in plans:
        key = (
            p.pp,
            p.schedule,
            p.virtual,
            p.microbatches,
            p.microbatch_size,
            tuple(p.bounds),
            tuple((s.dtype, s.recompute, s.rank) for s in p.stages),
        )
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


# -- baselines ------------------------------------------------------------------------------------


def _baselines(p: Plan) -> tuple[dict, ...]:
    """The hand splits (1F1B, one stage per rank, same pp, dp and microbatching), simulated."""
    out = []
    for name, split_fn in BASELINES.items():
        try:
            bounds = split_fn(p.profile, p.pp)
            dtype = p.stages[0].dtype
            b = build_plan(
                p.profile,
                p.profile_path,
                p.cluster,
                p.job,
                bounds,
                "1F1B",
                p.pp,
                p.dp,
                p.microbatches,
                p.microbatch_size,
                [dtype] * p.pp,
            )
        except UserError:
            continue
        out.append(
            {
                "name": f"{name}-1F1B",
                "split": b.split,
                "step_s": b.predicted.step_s,
                "speedup": b.predicted.step_s / p.predicted.step_s,
                "fits_memory": fits(b),
                "peak_bytes": max(b.predicted.peak_bytes),
            }
        )
    return tuple(out)


# -- infeasible jobs --------------------------------------------------------------------------------


def _infeasible(
    profile, cluster, job, infeasible, option_cache, schedules: Schedules, time_limit, solver
) -> InfeasibleError:
    if not infeasible:
        return InfeasibleError(
            f"no pipeline degree, microbatch size and schedule fit the job: global batch {job.global_batch} on "
            f"{cluster.devices} devices with profiled microbatch sizes {sorted(_entry_sizes(profile, job.dtypes))} "
            f"and schedules {', '.join(job.schedules)}; adjust --global-batch, --devices or --schedules"
        )
    # the least memory any refused candidate needs (candidates with the smallest microbatch first)
    need, where = None, None
    seen = set()
    for c, model in sorted(infeasible, key=lambda cm: (cm[0].mbs, -cm[0].pp))[:8]:
        key = (c.mbs, _model_key(model))
        if key in seen:
            continue
        seen.add(key)
        n, _ = min_memory_split(option_cache[c.mbs], model, time_limit=time_limit, solver=solver)
        if need is None or n < need:
            need, where = n, c
    c = where
    levers = []
    # more devices: twice the pipeline stages, same schedule and microbatching
    U = profile.num_units
    if 2 * c.pp <= U and c.placement is None:  # a Custom placement does not scale with pp
        try:
            m2 = schedules.model(c.schedule, 2 * c.pp, c.m, c.virtual)
            n2, _ = min_memory_split(option_cache[c.mbs], m2, time_limit=time_limit, solver=solver)
            levers.append((n2, f"--devices {cluster.devices * 2} (pp={2 * c.pp}) needs {n2 / 2**30:.2f} GiB"))
        except ScheduleError:
            pass
    if not job.recompute and not job.forward_only:
        opts = unit_options(profile, cluster, replace(job, recompute=True), c.mbs)
        opts = {k: v for k, v in opts.items() if k.endswith("+recompute")}
        model = schedules.model(c.schedule, c.pp, c.m, c.virtual, c.placement)
        n3, _ = min_memory_split(opts, model, time_limit=time_limit, solver=solver)
        levers.append((n3, f"recompute (--recompute) needs {n3 / 2**30:.2f} GiB"))
    smaller = sorted(b for b in _entry_sizes(profile, job.dtypes) if b < c.mbs)
    if smaller:
        levers.append((None, f"a microbatch size below {c.mbs} needs less (profile it with --microbatch-sizes)"))
    best_lever = min((lv for lv in levers if lv[0] is not None), default=None, key=lambda lv: lv[0])
    hint = best_lever[1] if best_lever else (levers[0][1] if levers else "add devices")
    return InfeasibleError(
        f"no plan fits {cluster.memory_bytes / 2**30:.2f} GiB per device: the least any split needs is "
        f"{need / 2**30:.2f} GiB ({c.schedule}, pp={c.pp}, m={c.m}, microbatch size {c.mbs}); "
        f"raise --device-memory to that, or the lever that helps most: {hint}"
    )


# -- a split the user gives ---------------------------------------------------------------------


def score_split(
    profile: Profile,
    cluster: Cluster,
    job: Job,
    split: list[int] | str,
    schedule: str = "1F1B",
    microbatches: int | None = None,
    pp: int | None = None,
    profile_path: str | Path | None = None,
    virtual: int = 1,
    placement: list[int] | None = None,
) -> Plan:
    """Simulate a split the user gives: first unit of stages 1..S-1, or ``"even"`` (with ``pp``).
    With ``placement`` (stage -> rank) the schedule is ``Custom``, its table ``placement_table``."""
    profile_path = str(profile_path or "")
    U = profile.num_units
    spec = schedule_spec("Custom" if placement else schedule)
    if placement:
        check_placement(placement)
        if pp and max(placement) + 1 != pp:
            raise UserError(
                f"--placement {','.join(map(str, placement))} uses {max(placement) + 1} ranks but --pp "
                f"is {pp}: leave out --pp, or place stages on ranks 0..{pp - 1}"
            )
        S, virtual = len(placement), most_stages_per_rank(placement)
        what = f"--placement {','.join(map(str, placement))}"
    else:
        if virtual == 1 and spec.min_virtual > 1:
            virtual = spec.min_virtual
        S = spec.num_stages(pp, virtual) if pp else None
        what = f"--pp {pp} with {schedule}"
    if split == "even":
        if not S:
            raise UserError("--split even needs --pp (or --placement)")
        if S > U:
            raise UserError(f"{what} makes {S} stages but the model has {U} units: use fewer stages")
        bounds = even_split(U, S)
    else:
        cuts = list(split)
        if cuts != sorted(set(cuts)) or not all(0 < c < U for c in cuts):
            raise UserError(f"--split {','.join(map(str, cuts))}: give increasing unit indices between 1 and {U - 1}")
        if not placement and (len(cuts) + 1) % virtual:
            raise UserError(f"--split has {len(cuts) + 1} stages, not a multiple of {virtual} stages per rank")
        if S and S != len(cuts) + 1:
            raise UserError(f"--split has {len(cuts) + 1} stages but {what} makes {S}: give {S - 1} cuts")
        edges = [0, *cuts, U]
        bounds = list(zip(edges[:-1], edges[1:]))
    pp = max(placement) + 1 if placement else len(bounds) // virtual
    if cluster.devices % pp:
        raise UserError(f"--devices {cluster.devices} is not a multiple of {pp} pipeline ranks")
    dp = cluster.devices // pp
    pairs = _microbatching(job, dp)
    if microbatches:
        pairs = [(mm, b) for mm, b in pairs if mm == microbatches]
    dtype = job.dtypes[0]
    pairs = [(mm, b) for mm, b in pairs if b in _entry_sizes(profile, (dtype,))]
    if not pairs:
        raise UserError(
            f"no profiled microbatch size gives {microbatches or 'any'} microbatches for global batch "
            f"{job.global_batch} on {dp} replicas: adjust --microbatches or --global-batch"
        )
    m, mbs = pairs[0]
    table = Schedules(job).table(spec.name, pp, m, virtual, tuple(placement) if placement else None)
    p = build_plan(
        profile,
        profile_path,
        cluster,
        job,
        bounds,
        spec.name,
        pp,
        dp,
        m,
        mbs,
        [dtype] * len(bounds),
        virtual,
        table,
        {"status": "given", "solver": "none"},
        tuple(placement) if placement else None,
    )
    over = [(r, b) for r, b in enumerate(p.predicted.peak_bytes) if b > cluster.memory_bytes]
    if over:
        r, need = max(over, key=lambda x: x[1])
        stages = [s for s in p.stages if s.rank == r]
        what = ", ".join(f"stage {s.index} (units {s.first}..{s.end - 1})" for s in stages)
        raise InfeasibleError(
            f"{what} on rank {r} needs {need / 2**30:.2f} GiB but devices have "
            f"{cluster.memory_bytes / 2**30:.2f} GiB: over by "
            f"{(need - cluster.memory_bytes) / 2**30:.2f} GiB; move units off it, raise "
            f"--device-memory or lower the microbatch size"
        )
    return replace(p, baselines=_baselines(p))
