"""The discrete-event engine: times a schedule table with per-stage costs.

An action starts at max(its rank is free, its input has arrived). A forward of stage
s needs the forward of s-1 (sent over a link when on another rank); a backward (B or
I) of stage s needs the input gradient of stage s+1 (its own forward ran earlier on
the same rank); W needs its I, also earlier on the same rank. An ``Overlap`` pair (a
forward and a full backward, torch's OVERLAP_F_B) is one action: it starts when both
its inputs are there and the rank is free, lasts its backward stage's
``overlap_f_b_s`` (default: the forward's time plus the backward's), and both outputs
leave when it ends, as torch lowers it. Ranks run their actions in table order. The
sweep is topological: each rank advances while its next action's input is there; when
no rank can advance and work is left, the table deadlocks and the cycle of waits is
reported before any time is reported.

Assumptions (see ``Links`` and ``StageCost`` too): one action at a time per rank; sends
overlap compute unless ``Links.overlap`` is False (then the sender is busy for the
transfer); transfers do not contend; after the last backward each rank all-reduces its
gradients across ``dp`` replicas and runs the optimizer step (``optimizer_s``, plus each
of its stages' ``StageCost.optimizer_s``). Memory: static bytes, plus each forward's
activations from the start of F until its B ends (after I, ``keep_bytes`` of them
stay until W); a forward-only table keeps no activations; a pair adds its forward's
activations when it starts and frees its backward's when it ends. In the Timeline a pair
is two events, its forward then its backward, splitting its span in proportion to their
own times.
Same input, same output, byte for byte.

Speed: the hot loop works on private flat lists indexed by ``stage * M + microbatch``
and records only start/end times and which dependency bound each start; events,
transfers, memory and the critical path are built from those afterwards.
"""

from __future__ import annotations

import gc
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from .actions import Kind, Overlap, ScheduleError, Table, flat_actions, format_grid, stage_ranks, validate_table
from .collectives import Link
from .costs import DPComm, DPMode, Links, StageCost
from .timeline import Collective, Event, RankStats, Timeline, Transfer

__all__ = ["SimInput", "simulate"]

_F, _B, _I, _W = Kind.F, Kind.B, Kind.I, Kind.W
_KSTR = {Kind.F: "F", Kind.B: "B", Kind.I: "I", Kind.W: "W"}


@dataclass(frozen=True)
class SimInput:
    """Everything the engine needs; nothing else is read."""

    table: Table
    costs: list[StageCost]  # indexed by stage
    links: Links = field(default_factory=Links)
    dp: int = 1  # data-parallel replicas (gradient all-reduce at the end of the step)
    dp_links: Links | None = None  # links the all-reduce runs over (default: ``links``)
    optimizer_s: float = 0.0  # optimizer step per rank
    forward_only: bool = False
    #: data-parallel communication (mode, group, link); None: a ddp ring over ``dp_links``' slowest link
    comm: DPComm | None = None

    def dp_comm(self) -> DPComm:
        if self.comm is not None:
            return self.comm
        links = self.dp_links or self.links
        slowest = Link(max(links.latency_s, links.inter_latency_s), min(links.bandwidth_Bps, links.inter_bandwidth_Bps))
        return DPComm(DPMode.DDP, self.dp, slowest)


class _Invalid(Exception):
    """Raised inside the sweep; the caller turns it into validate_table's picture."""


def _shape(table: Table) -> tuple[dict[int, int], int, int, bool]:
    """(stage -> rank, stages, microbatches, whether the table holds Overlap pairs)."""
    owner = stage_ranks(table)
    try:  # an Action's third field is its microbatch; an Overlap has two fields
        mbs, pairs = [a[2] for acts in table.values() for a in acts], False
    except IndexError:
        mbs, pairs = [a[2] for acts in table.values() for a in flat_actions(acts)], True
    return owner, (max(owner) + 1 if owner else 0), (max(mbs) + 1 if mbs else 0), pairs


def _has_backward(table: Table) -> bool:
    return any(a[1] is not _F for acts in table.values() for a in flat_actions(acts))


def simulate(inp: SimInput | object, detail: bool = True) -> Timeline:
    """Simulate one training (or forward-only) step. Accepts a SimInput or anything with ``sim_input()``.

    ``detail=False``: the step time and the per-rank figures (busy, bubbles, peak memory) only,
    no events, transfers, memory curves or critical path, as a search scoring many splits needs."""
    if not isinstance(inp, SimInput):
        inp = inp.sim_input()  # a Plan, without the simulator knowing the planner
    # The step allocates ~3 objects per action and none of them form cycles: pausing the
    # cyclic garbage collector meanwhile saves the repeated generation scans it would run.
    paused = gc.isenabled()
    gc.disable()
    try:
        return _simulate(inp, detail)
    finally:
        if paused:
            gc.enable()


