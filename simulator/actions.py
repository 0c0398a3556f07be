"""Schedule tables as data: ``Action(stage, kind, microbatch)`` and ``{rank: [Action, ...]}``.

Text form ``2F0`` (stage 2, forward, microbatch 0) round-trips exactly. CSV holds one
row per rank in the compute-only format ``torch.distributed.pipelining`` loads for
custom schedules (``_PipelineScheduleRuntime._load_csv``).
"""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
from enum import Enum
from pathlib import Path
from typing import NamedTuple

from profiles.contract import UserError

__all__ = ["Kind", "Action", "Table", "ScheduleError", "parse_action", "table_to_text", "table_from_text",
           "write_csv", "read_csv", "validate_table", "stage_ranks", "table_shape", "format_grid"]


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


Table = dict[int, list[Action]]

_ACTION = re.compile(r"^\s*(\d+)([FBIW])(\d+)\s*$")


def parse_action(text: str) -> Action:
    m = _ACTION.match(text)
    if not m:
        raise ScheduleError(f"{text!r} is not an action: write stage, kind (F, B, I or W) and microbatch, e.g. 2F0")
    return Action(int(m.group(1)), Kind(m.group(2)), int(m.group(3)))


def table_to_text(table: Table) -> dict[str, list[str]]:
    return {str(r): [str(a) for a in table[r]] for r in sorted(table)}


def table_from_text(data: dict[str, list[str]]) -> Table:
    try:
        return {int(r): [parse_action(a) for a in acts] for r, acts in data.items()}
    except (TypeError, ValueError, AttributeError) as e:
        if isinstance(e, ScheduleError):
            raise
        raise ScheduleError(f"a table maps rank numbers to lists of actions like '0F0': {e}") from None


def write_csv(table: Table, path: str | os.PathLike) -> Path:
    """One row per rank (ranks 0..R-1), atomically written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for r in range(max(table) + 1 if table else 0):
        writer.writerow([str(a) for a in table.get(r, [])])
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)
    return path


def read_csv(path: str | os.PathLike) -> Table:
    """Read a compute-only CSV (torch's format); empty cells (idle steps) are skipped."""
    path = Path(path)
    if not path.is_file():
        raise ScheduleError(f"{path}: no such file")
    table: Table = {}
    with open(path, newline="") as f:
        for rank, row in enumerate(csv.reader(f)):
            acts = []
            for col, cell in enumerate(row):
                if cell.strip() in ("", "None"):
                    continue
                try:
                    acts.append(parse_action(cell))
                except ScheduleError as e:
                    raise ScheduleError(f"{path}: row {rank + 1}, column {col + 1}: {e}") from None
            table[rank] = acts
    if not table:
        raise ScheduleError(f"{path}: empty table")
    return table


def stage_ranks(table: Table) -> dict[int, int]:
    """The stage -> rank map implied by a table (the one source of truth for placement)."""
    owner: dict[int, int] = {}
    for rank in sorted(table):
        for a in table[rank]:
            if owner.setdefault(a.stage, rank) != rank:
                raise ScheduleError(
                    f"stage {a.stage} appears on rank {owner[a.stage]} and rank {rank}: a stage lives on one rank\n"
                    + format_grid(table, rank, table[rank].index(a)))
    return owner


def table_shape(table: Table) -> tuple[int, int]:
    """(number of stages, number of microbatches) found in a table."""
    stages = {a.stage for acts in table.values() for a in acts}
    mbs = {a.microbatch for acts in table.values() for a in acts}
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


def validate_table(table: Table, num_stages: int | None = None, num_microbatches: int | None = None,
                   forward_only: bool = False) -> tuple[int, int]:
    """Check a table; return (stages, microbatches). Raises ScheduleError with a picture.

    Rules: every stage runs each microbatch's F exactly once and its backward exactly
    once (B, or I then W); F before B/I, I before W on the stage; a stage lives on one
    rank; stages are numbered 0..S-1. A forward-only table (F actions only) is allowed
    when ``forward_only`` is set or when it has no backward action at all.
    """
    if not table or not any(table.values()):
        raise ScheduleError("the table is empty")
    owner = stage_ranks(table)
    s_found, m_found = table_shape(table)
    S = num_stages if num_stages is not None else s_found
    M = num_microbatches if num_microbatches is not None else m_found
    has_backward = any(a.kind is not Kind.F for acts in table.values() for a in acts)
    forward_only = forward_only or not has_backward
    seen: dict[tuple[int, Kind, int], tuple[int, int]] = {}
    for rank in sorted(table):
        for step, a in enumerate(table[rank]):
            if a.stage >= S or a.microbatch >= M:
                raise ScheduleError(f"rank {rank} step {step}: {a} is outside {S} stages x {M} microbatches\n{format_grid(table, rank, step)}")
            key = (a.stage, a.kind, a.microbatch)
            if key in seen:
                raise ScheduleError(f"rank {rank} step {step}: {a} runs twice\n{format_grid(table, rank, step)}")
            if forward_only and a.kind is not Kind.F:
                raise ScheduleError(f"rank {rank} step {step}: {a} in a forward-only table\n{format_grid(table, rank, step)}")
            if a.kind in (Kind.B, Kind.I) and (a.stage, Kind.F, a.microbatch) not in seen:
                raise ScheduleError(f"rank {rank} step {step}: {a} runs before its forward {a.stage}F{a.microbatch}\n{format_grid(table, rank, step)}")
            if a.kind is Kind.W and (a.stage, Kind.I, a.microbatch) not in seen:
                raise ScheduleError(f"rank {rank} step {step}: {a} runs before its input gradient {a.stage}I{a.microbatch}\n{format_grid(table, rank, step)}")
            if a.kind is Kind.B and (a.stage, Kind.I, a.microbatch) in seen or \
                    a.kind is Kind.I and (a.stage, Kind.B, a.microbatch) in seen:
                raise ScheduleError(f"rank {rank} step {step}: {a} repeats a backward already done\n{format_grid(table, rank, step)}")
            seen[key] = (rank, step)
    def end_of(s: int) -> str:  # the grid, the arrow just past the last action of the rank holding s
        r = owner.get(s)
        return format_grid(table) if r is None else format_grid(table, r, len(table[r]))

    for s in range(S):
        where = f"on rank {owner[s]}" if s in owner else "(stage on no rank)"
        for m in range(M):
            if (s, Kind.F, m) not in seen:
                raise ScheduleError(f"forward {s}F{m} is missing {where}: every stage runs every microbatch\n"
                                    + end_of(s))
            if forward_only:
                continue
            if (s, Kind.B, m) not in seen and (s, Kind.I, m) not in seen:
                raise ScheduleError(f"backward of stage {s} microbatch {m} (B or I) is missing {where}\n" + end_of(s))
            if (s, Kind.I, m) in seen and (s, Kind.W, m) not in seen:
                raise ScheduleError(f"{s}W{m} is missing after {s}I{m} {where}\n" + end_of(s))
    return S, M
