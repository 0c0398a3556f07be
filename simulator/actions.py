"""Schedule tables as data: ``Action(stage, kind, microbatch)`` and ``{rank: [Action, ...]}``.

Text form ``2F0`` (stage 2, forward, microbatch 0) round-trips exactly. CSV holds one
row per rank in the compute-only format ``torch.distributed.pipelining`` loads for
custom schedules (``_PipelineScheduleRuntime._load_csv``).

A rank's list may also hold an :class:`Overlap`: a forward and a full backward of two
stages on that rank, issued as one action (torch's ``OVERLAP_F_B``, which DualPipeV
uses; text ``(0F3;7B2)OVERLAP_F_B``, as torch writes it). Code that only needs the
compute actions in order reads ``flat_actions(acts)``, which lists a pair as its
forward then its backward.
"""

from __future__ import annotations

import csv
import io
import os
import re
from enum import Enum
from pathlib import Path
from typing import NamedTuple

from profiles.contract import UserError, read_text, write_files

__all__ = [
    "Kind",
    "Action",
    "Overlap",
    "Table",
    "ScheduleError",
    "parse_action",
    "flat_actions",
    "forward_table",
    "table_to_text",
    "table_from_text",
    "write_csv",
    "csv_text",
    "read_csv",
    "validate_table",
    "stage_ranks",
    "table_shape",
    "format_grid",
    "MAX_TABLE_ACTIONS",
    "check_table_size",
]

#: The most actions a schedule table may hold, all ranks together: 64 stages x 16,384
#: microbatches with F, I and W is 3.1 million. Tables are built, read and checked up to
#: this size; past it a command refuses before building anything (a typing slip like
#: ``--microbatches 10000000000`` would otherwise fill memory).
MAX_TABLE_ACTIONS = 4_000_000


def check_table_size(stages: int, microbatches: int, kinds: int = 3, what: str = "the table") -> None:
    """Refuse a table of ``stages x microbatches x kinds`` actions above MAX_TABLE_ACTIONS."""
    if stages * microbatches * kinds > MAX_TABLE_ACTIONS:
        raise ScheduleError(
            f"{what} would hold {stages} stages x {microbatches} microbatches x {kinds} kinds of actions, "
            f"more than the {MAX_TABLE_ACTIONS:,} a table may hold: lower the microbatches or stages"
        )


class ScheduleError(UserError):
    """A table is malformed, invalid or deadlocks; the message carries the rank x step grid."""


class Kind(str, Enum):
    F = "F"  # forward
    B = "B"  # full backward (inputs and weights)
    I = "I"  # backward for inputs only  # noqa: E741
    W = "W"  # backward for weights only


class Action(NamedTuple):
    stage: int
    kind: Kind
    microbatch: int

    def __str__(self) -> str:
        return f"{self.stage}{self.kind.value}{self.microbatch}"


class Overlap(NamedTuple):
    """A forward and a full backward of two stages on one rank, run as one action.

    torch's ``OVERLAP_F_B`` (DualPipeV's F&B: DeepSeek-V3 report, section 3.2.1): the pair
    starts once both inputs have arrived, and both outputs are sent when it ends (as
    torch's ``_add_send_recv`` lowers it). Its duration is the backward stage's
    ``StageCost.overlap_f_b_s`` (by default forward + backward, run back to back).
    """

    forward: Action  # kind F
    backward: Action  # kind B, of another stage or microbatch

    def __str__(self) -> str:
        return f"({self.forward};{self.backward})OVERLAP_F_B"


Table = dict[int, list["Action | Overlap"]]

_ACTION = re.compile(r"^\s*(\d+)([FBIW])(\d+)\s*$")
_OVERLAP = re.compile(r"^\s*\((.*);(.*)\)OVERLAP_F_B\s*$")


def parse_action(text: str) -> Action | Overlap:
    """``2F0`` -> Action; ``(0F3;7B2)OVERLAP_F_B`` -> Overlap (torch's text for a pair)."""
    pair = _OVERLAP.match(text)
    if pair:
        f, b = parse_action(pair.group(1)), parse_action(pair.group(2))
        if not (isinstance(f, Action) and f.kind is Kind.F and isinstance(b, Action) and b.kind is Kind.B):
            raise ScheduleError(
                f"{text!r}: an OVERLAP_F_B pair is a forward then a full backward, e.g. (0F3;7B2)OVERLAP_F_B"
            )
        return Overlap(f, b)
    m = _ACTION.match(text)
    if not m:
        raise ScheduleError(
            f"{text!r} is not an action: write stage, kind (F, B, I or W) and microbatch, e.g. 2F0, "
            "or a pair (0F3;7B2)OVERLAP_F_B"
        )
    stage, micro = _index(m.group(1), "stage", text), _index(m.group(3), "microbatch", text)
    return Action(stage, Kind(m.group(2)), micro)