def _simulate(inp: SimInput, detail: bool = True) -> Timeline:
    table, costs, links = inp.table, inp.costs, inp.links
    if not table or not any(table.values()):
        raise ScheduleError("the table is empty")
    owner, S, M, pairs = _shape(table)
    if len(costs) != S:
        raise ScheduleError(f"the table has {S} stages but {len(costs)} stage costs were given")
    has_backward = _has_backward(table)
    forward_only = inp.forward_only or not has_backward
    if forward_only and has_backward:
        validate_table(table, forward_only=True)  # raises with the picture
    comm = inp.dp_comm()
    grads = {r: sum(costs[s].param_bytes for s, o in owner.items() if o == r) for r in table}
    heads = {r: 0.0 if forward_only else comm.head_s(g) for r, g in grads.items()}
    try:
        run = _sweep(table, costs, links, owner, S, M, heads)
    except _Invalid:
        validate_table(table, forward_only=forward_only)
        raise ScheduleError("the table is invalid\n" + format_grid(table)) from None
    if run.blocked:
        validate_table(table, forward_only=forward_only)  # an invalid table reads better than a deadlock
        raise ScheduleError(_deadlock_message(table, run.blocked, owner))
    return _timeline(inp, forward_only, owner, S, M, run, pairs, detail)


class _Run(NamedTuple):
    starts: dict[int, list[float]]  # rank -> start of each of its actions, in table order
    ends: dict[int, list[float]]
    bound: dict[int, list[bool]]  # True: the action waited for its input; False: for its rank
    fpos: list[int]  # position of F(s, m) in its rank's list, at s*M+m
    gpos: list[int]  # position of B/I(s, m)
    free: dict[int, float]  # when each rank is done (including a last blocking send)
    fx: list[float]  # transfer time of stage s's output to stage s+1 (0 on one rank)
    gx: list[float]  # transfer time of stage s's input gradient to stage s-1
    blocked: dict[int, int]  # rank -> step it is stuck at (empty: no deadlock)


