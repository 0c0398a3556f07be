"""The topological sweep at the heart of the engine: when each action of a table starts and ends.

Each rank advances through its list while its next action's input is there; a rank that
must wait registers for the one output it waits for (``Waits``) and is woken when the rank
producing it gets there. When no rank can move, every rank has finished or the table
deadlocks (``Run.blocked``). Start of an action = max(its rank is free, its input arrived).

Layout, for speed: per (stage, microbatch) facts live in flat lists indexed by
``stage * M + microbatch`` (``Flow``), which the hot loop (``_advance``) reads and writes
directly and everything else reads through named methods; per rank only each action's
start and end are recorded (``RankLog``). A rank blocks about every second action in a
1F1B table, so ``_advance`` keeps a whole rank's run (F, B, I, W) in one frame, rather
than a call per action (only the rare Overlap pairs call ``_pair``), and binds the sweep's
lists with one unpacking (``_Bound``).
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from .actions import Kind, Overlap, Table
from .costs import Links, StageCost

__all__ = ["Invalid", "StageTimes", "stage_times", "Flow", "Waits", "RankLog", "Run", "sweep"]

_F, _B, _W = Kind.F, Kind.B, Kind.W


class Invalid(Exception):
    """Raised inside the sweep; the caller turns it into validate_table's picture."""


class StageTimes(NamedTuple):
    """Per-stage durations and transfer times, as flat lists indexed by stage."""

    forward: list[float]
    backward: list[float]  # B
    backward_input: list[float]  # I
    backward_weight: list[float]  # W
    overlap: list[float | None]  # a pair whose backward is this stage's; None: forward + backward
    send_output: list[float]  # stage s's output to stage s+1 (0 when they share a rank, and for the last)
    send_grad: list[float]  # stage s's input gradient to stage s-1 (0 when they share a rank, and for the first)
    sends_block: bool  # a send keeps its sender busy (``Links.overlap`` is False)


def stage_times(costs: list[StageCost], links: Links, owner: dict[int, int]) -> StageTimes:
    """The sweep's view of the costs, with each boundary's transfer priced on the ranks that hold it."""
    last = len(costs) - 1
    return StageTimes(
        [c.forward_s for c in costs],
        [c.backward_s for c in costs],
        [c.backward_input_s for c in costs],
        [c.backward_weight_s for c in costs],
        [c.overlap_f_b_s for c in costs],
        [links.transfer_s(owner[s], owner[s + 1], c.output_bytes) if s < last else 0.0 for s, c in enumerate(costs)],
        [links.transfer_s(owner[s], owner[s - 1], c.input_bytes) if s > 0 else 0.0 for s, c in enumerate(costs)],
        not links.overlap,
    )


class Flow:
    """What each (stage, microbatch) has produced so far, in flat lists indexed by ``stage * M + microbatch``.

    The sweep reads and writes the lists directly (it is the hot loop); everything else asks
    the methods."""

    __slots__ = ("M", "output_at", "grad_at", "w_due", "f_pos", "g_pos")

    def __init__(self, S: int, M: int):
        n = S * M
        self.M = M
        self.output_at: list[float | None] = [None] * n  # when F(s, m)'s output is usable by stage s+1
        self.grad_at: list[float | None] = [None] * n  # when B/I(s, m)'s input gradient is usable by stage s-1
        self.w_due = [False] * n  # I(s, m) has run and W(s, m) has not yet
        self.f_pos = [0] * n  # position of F(s, m) in its rank's list
        self.g_pos = [0] * n  # position of B/I(s, m) in its rank's list

    def forward_position(self, stage: int, microbatch: int) -> int:
        return self.f_pos[stage * self.M + microbatch]

    def backward_position(self, stage: int, microbatch: int) -> int:
        return self.g_pos[stage * self.M + microbatch]

    def check_complete(self, backward: bool) -> None:
        """Raise Invalid unless every forward ran and, with a backward, every backward and every I's W."""
        if None in self.output_at or (backward and (None in self.grad_at or True in self.w_due)):
            raise Invalid


