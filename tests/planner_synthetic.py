"""Synthetic Profiles for planner tests (random small chains, written to a file: plans refer to one),
and the exhaustive search the planner is held against."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

from planner import Job
from planner.candidate import Candidate
from planner.pricing import cost_model, job_options
from planner.scoring import Context, build_plan, fits
from profiles.types import Profile, ProfileEntry, UnitCost, WholeModel
from simulator.actions import ScheduleError
from simulator.costs import CostModel, DPMode, Links, Option, UnitRecord
from simulator.schedules import schedule_spec


def synthetic_profile(
    units: list[dict],
    path: Path,
    name: str = "synthetic",
    seq_len: int = 16,
    config: dict | None = None,
    dtypes: tuple[str, ...] = ("fp32",),
) -> Path:
    """``units``: dicts with f, b, params, saved, out (seconds, counts, bytes); I = b * 0.5 + W split.
    ``config``: the model config (e.g. attention heads, for tp); each dtype after the first is an
    entry at half the times and bytes (a 16-bit run of the same chain)."""
    entries = [_entry(units, dtype, 0.5 if k else 1.0) for k, dtype in enumerate(dtypes)]
    prof = Profile(
        name, config or {}, "synthetic", "cpu", seq_len, "analytic", tuple(entries), {"note": "synthetic, for tests"}
    )
    prof.save(path)
    return path


def _entry(units: list[dict], dtype: str, scale: float) -> ProfileEntry:
    costs = []
    for i, u in enumerate(units):
        i_share = u.get("i_share", 0.5)
        costs.append(
            UnitCost(
                u.get("name", f"block{i}"),
                u.get("kind", "block"),
                u["f"] * scale,
                u["b"] * scale,
                u["b"] * i_share * scale,
                u["b"] * (1 - i_share) * scale,
                u["params"],
                int(u["params"] * 4 * scale),
                int(u["saved"] * scale),
                int(u["out"] * scale),
                0.0,
            )
        )
    whole = WholeModel(
        sum(c.forward_s for c in costs), sum(c.backward_s for c in costs), sum(c.saved_bytes for c in costs)
    )
    return ProfileEntry(dtype, 1, tuple(costs), whole)


def random_units(rng: random.Random, n: int) -> list[dict]:
    """A chain with uneven units: a light embedding, blocks of varying cost, sometimes a heavy head."""
    out = []
    for i in range(n):
        f = rng.uniform(0.5, 3.0) * 1e-3
        if i == n - 1 and rng.random() < 0.5:
            f *= rng.uniform(2, 5)
        out.append(
            {
                "f": f,
                "b": f * rng.uniform(1.5, 2.5),
                "params": rng.randint(10_000, 400_000),
                "saved": rng.randint(50_000, 2_000_000),
                "out": rng.randint(1_000, 200_000),
                "i_share": rng.uniform(0.4, 0.6),
            }
        )
    return out


def record_model(rows: list[tuple], bandwidth_Bps: float = float("inf")) -> CostModel:
    """A one-option (fp32) CostModel straight from per-unit rows ``(F, B, I, static, act, out_bytes)``
    (W = B - I, keep = act // 2), for MILP tests that need no Profile."""
    recs = []
    for i, (f, b, inp, static, act, out) in enumerate(rows):
        recs.append(
            UnitRecord(
                forward_s=f,
                backward_s=b,
                input_s=inp,
                weight_s=b - inp,
                static_bytes=static,
                activation_bytes=act,
                keep_bytes=act // 2,
                output_bytes=out,
                input_bytes=rows[i - 1][5] if i else 0,
                grad_bytes=0,
                params=0,
                optimizer_s=0.0,
            )
        )
    return CostModel(records={Option(): tuple(recs)}, links=Links(bandwidth_Bps=bandwidth_Bps))


def _layouts(job: Job, devices: int, pp: int):
    for tp in job.tp:
        dp = devices // (pp * tp)
        for mode in job.dp_modes if dp > 1 else ("ddp",):
            yield job.layout(tp=tp, dp=dp, dp_mode=DPMode(mode), sequence_parallel=tp > 1).on_pipeline(pp)


def exhaustive(profile, path, cluster, job, pp):
    """The fastest plan that fits among every layout (the job's tp degrees and dp modes on the
    cluster's devices), schedule, virtual, contiguous split and per-stage option the job allows,
    each simulated; None when none fits. The reference the planner is tested against."""
    U, best = profile.num_units, None
    options = job_options(job)
    ctx = Context(profile, str(path), cluster, job)
    for layout in _layouts(job, cluster.devices, pp):
        m = job.global_batch // layout.dp
        costs = cost_model(profile, cluster, job, 1, layout=layout)
        for name in job.schedules:
            spec = schedule_spec(name)
            for v in job.virtual:
                try:
                    spec.check(pp, m, v)
                except ScheduleError:
                    continue
                S = spec.num_stages(pp, v)
                if S > U:
                    continue
                for cuts in itertools.combinations(range(1, U), S - 1):
                    edges = [0, *cuts, U]
                    bounds = list(zip(edges[:-1], edges[1:]))
                    for chosen in itertools.product(options, repeat=S):
                        c = Candidate(pp=pp, layout=layout, m=m, mbs=1, spec=spec, virtual=v)
                        p = build_plan(ctx, c, bounds, list(chosen), costs=costs)
                        if fits(p) and (best is None or p.predicted.step_s < best.predicted.step_s):
                            best = p
    return best
