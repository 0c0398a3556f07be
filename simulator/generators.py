"""The schedule generators: pure functions ``(pp, microbatches, virtual) -> Table``.

Each reproduces, action for action, the compute order that the torch schedule of the
same name executes (torch 2.13, ``torch.distributed.pipelining.schedules``); the
agreement is checked by ``tests/test_sim_torch_agreement.py``. They are written from
the published descriptions and from reading torch's order, not copied from it, and
import no torch. Placement: looped schedules put stage ``s`` on rank ``s % pp``; the
V schedules (ZBVZeroBubble, DualPipeV) put stages ``r`` and ``2pp-1-r`` on rank ``r``.

Arguments are checked by ``schedules.ScheduleSpec.check`` before a generator runs.
"""

from __future__ import annotations

from .actions import Action, Kind, Overlap, Table

__all__ = [
    "gpipe",
    "one_f_one_b",
    "interleaved_1f1b",
    "looped_bfs",
    "interleaved_zero_bubble",
    "zbv_zero_bubble",
    "dualpipe_v",
    "rounds",
]

F, B, I, W = Kind.F, Kind.B, Kind.I, Kind.W


def gpipe(pp: int, m: int, v: int) -> Table:
    """Fill-drain: every forward, then every backward, microbatches in order (ScheduleGPipe)."""
    return {r: [Action(r, F, i) for i in range(m)] + [Action(r, B, i) for i in range(m)] for r in range(pp)}


def one_f_one_b(pp: int, m: int, v: int) -> Table:
    """1F1B (PipeDream-flush): rank r runs min(m, pp - r) forwards, then B/F pairs, then the rest of B.

    This is the order ``Schedule1F1B._step_microbatches`` executes (see the agreement test
    for how its ``_get_pipeline_order`` differs on the last rank).
    """
    table: Table = {}
    for r in range(pp):
        warm = min(m, pp - r)
        acts = [Action(r, F, i) for i in range(warm)]
        for b in range(m):
            acts.append(Action(r, B, b))
            if warm + b < m:
                acts.append(Action(r, F, warm + b))
        table[r] = acts
    return table