def _sweep(
    table: Table, costs: list[StageCost], links: Links, owner: dict[int, int], S: int, M: int, start: dict[int, float]
):
    """The hot loop: a ``_Run`` of per-rank start/end/bound lists, producer positions, blocked ranks.

    ``farr[s*M+m]``: when F(s, m)'s output is usable by stage s+1 (end + transfer);
    ``garr[s*M+m]``: when B/I(s, m)'s input gradient is usable by stage s-1;
    ``iend[s*M+m]``: end of I(s, m) until its W runs (then -1.0).
    ``bound[r][j]``: True when action j of rank r waited for its input, False when for its rank.
    """
    SM = S * M
    last = S - 1
    fdur = [c.forward_s for c in costs]
    bdur = [c.backward_s for c in costs]
    odur = [c.overlap_f_b_s for c in costs]  # None: forward + backward
    idur = [c.backward_input_s for c in costs]
    wdur = [c.backward_weight_s for c in costs]
    # transfer times per stage boundary, 0 when both stages share a rank
    fx = [links.transfer_s(owner[s], owner[s + 1], costs[s].output_bytes) if s < last else 0.0 for s in range(S)]
    gx = [links.transfer_s(owner[s], owner[s - 1], costs[s].input_bytes) if s > 0 else 0.0 for s in range(S)]
    busy_send = not links.overlap
    farr: list = [None] * SM
    garr: list = [None] * SM
    iend: list = [None] * SM
    fpos = [0] * SM  # position of F(s, m) in its rank's list, for the critical path
    gpos = [0] * SM
    ranks = sorted(table)
    ptr = {r: 0 for r in ranks}
    free = {r: start.get(r, 0.0) for r in ranks}  # a rank starts once its weights are gathered (fsdp)
    starts = {r: [] for r in ranks}
    ends = {r: [] for r in ranks}
    bound = {r: [] for r in ranks}
    waiting: dict[int, int] = {}  # key (idx for F outputs, -1-idx for gradients) -> blocked rank
    queue = deque(ranks)
    queued = set(ranks)
    while queue:
        r = queue.popleft()
        queued.discard(r)
        acts = table[r]
        n = len(acts)
        p = ptr[r]
        t = free[r]
        st, en, bd = starts[r].append, ends[r].append, bound[r].append
        while p < n:
            a = acts[p]
            try:
                s, k, m = a
            except ValueError:  # an Overlap pair has two fields: rare, so no type test per action
                out = _pair(a, M, last, farr, garr, fpos, gpos, fdur, bdur, odur, fx, gx, waiting, r, p, t)
                if out is None:
                    break
                start, end, bound_in, fkey, gkey = out
                t = end
                if busy_send:
                    t += fx[a[0][0]] + gx[a[1][0]]
                bd(bound_in)
                st(start)
                en(end)
                p += 1
                if waiting:
                    for key in (fkey, gkey):
                        w = waiting.pop(key, None)
                        if w is not None and w not in queued:
                            queue.append(w)
                            queued.add(w)
                continue
            idx = s * M + m
            if k is _F:
                if farr[idx] is not None:
                    raise _Invalid
                if s:
                    ready = farr[idx - M]
                    if ready is None:
                        waiting[idx - M] = r
                        break
                else:
                    ready = 0.0
                start = ready if ready > t else t
                bd(ready > t)
                t = end = start + fdur[s]
                farr[idx] = end + fx[s]
                fpos[idx] = p
                key = idx
                if busy_send:
                    t += fx[s]
            elif k is _W:
                if iend[idx] is None or iend[idx] < 0:
                    raise _Invalid
                iend[idx] = -1.0
                start = t
                bd(False)
                end = t = start + wdur[s]
                st(start)
                en(end)
                p += 1
                continue
            else:  # B or I
                if farr[idx] is None or garr[idx] is not None:
                    raise _Invalid
                if s != last:
                    ready = garr[idx + M]
                    if ready is None:
                        waiting[-1 - idx - M] = r
                        break
                else:
                    ready = 0.0
                start = ready if ready > t else t
                bd(ready > t)
                if k is _B:
                    t = end = start + bdur[s]
                else:
                    t = end = start + idur[s]
                    iend[idx] = end
                garr[idx] = end + gx[s]
                gpos[idx] = p
                key = -1 - idx
                if busy_send:
                    t += gx[s]
            st(start)
            en(end)
            p += 1
            if waiting:
                w = waiting.pop(key, None)
                if w is not None and w not in queued:
                    queue.append(w)
                    queued.add(w)
        ptr[r] = p
        free[r] = t
    blocked = {r: ptr[r] for r in ranks if ptr[r] < len(table[r])}
    if not blocked:
        fwd_missing = None in farr
        has_bwd = _has_backward(table)
        if fwd_missing or (has_bwd and (None in garr or any(x is not None and x >= 0 for x in iend))):
            raise _Invalid
    return _Run(starts, ends, bound, fpos, gpos, free, fx, gx, blocked)


def _pair(
    a: Overlap,
    M: int,
    last: int,
    farr: list,
    garr: list,
    fpos: list,
    gpos: list,
    fdur: list,
    bdur: list,
    odur: list,
    fx: list,
    gx: list,
    waiting: dict,
    r: int,
    p: int,
    t: float,
):
    """Time an Overlap at position p of rank r, free at t: (start, end, waited for an input, the keys of
    its two outputs), or None when an input has not arrived (the rank is then registered as waiting)."""
    (fs, _, fm), (bs, _, bm) = a
    fidx, bidx = fs * M + fm, bs * M + bm
    if farr[fidx] is not None or farr[bidx] is None or garr[bidx] is not None:
        raise _Invalid
    ready = 0.0
    if fs:
        ready = farr[fidx - M]
        if ready is None:
            waiting[fidx - M] = r
            return None
    if bs != last:
        g = garr[bidx + M]
        if g is None:
            waiting[-1 - bidx - M] = r
            return None
        if g > ready:
            ready = g
    start = ready if ready > t else t
    d = odur[bs]
    end = start + (fdur[fs] + bdur[bs] if d is None else d)
    farr[fidx] = end + fx[fs]
    garr[bidx] = end + gx[bs]
    fpos[fidx] = gpos[bidx] = p
    return start, end, ready > t, fidx, -1 - bidx


