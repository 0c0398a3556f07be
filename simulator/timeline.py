"""The Timeline contract (simulated or measured), its picture as Spans, and its Chrome/Perfetto trace export."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from profiles.contract import Fields, read_json, schema_id, write_json

__all__ = [
    "Event",
    "Transfer",
    "Collective",
    "RankStats",
    "Timeline",
    "load_timeline",
    "Span",
    "TRACKS",
    "spans",
    "read_span",
    "trace_events",
    "write_trace",
]

KIND, MAJOR = "timeline", 1
EVENT_KINDS = ("F", "B", "I", "W")
#: collectives on a rank's communication track, by torch's runtime names where it has them
COLLECTIVE_KINDS = ("UNSHARD", "REDUCE_GRAD", "ALL_REDUCE", "TIED_REDUCE", "OPTIMIZER")


class Event(NamedTuple):
    """One action as it ran (or would run). A NamedTuple: tens of thousands are built per step."""

    rank: int
    stage: int
    kind: str  # F | B | I | W
    microbatch: int
    start_s: float
    end_s: float


class Transfer(NamedTuple):
    """One point-to-point send, from the end of the producing action to its arrival."""

    src: int
    dst: int
    stage: int  # the stage whose output (F) or input gradient (B/I) travels
    kind: str  # "F" activation forward, "B" gradient backward
    microbatch: int
    start_s: float
    end_s: float
    bytes: int


class Collective(NamedTuple):
    """One data-parallel collective (or the optimizer step after it) on a rank's communication track."""

    rank: int
    #: UNSHARD (a gather of weights: fsdp's before the first forward, zero2's at the step's end) |
    #: REDUCE_GRAD (a sharded mode's reduce-scatter) | ALL_REDUCE (ddp) | TIED_REDUCE (tied copies'
    #: gradient sum across pipeline ranks) | OPTIMIZER
    kind: str
    start_s: float
    end_s: float
    bytes: int


@dataclass(frozen=True)
class RankStats:
    rank: int
    busy_s: float
    bubble_fraction: float
    peak_bytes: int
    peak_at_s: float = 0.0


@dataclass(frozen=True)
class Timeline:
    step_s: float
    ranks: tuple[RankStats, ...]
    events: tuple[Event, ...]
    transfers: tuple[Transfer, ...] = ()
    memory: dict[int, list[tuple[float, int]]] = field(default_factory=dict)  # rank -> [(t, bytes)]
    critical_path: tuple[str, ...] = ()  # e.g. ("0F0", "send 0->1", "1F0", ...)
    source: str = "simulated"  # "simulated" | "measured"
    collectives: tuple[Collective, ...] = ()  # the communication track

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": schema_id(KIND, MAJOR),
            "source": self.source,
            "step_s": self.step_s,
            "ranks": [asdict(r) for r in self.ranks],
            "events": [e._asdict() for e in self.events],
            "transfers": [t._asdict() for t in self.transfers],
            "memory": {str(r): [[t, b] for t, b in pts] for r, pts in self.memory.items()},
            "critical_path": list(self.critical_path),
            "collectives": [c._asdict() for c in self.collectives],
        }

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @staticmethod
    def from_fields(f: Fields) -> Timeline:
        ranks = tuple(
            RankStats(
                r.int("rank"),
                r.num("busy_s"),
                r.num("bubble_fraction"),
                r.int("peak_bytes"),
                r.num("peak_at_s", default=0.0),
            )
            for r in f.objs("ranks")
        )
        events = []
        for e in f.objs("events"):
            start, end = read_span(e)
            events.append(
                Event(
                    e.int("rank"), e.int("stage"), e.str("kind", choices=EVENT_KINDS), e.int("microbatch"), start, end
                )
            )
        transfers = (
            tuple(
                Transfer(
                    t.int("src"),
                    t.int("dst"),
                    t.int("stage"),
                    t.str("kind"),
                    t.int("microbatch"),
                    t.num("start_s", min=None),
                    t.num("end_s", min=None),
                    t.int("bytes"),
                )
                for t in f.objs("transfers")
            )
            if f.has("transfers")
            else ()
        )
        collectives = tuple(
            Collective(
                c.int("rank"),
                c.str("kind", choices=COLLECTIVE_KINDS),
                c.num("start_s", min=None),
                c.num("end_s", min=None),
                c.int("bytes"),
            )
            for c in (f.objs("collectives") if f.has("collectives") else [])
        )
        memory = _memory(f)
        return Timeline(
            f.num("step_s"),
            ranks,
            tuple(events),
            transfers,
            memory,
            tuple(str(x) for x in f.list("critical_path", default=[])),
            f.str("source", default="simulated"),
            collectives,
        )

    def with_source(self, source: str) -> Timeline:
        return replace(self, source=source)


