"""Versioned JSON files: atomic writes and validated, one-line-error loads.

Every pipeplan file carries ``"schema": "pipeplan.<kind>/<major>"``. This module is
the one place that reads and writes such files; the types of each floor
(Profile here, Timeline in simulator, Plan in planner, RunReport in executor) build
on it. It lives in ``profiles`` because that is the bottom floor every other
package may import.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["UserError", "ContractError", "Fields", "write_json", "read_json", "read_yaml", "schema_id", "sha256_of"]


class UserError(ValueError):
    """The input is wrong or the problem has no answer: the CLI prints one line and exits 2."""


class ContractError(UserError):
    """A file or value breaks its contract. The message is one line naming file and field."""


def schema_id(kind: str, major: int) -> str:
    return f"pipeplan.{kind}/{major}"


def sha256_of(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON atomically: a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=1, sort_keys=False, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: str | os.PathLike, kind: str, major: int | tuple[int, ...]) -> Fields:
    """Read a pipeplan file of ``kind`` and major version ``major`` (or any of several, newest
    first); return its top-level fields."""
    path, text = _text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ContractError(f"{path}: not valid JSON (truncated or corrupt?) at line {e.lineno}: {e.msg}") from None
    return _top_level(data, path, kind, major, "a JSON object")


def read_yaml(path: str | os.PathLike, kind: str, major: int) -> Fields:
    """Read a file written by hand in YAML with the fields of the JSON file of ``kind``; its
    ``schema`` may be left out (when given, it is checked as in JSON)."""
    import yaml

    path, text = _text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ContractError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if isinstance(data, dict):
        data.setdefault("schema", schema_id(kind, major))
    return _top_level(data, path, kind, major, "a YAML mapping")


def _text(path: str | os.PathLike) -> tuple[Path, str]:
    path = Path(path)
    if not path.is_file():
        raise ContractError(f"{path}: no such file")
    try:
        return path, path.read_text()
    except UnicodeDecodeError:
        raise ContractError(f"{path}: not a text file") from None


def _top_level(data: Any, path: Path, kind: str, major: int | tuple[int, ...], what: str) -> Fields:
    """The parsed file's top level, once it is an object of the right kind and major version."""
    if not isinstance(data, dict):
        raise ContractError(f"{path}: expected {what} at the top level")
    majors = major if isinstance(major, tuple) else (major,)
    want = schema_id(kind, majors[0])
    got = data.get("schema")
    if got not in {schema_id(kind, m) for m in majors}:
        if isinstance(got, str) and got.startswith(f"pipeplan.{kind}/"):
            raise ContractError(f"{path}: field schema: version {got!r} is not supported (want {want!r})")
        raise ContractError(f"{path}: field schema: {got!r} is not a {kind} file (want {want!r})")
    return Fields(data, str(path))


class Fields:
    """Typed reads from a JSON object with errors that name the file and the field path."""

    def __init__(self, data: dict, where: str, prefix: str = ""):
        if not isinstance(data, dict):
            raise ContractError(f"{where}: field {prefix or '<top>'}: expected an object")
        self.data = data
        self.where = where
        self.prefix = prefix

    def _path(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.prefix}[{key}]"
        return f"{self.prefix}.{key}" if self.prefix else key

    def fail(self, key: str | int, msg: str) -> ContractError:
        return ContractError(f"{self.where}: field {self._path(key)}: {msg}")

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def raw(self, key: str | int, default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise self.fail(key, "missing")
            return default
        return self.data[key]

    def num(self, key: str | int, *, min: float | None = 0.0, default: Any = ...) -> float:
        v = self.raw(key, default)
        if v is default and default is not ...:
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.fail(key, f"expected a number, got {v!r}")
        if min is not None and v < min:
            raise self.fail(key, f"must be >= {min}, got {v!r}")
        return float(v)

    def int(self, key: str, *, min: int | None = 0, default: Any = ...) -> int:
        v = self.raw(key, default)
        if v is default and default is not ...:
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(key, f"expected an integer, got {v!r}")
        if min is not None and v < min:
            raise self.fail(key, f"must be >= {min}, got {v!r}")
        return v

    def str(self, key: str, *, choices: Iterable[str] | None = None, default: Any = ...) -> str:
        v = self.raw(key, default)
        if v is default and default is not ...:
            return v
        if not isinstance(v, str):
            raise self.fail(key, f"expected a string, got {v!r}")
        if choices is not None:
            choices = list(choices)
            if v not in choices:
                raise self.fail(key, f"{v!r} is not one of {', '.join(choices)}")
        return v

    def bool(self, key: str, *, default: Any = ...) -> bool:
        v = self.raw(key, default)
        if not isinstance(v, bool):
            raise self.fail(key, f"expected true or false, got {v!r}")
        return v

    def obj(self, key: str, *, default: Any = ...) -> Fields:
        v = self.raw(key, default)
        if v is default and default is not ...:
            return Fields({}, self.where, self._path(key))
        return Fields(v, self.where, self._path(key)) if isinstance(v, dict) else _bad(self, key, "an object", v)

    def list(self, key: str, *, default: Any = ..., nonempty: bool = False) -> list:
        v = self.raw(key, default)
        if not isinstance(v, list):
            _bad(self, key, "a list", v)
        if nonempty and not v:
            raise self.fail(key, "must not be empty")
        return v

    def objs(self, key: str, *, nonempty: bool = False) -> list[Fields]:
        items = self.list(key, nonempty=nonempty)
        out = []
        for i, item in enumerate(items):
            sub = f"{self._path(key)}[{i}]"
            if not isinstance(item, dict):
                raise ContractError(f"{self.where}: field {sub}: expected an object")
            out.append(Fields(item, self.where, sub))
        return out

    def nums(self, key: str, *, min: float | None = 0.0) -> list[float]:
        items = self.list(key)
        wrapped = Fields(dict(enumerate(items)), self.where, self._path(key))
        return [wrapped.num(i, min=min) for i in range(len(items))]


def _bad(f: Fields, key: str, what: str, v: Any):
    raise f.fail(key, f"expected {what}, got {type(v).__name__}")