class Waits:
    """Ranks blocked on an input, by the index (``stage * M + microbatch``) of the action that produces it."""

    __slots__ = ("on_output", "on_grad")

    def __init__(self):
        self.on_output: dict[int, int] = {}  # F(s, m) -> the rank waiting for its output (stage s+1's F)
        self.on_grad: dict[int, int] = {}  # B/I(s, m) -> the rank waiting for its input gradient (stage s-1's)


class RankLog:
    """One rank's progress through its list, and when each action it ran started and ended."""

    __slots__ = ("next", "start", "free", "starts", "ends")

    def __init__(self, start: float = 0.0):
        self.next = 0  # position of the next action to run
        self.start = start  # when the rank may begin (after fsdp's gather of its weights)
        self.free = start  # when the rank is done (including a last blocking send)
        self.starts: list[float] = []
        self.ends: list[float] = []

    def busy_s(self) -> float:
        return sum(self.ends) - sum(self.starts)

    def waited(self, j: int, acts: list, times: StageTimes) -> bool:
        """Whether action j started after its rank was free, that is, waited for its input.

        Derived, not recorded, so the hot loop stores one list less: the rank was free at the
        end of action j-1 plus, when sends block, that action's send, computed as the sweep did."""
        if j == 0:
            return self.starts[0] > self.start
        free = self.ends[j - 1]
        if times.sends_block:
            a = acts[j - 1]
            if a.__class__ is Overlap:
                free += times.send_output[a[0][0]] + times.send_grad[a[1][0]]
            elif a[1] is _F:
                free += times.send_output[a[0]]
            elif a[1] is not _W:
                free += times.send_grad[a[0]]
        return self.starts[j] > free


class _Bound(NamedTuple):
    """The sweep's lists and tables, flattened so that ``_advance`` binds them all with one
    unpacking: a rank is woken about every second action in a 1F1B table, so what each wake-up
    costs shows in the step time. Built once per sweep (``bind``); the order of the fields is
    the order ``_advance`` unpacks them in."""

    forward: list[float]
    backward: list[float]
    backward_input: list[float]
    backward_weight: list[float]
    send_output: list[float]
    send_grad: list[float]
    sends_block: bool
    output_at: list[float | None]
    grad_at: list[float | None]
    w_due: list[bool]
    f_pos: list[int]
    g_pos: list[int]
    M: int
    last: int  # the last stage
    on_output: dict[int, int]
    on_grad: dict[int, int]
    flow: Flow
    waits: Waits
    times: StageTimes

    @staticmethod
    def bind(times: StageTimes, flow: Flow, waits: Waits) -> _Bound:
        return _Bound(
            forward=times.forward,
            backward=times.backward,
            backward_input=times.backward_input,
            backward_weight=times.backward_weight,
            send_output=times.send_output,
            send_grad=times.send_grad,
            sends_block=times.sends_block,
            output_at=flow.output_at,
            grad_at=flow.grad_at,
            w_due=flow.w_due,
            f_pos=flow.f_pos,
            g_pos=flow.g_pos,
            M=flow.M,
            last=len(times.forward) - 1,
            on_output=waits.on_output,
            on_grad=waits.on_grad,
            flow=flow,
            waits=waits,
            times=times,
        )


class Run(NamedTuple):
    logs: dict[int, RankLog]  # by rank, in rank order
    flow: Flow
    times: StageTimes
    blocked: dict[int, int]  # rank -> step it is stuck at (empty: no deadlock)


def sweep(table: Table, times: StageTimes, S: int, M: int, start: dict[int, float] | None = None) -> Run:
    """Advance each rank as far as its inputs allow, and again when a rank it waits for produced
    them, until no rank can move: then every rank has finished, or the table deadlocks.
    ``start``: when each rank may begin (default 0)."""
    flow, waits = Flow(S, M), Waits()
    start = start or {}
    logs = {r: RankLog(start.get(r, 0.0)) for r in sorted(table)}
    bound = tuple(_Bound.bind(times, flow, waits))  # a plain tuple: unpacking one is the fast path
    queue, queued = deque(logs), set(logs)
    while queue:
        r = queue.popleft()
        queued.discard(r)
        for w in _advance(table[r], r, logs[r], bound):
            if w not in queued:
                queue.append(w)
                queued.add(w)
    blocked = {r: log.next for r, log in logs.items() if log.next < len(table[r])}
    return Run(logs, flow, times, blocked)