def _timeline(
    inp: SimInput,
    forward_only: bool,
    owner: dict[int, int],
    S: int,
    M: int,
    run: _Run,
    pairs: bool,
    detail: bool = True,
) -> Timeline:
    table, costs = inp.table, inp.costs
    starts, ends, fx, gx = run.starts, run.ends, run.fx, run.gx
    ranks = sorted(table)
    last = S - 1
    new, kstr = tuple.__new__, _KSTR
    events: list[Event] = []
    transfers: list[Transfer] = []
    memory: dict[int, list[tuple[float, int]]] = {}
    stats = []
    busy = {}
    for r in ranks:
        acts, st, en = table[r], starts[r], ends[r]
        if detail and pairs:  # two events each
            for a, b, e in zip(acts, st, en):
                events += (
                    _pair_events(r, a, b, e, costs)
                    if a.__class__ is Overlap
                    else (new(Event, (r, a[0], _KSTR[a[1]], a[2], b, e)),)
                )
        elif detail:
            events += [new(Event, (r, s, kstr[k], m, b, e)) for (s, k, m), b, e in zip(acts, st, en)]
        busy[r] = sum(en) - sum(st)
    # end of step: data-parallel communication, then the optimizer (the communication track)
    comm = inp.dp_comm()
    finish = {}
    collectives = []
    for r in ranks:
        grad_bytes = sum(costs[s].param_bytes for s, o in owner.items() if o == r)
        opt_s = inp.optimizer_s + sum(costs[s].optimizer_s for s, o in owner.items() if o == r)
        head = 0.0 if forward_only else comm.head_s(grad_bytes)
        reduce = 0.0 if forward_only else comm.tail_s(grad_bytes)
        finish[r] = run.free[r] + reduce + (0.0 if forward_only else opt_s)
        if detail and head:
            collectives.append(Collective(r, "UNSHARD", 0.0, head, grad_bytes))
        if detail and reduce:
            kind = "ALL_REDUCE" if comm.mode is DPMode.DDP else "REDUCE_GRAD"
            collectives.append(Collective(r, kind, run.free[r], run.free[r] + reduce, grad_bytes))
        if detail and opt_s and not forward_only:
            collectives.append(Collective(r, "OPTIMIZER", run.free[r] + reduce, finish[r], 0))
    step = max(finish.values()) if finish else 0.0

    # One pass per rank builds its sends and its memory curve. Sends: every output that
    # crosses ranks, from the producer's end to its arrival. Memory: activations from F's
    # start until the backward frees them; a rank's actions are in time order, so its
    # memory points are too (no sort). Without detail, only the peak is kept.
    fdst = [owner[s + 1] if detail and s < last and owner[s + 1] != owner[s] else -1 for s in range(S)]
    gdst = [owner[s - 1] if detail and s > 0 and owner[s - 1] != owner[s] else -1 for s in range(S)]
    out_b = [c.output_bytes for c in costs]
    in_b = [c.input_bytes for c in costs]
    zero = [0] * S
    act = zero if forward_only else [c.activation_bytes for c in costs]
    keep = zero if forward_only else [c.keep_bytes for c in costs]
    ta = transfers.append
    for r in ranks:
        mine = [s for s, o in owner.items() if o == r]
        static = sum(costs[s].param_bytes if forward_only else costs[s].static_bytes for s in mine)
        level = peak = static
        peak_at = 0.0
        pts = [(0.0, static)]
        pa = pts.append if detail else _drop
        for a, b, e in zip(table[r], starts[r], ends[r]):
            try:
                s, k, m = a
            except ValueError:  # an Overlap pair: its forward, then its backward
                (fs, _, fm), (s, _, m) = a
                d = fdst[fs]
                if d >= 0:
                    ta(new(Transfer, (r, d, fs, "F", fm, e, e + fx[fs], out_b[fs])))
                d = gdst[s]
                if d >= 0:
                    ta(new(Transfer, (r, d, s, "B", m, e, e + gx[s], in_b[s])))
                level += act[fs]
                pa((b, level))
                if level > peak:
                    peak, peak_at = level, b
                level -= act[s]
                pa((e, level))
                continue
            if k is _F:
                d = fdst[s]
                if d >= 0:
                    ta(new(Transfer, (r, d, s, "F", m, e, e + fx[s], out_b[s])))
                if not forward_only:
                    level += act[s]
                    pa((b, level))
                    if level > peak:
                        peak, peak_at = level, b
                continue
            if k is _W:
                level -= keep[s]
            else:
                d = gdst[s]
                if d >= 0:
                    ta(new(Transfer, (r, d, s, "B", m, e, e + gx[s], in_b[s])))
                level -= act[s] if k is _B else act[s] - keep[s]
            pa((e, level))
        if detail:
            memory[r] = pts
        stats.append(RankStats(r, busy[r], 1.0 - busy[r] / step if step > 0 else 0.0, peak, peak_at))
    path = _critical_path(table, owner, M, run) if detail else ()
    return Timeline(step, tuple(stats), tuple(events), tuple(transfers), memory, path, collectives=tuple(collectives))