def _index(digits: str, what: str, text: str) -> int:
    """A stage or microbatch number of an action; no table holds one beyond MAX_TABLE_ACTIONS."""
    if len(digits) > 9 or int(digits) >= MAX_TABLE_ACTIONS:
        raise ScheduleError(
            f"{text.strip()[:40]!r}: {what} {digits[:12]}{'...' if len(digits) > 12 else ''} is beyond the "
            f"{MAX_TABLE_ACTIONS:,} actions a table may hold"
        )
    return int(digits)


def flat_actions(acts: list[Action | Overlap]) -> list[Action]:
    """A rank's compute actions in order, each Overlap as its forward then its backward.

    A list without pairs is returned as it is (not copied): read it, do not change it."""
    if Overlap not in set(map(type, acts)):  # C-speed check: most tables hold no pair
        return acts  # type: ignore[return-value]
    out: list[Action] = []
    for a in acts:
        if a.__class__ is Overlap:
            out += a
        else:
            out.append(a)
    return out


def forward_table(table: Table) -> Table:
    """The table's forwards only, in order (a serving step runs no backward); pairs give their forward."""
    return {r: [a for a in flat_actions(acts) if a.kind is Kind.F] for r, acts in table.items()}


def table_to_text(table: Table) -> dict[str, list[str]]:
    return {str(r): [str(a) for a in table[r]] for r in sorted(table)}


def table_from_text(data: dict[str, list[str]]) -> Table:
    if not isinstance(data, dict):
        raise ScheduleError("a table maps rank numbers to lists of actions like '0F0'")
    table: Table = {}
    count = 0
    for r, acts in data.items():
        if not isinstance(r, str) or not r.isdigit() or len(r) > 9 or not isinstance(acts, list):
            raise ScheduleError(f"a table maps rank numbers to lists of actions like '0F0', not {str(r)[:20]!r}")
        count += len(acts)
        if count > MAX_TABLE_ACTIONS:
            raise ScheduleError(f"the table holds more than the {MAX_TABLE_ACTIONS:,} actions a table may hold")
        if not all(isinstance(a, str) for a in acts):
            raise ScheduleError(f"rank {r}: actions are text like '0F0'")
        table[int(r)] = [parse_action(a) for a in acts]
    return table


