"""The files the dashboard reads: found under its root folders, read again only when they change,
never followed outside those folders, and never allowed to end a view in a traceback.

A file's version is its ``stamp`` (modification time in ns and size): every cache that reads a file
takes the stamp as part of its key, so an edited file is read again and an unchanged one never is.
Finding files looks at names and ``stat`` only, plus the first few KiB of a new or changed file for
its ``schema`` (a 100 MB trace is not read every few seconds). A path written *inside* a file (a
plan's profile, a report's plan) is followed only when it resolves into one of the roots.
"""

from __future__ import annotations

import os
import re
import stat as statmod
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import streamlit as st

from profiles.contract import UserError

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_FILES",
    "Stamp",
    "stamp",
    "resolve_roots",
    "within",
    "check_file",
    "find_files",
    "guarded",
]

MAX_FILE_BYTES = 256 * 2**20  #: larger files are listed as too large, never loaded
MAX_FILES = 20_000  #: files looked at per root and rerun (a root with more is cut short, with a note)
_HEAD = 4096  #: bytes read from a new or changed file to learn its kind
_SUFFIXES = (".json", ".yaml", ".yml")
_KINDS = {
    "pipeplan.profile/1": "profile",
    "pipeplan.plan/1": "plan",
    "pipeplan.plan/2": "plan",
    "pipeplan.runreport/1": "runreport",
    "pipeplan.cluster/1": "cluster",
}
_SCHEMA = re.compile(rb'"schema"\s*:\s*"(pipeplan\.[a-z]+/[0-9]+)"')
_CLUSTER_YAML = re.compile(rb"pipeplan\.cluster|_bandwidth_Bps|devices_per_node")

Stamp = tuple[int, int]  #: (mtime_ns, size): part of every file-reading cache key
T = TypeVar("T")


def stamp(path: str | Path) -> Stamp:
    """What identifies a file's version for the caches ((0, 0) when it is gone)."""
    try:
        s = os.stat(path)
    except (OSError, ValueError):
        return (0, 0)
    return (s.st_mtime_ns, s.st_size)


def resolve_roots(roots: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The roots as absolute, symlink-free paths (what :func:`within` compares against)."""
    return tuple(str(Path(r).resolve()) for r in roots)


def within(path: str | Path, roots: tuple[str, ...]) -> bool:
    """Whether ``path``, symlinks resolved, lies inside one of the (resolved) ``roots``."""
    try:
        p = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):
        return False
    return any(p.is_relative_to(r) for r in roots)


def check_file(path: str | Path, roots: tuple[str, ...], what: str = "file") -> Path:
    """``path`` when it is a regular file inside ``roots`` and at most ``MAX_FILE_BYTES``; else a
    UserError that says which rule it breaks."""
    p = Path(path)
    if not within(p, roots):
        raise UserError(
            f"{what} {p} is outside the dashboard's folders ({', '.join(roots)}): keep it under one of them "
            f"or start the dashboard with --root on its folder"
        )
    try:
        s = os.stat(p)
    except OSError as e:
        raise UserError(f"{what} {p}: cannot be read ({e.strerror or e})") from None
    if not statmod.S_ISREG(s.st_mode):
        raise UserError(f"{what} {p}: not a regular file")
    if s.st_size > MAX_FILE_BYTES:
        raise UserError(
            f"{what} {p}: {s.st_size / 2**20:.0f} MiB is more than the dashboard reads "
            f"({MAX_FILE_BYTES // 2**20} MiB): open it with the pipeplan commands instead"
        )
    return p


def guarded(what: str, fn: Callable[..., T], *args) -> tuple[T | None, str | None]:
    """``(fn(*args), None)``, or ``(None, one line)`` when it fails. A UserError is the loader's own
    message; anything else a crafted file provoked (deep nesting, huge numbers, wrong types the
    loader let through) is named with its type, so a view shows an error panel, not a traceback."""
    try:
        return fn(*args), None
    except UserError as e:
        return None, _one_line(str(e))
    except (RecursionError, MemoryError) as e:
        return None, f"{what}: too deeply nested or too large to read ({type(e).__name__})"
    except Exception as e:  # noqa: BLE001 - a crafted file must not end the view; the line names the fault
        return None, f"{what}: cannot be read ({type(e).__name__}: {_one_line(str(e))})"


def _one_line(text: str, most: int = 400) -> str:
    line = (text.strip().splitlines() or [""])[0]
    return line if len(line) <= most else line[: most - 1] + "…"


@st.cache_data(show_spinner=False, max_entries=20_000)
def _kind(path: str, version: Stamp) -> str | None:
    """The pipeplan kind of a file from its first ``_HEAD`` bytes (None: not a pipeplan file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD)
    except OSError:
        return None
    if path.endswith(".json"):
        m = _SCHEMA.search(head)
        return _KINDS.get(m.group(1).decode()) if m else None
    return "cluster" if _CLUSTER_YAML.search(head) else None


@st.cache_data(show_spinner=False, ttl=3)
def find_files(roots: tuple[str, ...]) -> dict[str, list[str]]:
    """Pipeplan files under ``roots`` by kind (``profile``, ``plan``, ``runreport``, ``cluster``), plus
    ``notes``: why some were left out. Regular files only, inside the roots once symlinks are
    resolved; a file's head is read when it is new or changed, never its whole text."""
    out: dict[str, list[str]] = {k: [] for k in (*_KINDS.values(), "notes")}
    resolved = resolve_roots(roots)
    for root in roots:
        if not Path(root).is_dir():
            continue
        seen = 0
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
            for name in sorted(names):
                if not name.endswith(_SUFFIXES) or name.startswith("."):
                    continue
                seen += 1
                if seen > MAX_FILES:
                    out["notes"].append(f"{root}: more than {MAX_FILES} files; the rest are not listed")
                    dirs[:] = []
                    break
                path = os.path.join(folder, name)
                try:
                    s = os.stat(path)
                except OSError:
                    continue
                if not statmod.S_ISREG(s.st_mode) or not within(path, resolved):
                    continue
                if s.st_size > MAX_FILE_BYTES:
                    out["notes"].append(f"{path}: larger than {MAX_FILE_BYTES // 2**20} MiB, not read")
                    continue
                kind = _kind(path, (s.st_mtime_ns, s.st_size))
                if kind:
                    out[kind].append(path)
            if seen > MAX_FILES:
                break
    return out
