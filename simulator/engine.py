"""The discrete-event engine: times a schedule table with per-stage costs.

An action starts at max(its rank is free, its inputs have arrived). A forward of
stage s needs the forward of s-1 (sent over a link when on another rank); a backward
(B or I) of stage s needs its own forward and the input gradient of stage s+1; W needs
its I. Ranks run their actions in table order. The sweep is topological: each rank
advances while its next action's inputs are done; when no rank can advance and work
is left, the table deadlocks and the waiting chain is reported.

Assumptions (see ``Links`` and ``StageCost`` too): one action at a time per rank; sends
overlap compute unless ``Links.overlap`` is False; transfers do not contend; after
the last backward each rank all-reduces its gradients across ``dp`` replicas and
runs the optimizer step (``optimizer_s``). Same input, same output, byte for byte.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .actions import Action, Kind, ScheduleError, Table, format_grid, stage_ranks, validate_table
from .costs import Links, StageCost
from .timeline import Event, RankStats, Timeline, Transfer

__all__ = ["SimInput", "simulate", "allreduce_s"]


@dataclass(frozen=True)
class SimInput:
    """Everything the engine needs; nothing else is read."""

    table: Table
    costs: list[StageCost]  # indexed by stage
    links: Links = field(default_factory=Links)
    dp: int = 1  # data-parallel replicas (gradient all-reduce at the end of the step)
    dp_links: Links | None = None  # links the all-reduce runs over (default: ``links`` across nodes)
    optimizer_s: float = 0.0  # optimizer step per rank
    forward_only: bool = False


def allreduce_s(nbytes: int, dp: int, links: Links) -> float:
    """Ring all-reduce: 2(d-1) steps, each moving nbytes/d over the slowest link."""
    if dp <= 1 or nbytes == 0:
        return 0.0
    bw = min(links.bandwidth_Bps, links.inter_bandwidth_Bps)
    lat = max(links.latency_s, links.inter_latency_s)
    return 2 * (dp - 1) * (lat + nbytes / dp / bw)


def _duration(kind: Kind, c: StageCost) -> float:
    if kind is Kind.F:
        return c.forward_s
    if kind is Kind.B:
        return c.backward_s
    if kind is Kind.I:
        return c.backward_input_s
    return c.backward_weight_s


def simulate(inp: "SimInput | object") -> Timeline:
    """Simulate one training (or forward-only) step. Accepts a SimInput or anything with ``sim_input()``."""
    if not isinstance(inp, SimInput):
        inp = inp.sim_input()  # a Plan, without the simulator knowing the planner
    table, costs, links = inp.table, inp.costs, inp.links
    S, M = validate_table(table, forward_only=inp.forward_only)
    if len(costs) != S:
        raise ScheduleError(f"the table has {S} stages but {len(costs)} stage costs were given")
    owner = stage_ranks(table)
    ranks = sorted(table)
    done: dict[tuple[int, str, int], float] = {}  # (stage, "F"|"G"|"I", mb) -> time its output is ready (on its rank)
    ptr = {r: 0 for r in ranks}
    free = {r: 0.0 for r in ranks}
    busy = {r: 0.0 for r in ranks}
    waiting: dict[tuple[int, str, int], int] = {}  # key -> rank blocked on it
    events: list[Event] = []
    transfers: list[Transfer] = []
    mem_delta: dict[int, list[tuple[float, int, int]]] = {r: [] for r in ranks}  # (t, order, delta)
    order = 0

    def arrival(key: tuple[int, str, int], dst: int, nbytes: int, kind: str, mb: int) -> float | None:
        """When the output named ``key`` is usable on rank ``dst`` (None: not produced yet)."""
        t = done.get(key)
        if t is None:
            return None
        src = owner[key[0]]
        if src == dst:
            return t
        return t + links.transfer_s(src, dst, nbytes)

    def needs(a: Action, rank: int) -> tuple[float | None, tuple[int, str, int]]:
        s, m = a.stage, a.microbatch
        if a.kind is Kind.F:
            if s == 0:
                return 0.0, (s, "F", m)
            key = (s - 1, "F", m)
            return arrival(key, rank, costs[s - 1].output_bytes, "F", m), key
        if a.kind is Kind.W:
            key = (s, "I", m)
            return done.get(key), key
        key = (s, "F", m)
        t = done.get(key)
        if t is None:
            return None, key
        if s == S - 1:
            return t, key
        gkey = (s + 1, "G", m)
        g = arrival(gkey, rank, costs[s + 1].input_bytes, "B", m)
        return (None if g is None else max(t, g)), gkey

    queue = deque(ranks)
    queued = set(ranks)
    while queue:
        r = queue.popleft()
        queued.discard(r)
        acts = table[r]
        while ptr[r] < len(acts):
            a = acts[ptr[r]]
            ready, key = needs(a, r)
            if ready is None:
                waiting[key] = r
                break
            start = max(free[r], ready)
            c = costs[a.stage]
            end = start + _duration(a.kind, c)
            events.append(Event(r, a.stage, a.kind.value, a.microbatch, start, end))
            busy[r] += end - start
            free[r] = end
            ptr[r] += 1
            # memory: activations held from F until the backward frees them
            if a.kind is Kind.F and not inp.forward_only:
                mem_delta[r].append((start, order, c.activation_bytes))
            elif a.kind is Kind.B:
                mem_delta[r].append((end, order, -c.activation_bytes))
            elif a.kind is Kind.I:
                keep = int(c.activation_bytes * c.w_keep_fraction)
                mem_delta[r].append((end, order, -(c.activation_bytes - keep)))
            elif a.kind is Kind.W:
                mem_delta[r].append((end, order, -int(c.activation_bytes * c.w_keep_fraction)))
            order += 1
            # record outputs and the transfers they cause
            produced = []
            if a.kind is Kind.F:
                produced.append(((a.stage, "F", a.microbatch), a.stage + 1, c.output_bytes, "F"))
            elif a.kind in (Kind.B, Kind.I):
                produced.append(((a.stage, "G", a.microbatch), a.stage - 1, c.input_bytes, "B"))
                if a.kind is Kind.I:
                    produced.append(((a.stage, "I", a.microbatch), None, 0, ""))
            for key_out, consumer_stage, nbytes, tkind in produced:
                done[key_out] = end
                if consumer_stage is not None and 0 <= consumer_stage < S and owner[consumer_stage] != r:
                    dst = owner[consumer_stage]
                    t_x = links.transfer_s(r, dst, nbytes)
                    transfers.append(Transfer(r, dst, a.stage, tkind, a.microbatch, end, end + t_x, nbytes))
                    if not links.overlap:
                        free[r] += t_x
                waiter = waiting.pop(key_out, None)
                if waiter is not None and waiter not in queued:
                    queue.append(waiter)
                    queued.add(waiter)
    if any(ptr[r] < len(table[r]) for r in ranks):
        raise ScheduleError(_deadlock_message(table, ptr, waiting, owner))

    # end of step: gradient all-reduce across replicas, then the optimizer
    dp_links = inp.dp_links or links
    finish = {}
    for r in ranks:
        grad_bytes = sum(costs[s].param_bytes for s, o in owner.items() if o == r)
        tail = 0.0 if inp.forward_only else allreduce_s(grad_bytes, inp.dp, dp_links) + inp.optimizer_s
        finish[r] = free[r] + tail
    step = max(finish.values()) if finish else 0.0

    stats, memory = [], {}
    for r in ranks:
        static = sum(costs[s].static_bytes for s, o in owner.items() if o == r)
        if inp.forward_only:
            static = sum(costs[s].param_bytes for s, o in owner.items() if o == r)
        level, peak, peak_at = static, static, 0.0
        pts = [(0.0, static)]
        for t, _, d in sorted(mem_delta[r]):
            level += d
            pts.append((t, level))
            if level > peak:
                peak, peak_at = level, t
        memory[r] = pts
        stats.append(RankStats(r, busy[r], 1.0 - busy[r] / step if step > 0 else 0.0, peak, peak_at))
    events.sort(key=lambda e: (e.rank, e.start_s))
    return Timeline(step, tuple(stats), tuple(events), tuple(transfers), memory,
                    _critical_path(events, transfers, step))


def _critical_path(events: list[Event], transfers: list[Transfer], step: float) -> tuple[str, ...]:
    """Walk back from the last action: each step to whatever ended exactly when it started."""
    if not events:
        return ()
    eps = 1e-12
    by_end: dict[float, list] = {}
    for e in events:
        by_end.setdefault(round(e.end_s, 12), []).append(e)
    arrivals: dict[float, list[Transfer]] = {}
    for t in transfers:
        arrivals.setdefault(round(t.end_s, 12), []).append(t)
    cur = max(events, key=lambda e: (e.end_s, -e.rank))
    path = [f"{cur.stage}{cur.kind}{cur.microbatch}"]
    for _ in range(len(events)):
        if cur.start_s <= eps:
            break
        key = round(cur.start_s, 12)
        same_rank = [e for e in by_end.get(key, []) if e.rank == cur.rank]
        tr = [t for t in arrivals.get(key, []) if t.dst == cur.rank]
        if tr:
            t = tr[0]
            path.append(f"send {t.kind}{t.microbatch} {t.src}->{t.dst}")
            src = [e for e in by_end.get(round(t.start_s, 12), []) if e.rank == t.src]
            if not src:
                break
            cur = src[0]
        elif same_rank:
            cur = same_rank[0]
        else:
            other = by_end.get(key, [])
            if not other:
                break
            cur = other[0]
        path.append(f"{cur.stage}{cur.kind}{cur.microbatch}")
    return tuple(reversed(path))


def _deadlock_message(table: Table, ptr: dict[int, int], waiting: dict, owner: dict[int, int]) -> str:
    blocked = {}
    for key, r in waiting.items():
        if ptr[r] < len(table[r]):
            blocked[r] = key
    lines = ["the table deadlocks: no rank can run its next action"]
    for r in sorted(blocked):
        s, k, m = blocked[r]
        what = {"F": f"{s}F{m}", "G": f"the input gradient from stage {s} microbatch {m}", "I": f"{s}I{m}"}[k]
        src = owner.get(s, "?")
        src_step = ptr.get(src, 0) if isinstance(src, int) else "?"
        lines.append(f"  rank {r} at step {ptr[r]} ({table[r][ptr[r]]}) waits for {what} on rank {src}, "
                     f"which is stuck at step {src_step}")
    first = min(blocked) if blocked else None
    lines.append(format_grid(table, first, ptr[first] if first is not None else None))
    return "\n".join(lines)