def _advance(acts: list, r: int, log: RankLog, bound: tuple) -> list[int]:
    """Run rank r's actions from where it stopped while their inputs are there; return the ranks
    this woke (those that waited for an output it produced). Raises Invalid on an action whose
    own earlier work is missing or that runs twice. ``bound``: the fields of a ``_Bound``."""
    # fmt: off
    (fdur, bdur, idur, wdur, fx, gx, busy_send, out_at, grad_at, w_due, f_pos, g_pos, M, last,
     on_output, on_grad, flow, waits, times) = bound  # _Bound's fields, in their order
    # fmt: on
    st, en = log.starts.append, log.ends.append
    woken: list[int] = []
    n, p, t = len(acts), log.next, log.free
    while p < n:
        a = acts[p]
        try:
            s, k, m = a
        except ValueError:  # an Overlap pair has two fields: rare, so no type test per action
            free = _pair(a, t, rank=r, position=p, log=log, woken=woken, bound=bound)
            if free is None:
                break
            t = free
            p += 1
            continue
        idx = s * M + m
        if k is _F:
            if out_at[idx] is not None:
                raise Invalid
            if s:
                ready = out_at[idx - M]
                if ready is None:
                    on_output[idx - M] = r
                    break
            else:
                ready = 0.0
            start = ready if ready > t else t
            t = end = start + fdur[s]
            out_at[idx] = end + fx[s]
            f_pos[idx] = p
            en(end)
            if busy_send:
                t += fx[s]
            if on_output:
                w = on_output.pop(idx, None)
                if w is not None:
                    woken.append(w)
        elif k is _W:
            if not w_due[idx]:
                raise Invalid
            w_due[idx] = False
            start, t = t, t + wdur[s]
            en(t)
        else:  # B or I
            if out_at[idx] is None or grad_at[idx] is not None:
                raise Invalid
            if s != last:
                ready = grad_at[idx + M]
                if ready is None:
                    on_grad[idx + M] = r
                    break
            else:
                ready = 0.0
            start = ready if ready > t else t
            if k is _B:
                t = end = start + bdur[s]
            else:
                t = end = start + idur[s]
                w_due[idx] = True
            grad_at[idx] = end + gx[s]
            g_pos[idx] = p
            en(end)
            if busy_send:
                t += gx[s]
            if on_grad:
                w = on_grad.pop(idx, None)
                if w is not None:
                    woken.append(w)
        st(start)
        p += 1
    log.next, log.free = p, t
    return woken


def _pair(
    a: Overlap, t: float, *, rank: int, position: int, log: RankLog, woken: list[int], bound: tuple
) -> float | None:
    """Run the Overlap ``a`` at ``position`` of ``rank``, free at t, as ``_advance`` runs a single
    action: record its start and end in ``log``, add the ranks it wakes to ``woken``, and return
    when the rank is free again; or None when an input has not arrived (the rank then waits for it)."""
    b = _Bound._make(bound)
    flow, times = b.flow, b.times
    (fs, _, fm), (bs, _, bm) = a
    M = flow.M
    fidx, bidx = fs * M + fm, bs * M + bm
    out_at, grad_at = flow.output_at, flow.grad_at
    if out_at[fidx] is not None or out_at[bidx] is None or grad_at[bidx] is not None:
        raise Invalid
    ready = 0.0
    if fs:
        ready = out_at[fidx - M]
        if ready is None:
            b.on_output[fidx - M] = rank
            return None
    if bs != b.last:
        g = grad_at[bidx + M]
        if g is None:
            b.on_grad[bidx + M] = rank
            return None
        if g > ready:
            ready = g
    start = ready if ready > t else t
    d = times.overlap[bs]
    end = start + (times.forward[fs] + times.backward[bs] if d is None else d)
    out_at[fidx] = end + times.send_output[fs]
    grad_at[bidx] = end + times.send_grad[bs]
    flow.f_pos[fidx] = flow.g_pos[bidx] = position
    log.ends.append(end)
    free = end + (times.send_output[fs] + times.send_grad[bs]) if b.sends_block else end
    for w in (b.on_output.pop(fidx, None), b.on_grad.pop(bidx, None)):
        if w is not None:
            woken.append(w)
    log.starts.append(start)
    return free