def rounds(pp: int, m: int) -> tuple[int, int]:
    """(rounds, microbatches per round) of the interleaved schedules: max(1, m // pp) rounds."""
    n = max(1, m // pp)
    return n, m // n


def _depth_first(pp: int, m: int, v: int, r: int, warmup_per_hop: int, split: bool) -> list[Action]:
    """The depth-first interleaved order of rank r (Interleaved1F1B, and ZB-H1 when ``split``).

    Work is 'slots' k = 0 .. v*m-1 per direction; forward slot k runs chunk (k // per) % v,
    backward slot j runs chunk v-1 - (j // per) % v, per = microbatches per round; each
    stage hands out its microbatches in order. Warmup: (v-1)*per forwards for the last
    rank, plus ``warmup_per_hop`` per rank away from it; then one forward and one
    backward per slot; then the remaining backwards. With ``split`` the backward is I,
    and rank r delays each W by r backward slots (ZB-H1), flushing the rest at the end.
    """
    _, per = rounds(pp, m)
    total = v * m
    warm = min((v - 1) * per + warmup_per_hop * (pp - 1 - r), total)
    next_mb = [0] * v  # per local chunk: next forward microbatch
    next_bw = [0] * v
    done_bw: list[Action] = []  # backward (I) actions in order, for their W

    def fwd(k: int) -> Action:
        c = (k // per) % v
        a = Action(c * pp + r, F, next_mb[c])
        next_mb[c] += 1
        return a

    def bwd(j: int) -> Action:
        c = v - 1 - (j // per) % v
        a = Action(c * pp + r, I if split else B, next_bw[c])
        next_bw[c] += 1
        done_bw.append(a)
        return a

    acts = [fwd(k) for k in range(warm)]
    w_next = 0
    for j in range(total):
        if warm + j < total:
            acts.append(fwd(warm + j))
        acts.append(bwd(j))
        if split and j >= r:
            i = done_bw[w_next]
            acts.append(Action(i.stage, W, i.microbatch))
            w_next += 1
    if split:
        acts.extend(Action(i.stage, W, i.microbatch) for i in done_bw[w_next:])
    return acts


def interleaved_1f1b(pp: int, m: int, v: int) -> Table:
    """Interleaved 1F1B (Narayanan et al. 2021), torch's flexible-rounds variant: warmup 2 per hop."""
    return {r: _depth_first(pp, m, v, r, 2, split=False) for r in range(pp)}


def interleaved_zero_bubble(pp: int, m: int, v: int) -> Table:
    """ZB-H1 on looped stages (Qi et al. 2023, torch ScheduleInterleavedZeroBubble): warmup 1 per hop, I/W split."""
    return {r: _depth_first(pp, m, v, r, 1, split=True) for r in range(pp)}


def looped_bfs(pp: int, m: int, v: int) -> Table:
    """Breadth-first (Lamy-Poirier 2022): all microbatches through each local stage in turn, backward in reverse."""
    table: Table = {}
    for r in range(pp):
        stages = [c * pp + r for c in range(v)]
        acts = [Action(s, F, i) for s in stages for i in range(m)]
        acts += [Action(s, B, i) for s in reversed(stages) for i in reversed(range(m))]
        table[r] = acts
    return table


class _Counters:
    """Per-(stage, kind) microbatch counters for the V schedules, which name actions by count."""

    def __init__(self) -> None:
        self.n: dict[tuple[int, Kind], int] = {}

    def take(self, stage: int, kind: Kind) -> Action:
        i = self.n.get((stage, kind), 0)
        self.n[(stage, kind)] = i + 1
        return Action(stage, kind, i)


def zbv_zero_bubble(pp: int, m: int, v: int) -> Table:
    """ZB-V (Qi et al. 2023, section 6; torch ScheduleZBVZeroBubble). Rank r holds stages r and 2pp-1-r.

    The order is built for max(m, 2pp-1) microbatches, then the actions of microbatches
    >= m are dropped, as torch does.
    """
    n = max(2 * pp - 1, m)
    table: Table = {}
    for r in range(pp):
        c0, c1 = r, 2 * pp - 1 - r
        k = _Counters()
        acts = [k.take(c0, F) for _ in range(2 * (pp - r) - 1)]
        for _ in range(r):
            acts += [k.take(c1, F), k.take(c0, F)]
        for _ in range(pp - r):
            acts += [k.take(c1, F), k.take(c1, I), k.take(c1, W)]
        while k.n.get((c1, F), 0) < k.n.get((c0, F), 0) or k.n.get((c0, F), 0) < n:
            if k.n.get((c0, F), 0) < n:
                acts.append(k.take(c0, F))
            acts += [k.take(c0, I), k.take(c0, W), k.take(c1, F), k.take(c1, I), k.take(c1, W)]
        for _ in range(r):
            acts += [k.take(c0, I), k.take(c1, I)]
        for _ in range(pp - r):
            acts += [k.take(c0, I), k.take(c0, W)]
        while k.n.get((c1, W), 0) < k.n.get((c1, I), 0):
            acts.append(k.take(c1, W))
        while k.n.get((c0, W), 0) < k.n.get((c0, I), 0):
            acts.append(k.take(c0, W))
        table[r] = [a for a in acts if a.microbatch < m]
    return table


def dualpipe_v(pp: int, m: int, v: int) -> Table:
    """DualPipeV (DeepSeek-V3 report's DualPipe folded onto a V; torch ScheduleDualPipeV).

    Rank r holds stages r and 2pp-1-r. In the steady phase a forward of one local stage
    and a full backward of the other run as one ``Overlap`` pair (torch's OVERLAP_F_B),
    except the last rank's first, which torch issues apart. A backward is B, except in
    the cool-down where the second half switches to I, with each W run later from a queue.
    """
    table: Table = {}
    for r in range(pp):
        c0, c1 = r, 2 * pp - 1 - r
        k = _Counters()
        pending: list[Action] = []  # I actions whose W is still to run
        acts: list[Action] = []

        def backward(stage: int, split: bool) -> None:
            # B and I share one count per stage; W follows its I from the queue
            a = k.take(stage, I)
            if split:
                acts.append(a)
                pending.append(a)
            else:
                acts.append(Action(stage, B, a.microbatch))

        def pair(forward: int, backward: int) -> None:
            f = k.take(forward, F)
            acts.append(Overlap(f, Action(backward, B, k.take(backward, I).microbatch)))

        def weight() -> None:
            if pending:
                i = pending.pop(0)
                acts.append(Action(i.stage, W, i.microbatch))

        acts += [k.take(c0, F) for _ in range(2 * (pp - r - 1))]
        for _ in range(r + 1):
            acts += [k.take(c0, F), k.take(c1, F)]
        for _ in range(pp - r - 1):
            backward(c1, True)
            weight()
            acts.append(k.take(c1, F))
        for i in range(m - 2 * pp + r + 1):
            if i == 0 and r == pp - 1:  # torch keeps this first one apart (a smaller bubble)
                acts.append(k.take(c0, F))
                backward(c1, False)
            else:
                pair(c0, c1)
            pair(c1, c0)
        for _ in range(pp - r - 1):
            backward(c1, False)
            pair(c1, c0)
        split = False
        half = (r + 1) // 2
        for i in range(r + 1):
            if i == half and r % 2 == 1:
                split = True
            backward(c1, split)
            if i == half and r % 2 == 0:
                split = True
            backward(c0, split)
        for _ in range(pp - r - 1):
            weight()
            backward(c0, split)
        for _ in range(r + 1):
            weight()
        table[r] = acts
    return table