def csv_text(table: Table) -> str:
    """The CSV text of a table: one row per rank (ranks 0..R-1)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for r in range(max(table) + 1 if table else 0):
        writer.writerow([str(a) for a in table.get(r, [])])
    return buf.getvalue()


def write_csv(table: Table, path: str | os.PathLike) -> Path:
    """One row per rank (ranks 0..R-1), atomically written."""
    return write_files({path: csv_text(table)})[0]


def read_csv(path: str | os.PathLike) -> Table:
    """Read a compute-only CSV (torch's format); empty cells (idle steps) are skipped."""
    path, text = read_text(path)
    table: Table = {}
    count = 0
    try:
        for rank, row in enumerate(csv.reader(io.StringIO(text, newline=""))):
            acts = []
            for col, cell in enumerate(row):
                if cell.strip() in ("", "None"):
                    continue
                try:
                    acts.append(parse_action(cell))
                except ScheduleError as e:
                    raise ScheduleError(f"{path}: row {rank + 1}, column {col + 1}: {e}") from None
            count += len(acts)
            if count > MAX_TABLE_ACTIONS:
                raise ScheduleError(f"{path}: more than the {MAX_TABLE_ACTIONS:,} actions a table may hold")
            table[rank] = acts
    except csv.Error as e:
        raise ScheduleError(f"{path}: not a CSV table: {e}") from None
    if not table:
        raise ScheduleError(f"{path}: empty table")
    return table


def stage_ranks(table: Table) -> dict[int, int]:
    """The stage -> rank map implied by a table (the one source of truth for placement)."""
    owner: dict[int, int] = {}
    for rank in sorted(table):
        for a in flat_actions(table[rank]):
            if owner.setdefault(a.stage, rank) != rank:
                step = next(i for i, e in enumerate(table[rank]) if e == a or e.__class__ is Overlap and a in e)
                raise ScheduleError(
                    f"stage {a.stage} appears on rank {owner[a.stage]} and rank {rank}: a stage lives on one rank\n"
                    + format_grid(table, rank, step)
                )
    return owner


def table_shape(table: Table) -> tuple[int, int]:
    """(number of stages, number of microbatches) found in a table."""
    flat = [a for acts in table.values() for a in flat_actions(acts)]
    stages = {a.stage for a in flat}
    mbs = {a.microbatch for a in flat}
    return (max(stages) + 1 if stages else 0, max(mbs) + 1 if mbs else 0)


def format_grid(table: Table, rank: int | None = None, step: int | None = None, width: int = 40) -> str:
    """The rank x step grid, with an arrow under ``(rank, step)`` when given."""
    ranks = sorted(table)
    lo = 0 if step is None else max(0, step - width // 2)
    hi = max((len(table[r]) for r in ranks), default=0)
    hi = min(hi, lo + width)
    cell = max([len(str(a)) for r in ranks for a in table[r][lo:hi]] + [4]) + 1
    out = ["step   " + "".join(f"{i:<{cell}}" for i in range(lo, hi))]
    for r in ranks:
        row = "".join(f"{str(a):<{cell}}" for a in table[r][lo:hi])
        out.append(f"rank {r:<2}" + row)
        if r == rank and step is not None:
            out.append(" " * 7 + " " * (cell * (step - lo)) + "^ here")
    return "\n".join(out)


def _check_action(
    table: Table,
    a: Action,
    rank: int,
    step: int,
    *,
    S: int,
    M: int,
    seen: dict[tuple[int, Kind, int], tuple[int, int]],
    forward_only: bool,
) -> None:
    """One action against what its rank and the ranks before it have run (validate_table's rules)."""
    if a.stage >= S or a.microbatch >= M:
        raise ScheduleError(
            f"rank {rank} step {step}: {a} is outside {S} stages x {M} microbatches\n{format_grid(table, rank, step)}"
        )
    if (a.stage, a.kind, a.microbatch) in seen:
        raise ScheduleError(f"rank {rank} step {step}: {a} runs twice\n{format_grid(table, rank, step)}")
    if forward_only and a.kind is not Kind.F:
        raise ScheduleError(f"rank {rank} step {step}: {a} in a forward-only table\n{format_grid(table, rank, step)}")
    if a.kind in (Kind.B, Kind.I) and (a.stage, Kind.F, a.microbatch) not in seen:
        raise ScheduleError(
            f"rank {rank} step {step}: {a} runs before its forward {a.stage}F{a.microbatch}\n"
            f"{format_grid(table, rank, step)}"
        )
    if a.kind is Kind.W and (a.stage, Kind.I, a.microbatch) not in seen:
        raise ScheduleError(
            f"rank {rank} step {step}: {a} runs before its input gradient {a.stage}I{a.microbatch}\n"
            f"{format_grid(table, rank, step)}"
        )
    if (
        a.kind is Kind.B
        and (a.stage, Kind.I, a.microbatch) in seen
        or a.kind is Kind.I
        and (a.stage, Kind.B, a.microbatch) in seen
    ):
        raise ScheduleError(
            f"rank {rank} step {step}: {a} repeats a backward already done\n{format_grid(table, rank, step)}"
        )


def validate_table(
    table: Table, num_stages: int | None = None, num_microbatches: int | None = None, forward_only: bool = False
) -> tuple[int, int]:
    """Check a table; return (stages, microbatches). Raises ScheduleError with a picture.

    Rules: every stage runs each microbatch's F exactly once and its backward exactly
    once (B, or I then W); F before B/I, I before W on the stage; a stage lives on one
    rank; stages are numbered 0..S-1; an Overlap's backward is not of its own forward. A
    forward-only table (F actions only) is allowed when ``forward_only`` is set or when it
    has no backward action at all.
    """
    if not table or not any(table.values()):
        raise ScheduleError("the table is empty")
    owner = stage_ranks(table)
    s_found, m_found = table_shape(table)
    S = num_stages if num_stages is not None else s_found
    M = num_microbatches if num_microbatches is not None else m_found
    has_backward = any(a.kind is not Kind.F for acts in table.values() for a in flat_actions(acts))
    forward_only = forward_only or not has_backward
    seen: dict[tuple[int, Kind, int], tuple[int, int]] = {}
    for rank in sorted(table):
        for step, entry in enumerate(table[rank]):
            if entry.__class__ is Overlap:
                b = entry.backward
                if (b.stage, Kind.F, b.microbatch) not in seen:  # before the pair: not its own forward
                    raise ScheduleError(
                        f"rank {rank} step {step}: {entry} runs {b} before its forward "
                        f"{b.stage}F{b.microbatch} (a pair cannot hold the backward of its own "
                        f"forward)\n{format_grid(table, rank, step)}"
                    )
            for a in entry if entry.__class__ is Overlap else (entry,):
                _check_action(table, a, rank, step, S=S, M=M, seen=seen, forward_only=forward_only)
                seen[(a.stage, a.kind, a.microbatch)] = (rank, step)

    def end_of(s: int) -> str:  # the grid, the arrow just past the last action of the rank holding s
        r = owner.get(s)
        return format_grid(table) if r is None else format_grid(table, r, len(table[r]))

    for s in range(S):
        where = f"on rank {owner[s]}" if s in owner else "(stage on no rank)"
        for m in range(M):
            if (s, Kind.F, m) not in seen:
                raise ScheduleError(
                    f"forward {s}F{m} is missing {where}: every stage runs every microbatch\n" + end_of(s)
                )
            if forward_only:
                continue
            if (s, Kind.B, m) not in seen and (s, Kind.I, m) not in seen:
                raise ScheduleError(f"backward of stage {s} microbatch {m} (B or I) is missing {where}\n" + end_of(s))
            if (s, Kind.I, m) in seen and (s, Kind.W, m) not in seen:
                raise ScheduleError(f"{s}W{m} is missing after {s}I{m} {where}\n" + end_of(s))
    return S, M
