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
gradients across ``dp`` replicas (overlapped with its remaining backwards when the layout says
so, see ``_overlapped_reduction``) and runs the optimizer step (``optimizer_s``, plus each
of its stages' ``StageCost.optimizer_s``). Memory: static bytes, plus each forward's
activations from the start of F until its B ends (after I, ``w_keep_fraction`` of them
stay until W); a forward-only table keeps no activations; a pair adds its forward's
activations when it starts and frees its backward's when it ends. In the Timeline a pair
is two events, its forward then its backward, splitting its span in proportion to their
own times.
Same input, same output, byte for byte.

Speed: the sweep (``simulator.sweep``, the hot loop) records only each action's start and
end; events, transfers, memory and the critical path are built from those afterwards, each
by its own function here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from profiles.tuning import gc_paused

from .actions import Kind, Overlap, ScheduleError, Table, flat_actions, format_grid, stage_ranks, validate_table
from .collectives import Link
from .costs import DPComm, HeldOnce, Links, StageCost, TiedSync
from .sweep import Invalid, RankLog, Run, StageTimes, stage_times, sweep
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
    #: tied parameters' gradient all-reduces among pipeline ranks, with their time each (seconds)
    tied: tuple[tuple[TiedSync, float], ...] = ()
    #: rank -> the bytes its stages' costs count more than once (``CostModel.held_once``)
    held_once: dict[int, HeldOnce] = field(default_factory=dict)
    #: static bytes every training rank holds once besides its stages' (``CostModel.per_rank_bytes``)
    per_rank_bytes: int = 0

    def dp_comm(self) -> DPComm:
        if self.comm is not None:
            return self.comm
        links = self.dp_links or self.links
        slowest = Link(max(links.latency_s, links.inter_latency_s), min(links.bandwidth_Bps, links.inter_bandwidth_Bps))
        return DPComm(dp=self.dp, link=slowest)

    def grad_bytes(self, owner: dict[int, int]) -> dict[int, int]:
        """Weight bytes per rank (what the data-parallel gathers move)."""
        return self._per_rank(owner, lambda c: c.param_bytes, lambda h: h.weights)

    def reduce_bytes(self, owner: dict[int, int]) -> dict[int, int]:
        """Gradient bytes per rank as the data-parallel reductions move them."""
        return self._per_rank(owner, lambda c: c.reduced_bytes, lambda h: h.reduced)

    def _per_rank(self, owner: dict[int, int], value, held) -> dict[int, int]:
        out: dict[int, int] = {}
        for s, r in owner.items():
            out[r] = out.get(r, 0) + value(self.costs[s])
        for r, once in self.held_once.items():
            if r in out:
                out[r] -= held(once)
        return out


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
    # The step allocates a few objects per action and none of them form cycles: pausing the
    # cyclic garbage collector meanwhile saves the repeated generation scans it would run.
    with gc_paused(collect=False):
        return _simulate(inp, detail)


def _simulate(inp: SimInput, detail: bool = True) -> Timeline:
    table, costs = inp.table, inp.costs
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
    start = {} if forward_only else _head_s(inp, comm, owner, table)
    try:
        run = sweep(table, stage_times(costs, inp.links, owner), S, M, start)
        if not run.blocked:
            run.flow.check_complete(has_backward)
    except Invalid:
        validate_table(table, forward_only=forward_only)
        raise ScheduleError("the table is invalid\n" + format_grid(table)) from None
    if run.blocked:
        validate_table(table, forward_only=forward_only)  # an invalid table reads better than a deadlock
        raise ScheduleError(_deadlock_message(table, run.blocked, owner))
    return _timeline(inp, forward_only, owner, run, pairs, detail)


def _timeline(
    inp: SimInput, forward_only: bool, owner: dict[int, int], run: Run, pairs: bool, detail: bool = True
) -> Timeline:
    """The Timeline of a finished sweep: per-rank figures always; events, sends, memory curves and
    the critical path with ``detail``."""
    table, costs, logs = inp.table, inp.costs, run.logs
    busy = {r: log.busy_s() for r, log in logs.items()}
    collectives = _collectives(inp, owner, logs, forward_only)
    ends = {r: log.free for r, log in logs.items()}
    for c in collectives:
        ends[c.rank] = max(ends[c.rank], c.end_s)
    step = max(ends.values())
    act = [0] * len(costs) if forward_only else [c.activation_bytes for c in costs]
    keep = [0] * len(costs) if forward_only else [c.keep_bytes for c in costs]
    stats, memory = [], {}
    for r, log in logs.items():
        mine = [s for s, o in owner.items() if o == r]
        static = sum(costs[s].param_bytes if forward_only else costs[s].static_bytes for s in mine)
        static += (0 if forward_only else inp.per_rank_bytes) - inp.held_once.get(r, HeldOnce()).static
        peak, peak_at, curve = _memory(table[r], log, static, act, keep, forward_only=forward_only, curve=detail)
        if detail:
            memory[r] = curve
        stats.append(RankStats(r, busy[r], max(0.0, 1.0 - busy[r] / step) if step > 0 else 0.0, peak, peak_at))
    if not detail:
        return Timeline(step, tuple(stats), (), (), memory, ())
    events = _events(table, logs, costs, pairs)
    sends = _sends(table, logs, owner, run.times, costs, pairs)
    path = _critical_path(table, owner, run)
    return Timeline(step, tuple(stats), tuple(events), tuple(sends), memory, path, collectives=tuple(collectives))


def _collectives(
    inp: SimInput, owner: dict[int, int], logs: dict[int, RankLog], forward_only: bool
) -> list[Collective]:
    """Each rank's communication track: fsdp's gather before its first action (its start), then
    after its last action (or send) the data-parallel reduction and the optimizer step. The step
    ends when the last rank's track does."""
    if forward_only:
        return []
    comm = inp.dp_comm()
    grads, reduced = inp.grad_bytes(owner), inp.reduce_bytes(owner)
    out = []
    for r, log in logs.items():
        g = grads.get(r, 0)
        if log.start:
            out.append(Collective(r, "UNSHARD", 0.0, log.start, g))
        t = log.free
        for sync, seconds in inp.tied:  # tied embeddings: their copies' gradients summed first,
            if r in sync.ranks:  # once every holder has finished its backwards
                t = max(t, max(logs[q].free for q in sync.ranks if q in logs))
                out.append(Collective(r, "TIED_REDUCE", t, t + seconds, sync.bytes))
                t += seconds
        kind = comm.mode.spec.trace_name
        moved = reduced.get(r, 0) if comm.mode.spec.tail_reduces else g  # the track's bytes: what its collective moves
        if comm.overlap and g:
            start, t_end = _overlapped_reduction(inp, r, log, comm, t)
            out.append(Collective(r, kind, start, t_end, moved))
            reduce, t = 0.0, t_end
        else:
            reduce = comm.tail_s(g, reduced.get(r, 0))
            if reduce:
                out.append(Collective(r, kind, t, t + reduce, moved))
        opt_s = inp.optimizer_s + sum(inp.costs[s].optimizer_s for s, o in owner.items() if o == r)
        if opt_s:
            out.append(Collective(r, "OPTIMIZER", t + reduce, t + reduce + opt_s, 0))
    return out


def _head_s(inp: SimInput, comm: DPComm, owner: dict[int, int], table: Table) -> dict[int, float]:
    """When each rank may start: after fsdp's gather of its weights (of its first stage's first
    unit only when fsdp prefetches, ``DPComm.overlap``)."""
    grads = inp.grad_bytes(owner)
    if not (comm.overlap and comm.mode.spec.shards_params):
        return {r: comm.head_s(g) for r, g in grads.items()}
    out = {}
    for r in grads:
        first = next(iter(flat_actions(table[r])), None)
        out[r] = comm.head_s(inp.costs[first[0]].lead_param_bytes) if first is not None else 0.0
    return out


def _overlapped_reduction(inp: SimInput, r: int, log: RankLog, comm: DPComm, after: float) -> tuple[float, float]:
    """(start, end) of rank ``r``'s overlapped gradient reduction: each of its stages' gradients
    are reduced on the communication track from the start of that stage's last backward (B or
    W; buckets leave as the backward makes them), never ending before that backward does, the
    stages in the order their last backwards start; the track ends no earlier than ``after``
    (the rank's last action and its tied-gradient sums). Prefetching fsdp's track first gathers
    the rest of the rank's weights from its start (and, resharded, gathers each stage's again
    beside its backward)."""
    last: dict[int, tuple[float, float]] = {}
    for a, b, e in zip(inp.table[r], log.starts, log.ends):
        if a.__class__ is Overlap:  # a forward and a full backward: the backward's stage
            a = a[1]
        if a[1] in (_B, _W):
            last[a[0]] = (b, e)
    t, first = 0.0, None
    if comm.mode.spec.shards_params:  # the forward's gathers, after the first unit's
        lead = sum(inp.costs[s].lead_param_bytes for s in last)
        t = log.start + comm.head_s(max(0, sum(inp.costs[s].param_bytes for s in last) - lead))
    for stage, (b, e) in sorted(last.items(), key=lambda kv: kv[1]):
        first = b if first is None else first
        g = inp.costs[stage].param_bytes
        t = max(t, b) + comm.tail_s(g, inp.costs[stage].reduced_bytes) + (comm.head_s(g) if comm.regather else 0.0)
        t = max(t, e)
    return (first if first is not None else after), max(t, after)


def _events(table: Table, logs: dict[int, RankLog], costs: list[StageCost], pairs: bool) -> list[Event]:
    """One event per action, two per Overlap pair, rank by rank in table order."""
    new, kstr = tuple.__new__, _KSTR
    events: list[Event] = []
    for r, log in logs.items():
        spans = zip(table[r], log.starts, log.ends)
        if pairs:
            for a, b, e in spans:
                if a.__class__ is Overlap:
                    events += _pair_events(r, a, b, e, costs)
                else:
                    events.append(new(Event, (r, a[0], kstr[a[1]], a[2], b, e)))
        else:
            events += [new(Event, (r, s, kstr[k], m, b, e)) for (s, k, m), b, e in spans]
    return events


def _pair_events(r: int, a: Overlap, b: float, e: float, costs: list[StageCost]) -> tuple[Event, Event]:
    """A pair's span as its forward then its backward, split in proportion to their own times."""
    (fs, _, fm), (bs, _, bm) = a
    f, g = costs[fs].forward_s, costs[bs].backward_s
    mid = b + f if costs[bs].overlap_f_b_s is None else b + (e - b) * (f / (f + g) if f + g > 0 else 0.0)
    return Event(r, fs, "F", fm, b, mid), Event(r, bs, "B", bm, mid, e)


def _sends(
    table: Table,
    logs: dict[int, RankLog],
    owner: dict[int, int],
    times: StageTimes,
    costs: list[StageCost],
    pairs: bool,
) -> list[Transfer]:
    """Every output that crosses ranks, from the end of the action that made it to its arrival,
    rank by rank in table order (a pair: its forward's output, then its backward's gradient)."""
    last = len(costs) - 1
    # per action kind and stage: where its output goes, as what, how long it takes and its bytes
    stays = (None, "", 0.0, 0)
    out = [
        (owner[s + 1], "F", times.send_output[s], c.output_bytes) if s < last and owner[s + 1] != owner[s] else stays
        for s, c in enumerate(costs)
    ]
    back = [
        (owner[s - 1], "B", times.send_grad[s], c.input_bytes) if s > 0 and owner[s - 1] != owner[s] else stays
        for s, c in enumerate(costs)
    ]
    route = {_F: out, _B: back, _I: back, _W: [stays] * len(costs)}
    new = tuple.__new__
    sends: list[Transfer] = []
    for r, log in logs.items():
        spans = zip(table[r], log.ends)
        if pairs:
            spans = ((x, e) for a, e in spans for x in (a if a.__class__ is Overlap else (a,)))
        sends += [
            new(Transfer, (r, d, s, what, m, e, e + x, nbytes))
            for (s, k, m), e in spans
            for d, what, x, nbytes in (route[k][s],)
            if d is not None
        ]
    return sends


def _memory(
    acts: list, log: RankLog, static: int, act: list[int], keep: list[int], *, forward_only: bool, curve: bool
) -> tuple[int, float, list[tuple[float, int]]]:
    """One rank's memory: static bytes, plus activations from each F's start until its backward
    frees them. (peak, when it is first reached, the curve: (time, bytes) at each change, or []
    without ``curve``.) A rank's actions are in time order, so its points are too (no sort)."""
    level = peak = static
    peak_at = 0.0
    pts = [(0.0, static)] if curve else []
    pa = pts.append if curve else _drop
    for a, b, e in zip(acts, log.starts, log.ends):
        try:
            s, k, m = a
        except ValueError:  # an Overlap pair: its forward's activations in, then its backward's out
            fs, s = a[0][0], a[1][0]
            level += act[fs]
            pa((b, level))
            if level > peak:
                peak, peak_at = level, b
            level -= act[s]
            pa((e, level))
            continue
        if k is _F:
            if not forward_only:
                level += act[s]
                pa((b, level))
                if level > peak:
                    peak, peak_at = level, b
            continue
        if k is _W:
            level -= keep[s]
        else:
            level -= act[s] if k is _B else act[s] - keep[s]
        pa((e, level))
    return peak, peak_at, pts


def _drop(_point) -> None:
    """The memory curve's append when no curve is kept."""


def _critical_path(table: Table, owner: dict[int, int], run: Run) -> tuple[str, ...]:
    """Walk back from the last finisher along the recorded binding dependency: O(path length)."""
    logs, flow, times = run.logs, run.flow, run.times
    cands = [(log.ends[-1], -r) for r, log in logs.items() if log.ends]
    if not cands:
        return ()
    _, neg = max(cands)
    r, j = -neg, len(logs[-neg].ends) - 1
    last = len(times.forward) - 1

    def producer(a) -> tuple[int, int, str, int, float]:  # (rank, position, "F"|"B", microbatch, arrival)
        s, k, m = a
        if k is _F:
            src, q = owner[s - 1], flow.forward_position(s - 1, m)
            return src, q, "F", m, logs[src].ends[q] + times.send_output[s - 1]
        src, q = owner[s + 1], flow.backward_position(s + 1, m)
        return src, q, "B", m, logs[src].ends[q] + times.send_grad[s + 1]

    path = []
    while True:
        a = table[r][j]
        path.append(str(a))
        if logs[r].waited(j, table[r], times):
            if a.__class__ is Overlap:  # the input that arrived last
                ins = [producer(x) for x in a if (x[0] > 0 if x[1] is _F else x[0] < last)]
                src, q, what, m, _ = max(ins, key=lambda x: x[4])
            else:
                src, q, what, m, _ = producer(a)
            if src != r:
                path.append(f"send {what}{m} {src}->{r}")
            r, j = src, q
        elif j > 0 and logs[r].starts[j] > 0.0:
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