def _memory(f: Fields) -> dict[int, list[tuple[float, int]]]:
    """``memory``: rank -> [[time_s, bytes], ...], each pair checked (one-line error naming it)."""
    raw = f.obj("memory").data if f.has("memory") else {}
    out: dict[int, list[tuple[float, int]]] = {}
    for r, pts in raw.items():
        if not (isinstance(r, str) and r.isdigit() and len(r) <= 9) or not isinstance(pts, list):
            raise f.fail("memory", f"expected rank -> [[time_s, bytes], ...], got key {str(r)[:20]!r}")
        curve = []
        for i, pt in enumerate(pts):
            ok = isinstance(pt, list) and len(pt) == 2
            pair = Fields(dict(enumerate(pt)), f.where, f"memory.{r}[{i}]") if ok else None
            if pair is None:
                raise f.fail("memory", f"rank {r} point {i}: expected [time_s, bytes]")
            curve.append((pair.num(0, min=None), int(pair.num(1))))
        out[int(r)] = curve
    return out


def load_timeline(path: str | Path) -> Timeline:
    return Timeline.from_fields(read_json(path, KIND, MAJOR))


#: the lanes of a rank's picture: its actions, its sends, its communication track (the trace's tids)
TRACKS = ("compute", "send", "communication")


class Span(NamedTuple):
    """One bar of a timeline's picture, on one rank's lane: an action, a send or a collective.

    The one place that names them: the trace export and the dashboard's tables both read these."""

    rank: int  # the rank that runs it (a send's source)
    track: str  # one of TRACKS
    name: str  # "2F0", "send F0 0->1", "REDUCE_GRAD"
    kind: str  # an action's F | B | I | W; a send's F | B; a collective's kind
    stage: int  # -1 for a collective
    microbatch: int  # -1 for a collective
    start_s: float
    end_s: float
    bytes: int  # 0 for an action


def spans(timeline: Timeline) -> list[Span]:
    """Every action, then every send, then every collective of ``timeline``, as Spans."""
    out = [
        Span(
            e.rank, "compute", f"{e.stage}{e.kind}{e.microbatch}", e.kind, e.stage, e.microbatch, e.start_s, e.end_s, 0
        )
        for e in timeline.events
    ]
    out += [
        Span(
            t.src,
            "send",
            f"send {t.kind}{t.microbatch} {t.src}->{t.dst}",
            t.kind,
            t.stage,
            t.microbatch,
            t.start_s,
            t.end_s,
            t.bytes,
        )
        for t in timeline.transfers
    ]
    out += [
        Span(c.rank, "communication", c.kind, c.kind, -1, -1, c.start_s, c.end_s, c.bytes) for c in timeline.collectives
    ]
    return out


def read_span(f: Fields) -> tuple[float, float]:
    """A record's ``start_s`` and ``end_s`` (any sign: measured clocks may start before zero),
    refused with a one-line error when it ends before it starts."""
    start, end = f.num("start_s", min=None), f.num("end_s", min=None)
    if end < start:
        raise f.fail("end_s", f"ends before it starts ({end} < {start})")
    return start, end


def trace_events(timeline: Timeline, label: str = "") -> list[dict[str, Any]]:
    """Chrome/Perfetto ``traceEvents``: pid = rank, tid 0 compute, tid 1 sends, tid 2 collectives;
    microseconds."""
    name = label or timeline.source
    out: list[dict[str, Any]] = []
    for r in sorted({s.rank for s in timeline.ranks} | {e.rank for e in timeline.events}):
        out.append({"ph": "M", "name": "process_name", "pid": r, "args": {"name": f"rank {r} ({name})"}})
        for tid, track in enumerate(TRACKS):
            out.append({"ph": "M", "name": "thread_name", "pid": r, "tid": tid, "args": {"name": track}})
    for sp in spans(timeline):
        if sp.track == "compute":
            cat, args = sp.kind, {"stage": sp.stage, "microbatch": sp.microbatch}
        elif sp.track == "send":
            cat, args = "comm", {"bytes": sp.bytes, "stage": sp.stage}
        else:
            cat, args = "collective", {"bytes": sp.bytes}
        out.append(
            {
                "ph": "X",
                "name": sp.name,
                "cat": cat,
                "pid": sp.rank,
                "tid": TRACKS.index(sp.track),
                "ts": sp.start_s * 1e6,
                "dur": max(0.0, sp.end_s - sp.start_s) * 1e6,
                "args": args,
            }
        )
    return out


def write_trace(timeline: Timeline, path: str | Path, label: str = "") -> Path:
    return write_json(path, {"traceEvents": trace_events(timeline, label), "displayTimeUnit": "ms"})