def _pair_events(r: int, a: Overlap, b: float, e: float, costs: list[StageCost]) -> tuple[Event, Event]:
    """A pair's span as its forward then its backward, split in proportion to their own times."""
    (fs, _, fm), (bs, _, bm) = a
    f, g = costs[fs].forward_s, costs[bs].backward_s
    mid = b + f if costs[bs].overlap_f_b_s is None else b + (e - b) * (f / (f + g) if f + g > 0 else 0.0)
    return Event(r, fs, "F", fm, b, mid), Event(r, bs, "B", bm, mid, e)


def _drop(_point) -> None:
    """The memory curve's append when no curve is kept."""


def _critical_path(table: Table, owner: dict[int, int], M: int, run: _Run) -> tuple[str, ...]:
    """Walk back from the last finisher along the recorded binding dependency: O(path length)."""
    starts, ends, bound, fpos, gpos = run.starts, run.ends, run.bound, run.fpos, run.gpos
    cands = [(ends[r][-1], -r) for r in table if ends[r]]
    if not cands:
        return ()
    _, neg = max(cands)
    r, j = -neg, len(ends[-neg]) - 1
    last = len(run.fx) - 1

    def producer(a) -> tuple[int, int, str, int, float]:  # (rank, position, "F"|"B", microbatch, arrival)
        s, k, m = a
        if k is _F:
            src, q = owner[s - 1], fpos[(s - 1) * M + m]
            return src, q, "F", m, ends[src][q] + run.fx[s - 1]
        src, q = owner[s + 1], gpos[(s + 1) * M + m]
        return src, q, "B", m, ends[src][q] + run.gx[s + 1]

    path = []
    while True:
        a = table[r][j]
        path.append(str(a))
        if bound[r][j]:
            if a.__class__ is Overlap:  # the input that arrived last
                ins = [producer(x) for x in a if (x[0] > 0 if x[1] is _F else x[0] < last)]
                src, q, what, m, _ = max(ins, key=lambda x: x[4])
            else:
                src, q, what, m, _ = producer(a)
            if src != r:
                path.append(f"send {what}{m} {src}->{r}")
            r, j = src, q
        elif j > 0 and starts[r][j] > 0.0:
            j -= 1
        else:
            break
    return tuple(reversed(path))


def _deadlock_message(table: Table, blocked: dict[int, int], owner: dict[int, int]) -> str:
    """Name the cycle of waits: rank a waits for X on rank b, which waits for Y on rank a."""

    def ran(r: int, want: set[tuple[int, Kind, int]]) -> bool:
        return any(tuple(a) in want for a in flat_actions(table[r][: blocked.get(r, len(table[r]))]))

    def wait_of(r: int) -> tuple[str, int]:
        entry = table[r][blocked[r]]
        for s, k, m in entry if entry.__class__ is Overlap else (entry,):
            if k is _F and s > 0 and not ran(owner[s - 1], {(s - 1, _F, m)}):
                return f"{s - 1}F{m}", owner[s - 1]
            if k is not _F and s + 1 in owner and not ran(owner[s + 1], {(s + 1, _B, m), (s + 1, _I, m)}):
                return f"the gradient from stage {s + 1} microbatch {m} (its B or I)", owner[s + 1]
        raise AssertionError(f"rank {r} is blocked at {entry} with its inputs there")  # a bug, not a user error

    start = min(blocked)
    chain, seen = [], {}
    r = start
    while r in blocked and r not in seen:
        seen[r] = len(chain)
        what, src = wait_of(r)
        chain.append((r, what, src))
        r = src
    cycle = chain[seen[r] :] if r in seen else chain
    lines = ["the table deadlocks: these ranks wait for each other in a cycle"]
    for i, (a, what, b) in enumerate(cycle):
        act = table[a][blocked[a]]
        lead = "  rank" if i == 0 else "  which waits: rank"
        lines.append(f"{lead} {a} at step {blocked[a]} ({act}) waits for {what} on rank {b}")
    if r in seen:
        lines.append(f"  back to rank {cycle[0][0]}: each waits for an action queued behind its own, so none can run")
    others = sorted(set(blocked) - {c[0] for c in cycle})
    if others:
        lines.append(
            "  also blocked: " + ", ".join(f"rank {o} at step {blocked[o]} ({table[o][blocked[o]]})" for o in others)
        )
    lines.append(format_grid(table, start, blocked[start]))
    return "\n".join(x for x in lines if x)
