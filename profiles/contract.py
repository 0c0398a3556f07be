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
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, field, fields
from pathlib import Path
from typing import Any

__all__ = [
    "UserError",
    "ContractError",
    "Fields",
    "MAX_FILE_BYTES",
    "write_json",
    "write_files",
    "json_text",
    "read_json",
    "read_yaml",
    "read_text",
    "parse_json",
    "check_outputs",
    "schema_id",
    "sha256_of",
    "reads",
    "read_declared",
]

#: The largest file any pipeplan command reads: 64 MiB. The biggest real ones are plans with
#: tables near MAX_TABLE_ACTIONS (about 30 MiB) and traces of many-rank runs (a few MiB); the
#: cap keeps a wrong path (a disk image, a log) from being read whole, and keeps the parsed
#: objects of any file it admits within a few GiB.
MAX_FILE_BYTES = 64 * 2**20
#: The largest integer any field holds (2**53, exact as a float): byte counts of the largest
#: models fit many times over; larger numbers are typing slips, and bounded loops need a bound.
MAX_INT = 2**53


class UserError(ValueError):
    """The input is wrong or the problem has no answer: the CLI prints one line and exits 2."""


class ContractError(UserError):
    """A file or value breaks its contract. The message is one line naming file and field."""


def schema_id(kind: str, major: int) -> str:
    return f"pipeplan.{kind}/{major}"


def sha256_of(path: str | os.PathLike) -> str:
    return hashlib.sha256(_read_bytes(Path(path))).hexdigest()


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (setting it to read
    it would race with other threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(path: Path, new: int) -> int:
    """An existing file keeps its mode; a new one gets ``new`` (0666 less the umask)."""
    try:
        st = os.stat(path)
    except OSError:
        return new
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else new


def _unwritable(path: Path, e: OSError) -> UserError:
    return UserError(f"{path}: cannot write: {e.strerror or e}: choose another output path")


def write_files(contents: Mapping[str | os.PathLike, str | bytes]) -> list[Path]:
    """Write several files as a group, each atomically: every one goes to a temporary file
    (a name unique to this process) in its target's folder first, and only when all are
    written are they renamed over their targets, so a failure leaves none of them changed
    and no temporary file behind. New files get the mode the user's umask gives (as
    ``open`` would), not the 0600 of a temporary file; a replaced file keeps its mode."""
    mode = 0o666 & ~_umask()
    made: list[tuple[str, Path]] = []
    try:
        for target, data in contents.items():
            path = Path(target)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            except OSError as e:
                raise _unwritable(path, e) from None
            made.append((tmp, path))
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data.encode() if isinstance(data, str) else data)
                os.chmod(tmp, _mode_for(path, mode))
            except OSError as e:
                raise _unwritable(path, e) from None
        for tmp, path in made:
            try:
                os.replace(tmp, path)
            except OSError as e:
                raise _unwritable(path, e) from None
    finally:
        for tmp, _ in made:
            Path(tmp).unlink(missing_ok=True)
    return [path for _, path in made]


def json_text(obj: Any) -> str:
    """The text pipeplan writes for a JSON object (NaN and infinity refused)."""
    return json.dumps(obj, indent=1, sort_keys=False, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON atomically: a temporary file in the same folder, then rename."""
    return write_files({path: json_text(obj)})[0]


def check_outputs(inputs: Iterable[str | os.PathLike | None], outputs: Iterable[tuple[str, Any]]) -> None:
    """Refuse, before any work, outputs that would overwrite an input or cannot be written.

    ``outputs`` are ``(flag, path)`` pairs (a None path is skipped). An output may not be one
    of the command's inputs, nor be given twice, nor be a folder; its folder (or the nearest
    one that exists, which the write would create the rest under) must be writable."""
    ins = {_identity(Path(p)): Path(p) for p in inputs if p is not None and Path(p).exists()}
    seen: dict[Any, str] = {}
    for flag, value in outputs:
        if value is None:
            continue
        path = Path(value)
        key = _identity(path)
        if key in ins:
            raise UserError(f"{flag} {path} is an input of this command: write the output to another path")
        if key in seen:
            raise UserError(f"{flag} {path} is also the output of {seen[key]}: give each output its own path")
        seen[key] = flag
        if path.is_dir():
            raise UserError(f"{flag} {path} is a folder: give a file path")
        if path.exists() and not path.is_file():
            raise UserError(f"{flag} {path} is not a regular file: give a file path")
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise UserError(f"{flag} {path}: cannot write in {folder}: choose another output path")


def _identity(path: Path) -> Any:
    """Same file, same identity: the (device, inode) of an existing path, else its resolved name."""
    try:
        st = os.stat(path)
        return (st.st_dev, st.st_ino)
    except OSError:
        return str(path.resolve())


def read_json(path: str | os.PathLike, kind: str, major: int | tuple[int, ...]) -> Fields:
    """Read a pipeplan file of ``kind`` and major version ``major`` (or any of several, newest
    first); return its top-level fields."""
    path, text = read_text(path)
    return _top_level(parse_json(text, path), path, kind, major, "a JSON object")


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(text: str, where: str | os.PathLike) -> Any:
    """``json.loads`` with one-line errors naming ``where``: bad syntax, NaN/Infinity, integers
    too long to convert and nesting too deep for Python's parser are all refused."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise ContractError(f"{where}: not valid JSON (truncated or corrupt?) at line {e.lineno}: {e.msg}") from None
    except RecursionError:
        raise ContractError(f"{where}: not a pipeplan file: JSON nested too deeply") from None
    except MemoryError:
        raise ContractError(f"{where}: not a pipeplan file: too many values to hold in memory") from None
    except ValueError as e:  # NaN/Infinity, or an integer of thousands of digits
        raise ContractError(f"{where}: not valid JSON: {str(e).splitlines()[0]}") from None


def read_yaml(path: str | os.PathLike, kind: str, major: int) -> Fields:
    """Read a file written by hand in YAML with the fields of the JSON file of ``kind``; its
    ``schema`` may be left out (when given, it is checked as in JSON)."""
    import yaml

    path, text = read_text(path)
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise ContractError(f"{path}: not valid YAML: nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ContractError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if isinstance(data, dict):
        data.setdefault("schema", schema_id(kind, major))
    return _top_level(data, path, kind, major, "a YAML mapping")


def _read_bytes(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES, or a one-line ContractError:
    a FIFO, a device (``/dev/zero``) or a folder is refused before it is opened."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ContractError(f"{path}: no such file") from None
    except OSError as e:
        raise ContractError(f"{path}: cannot read: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ContractError(f"{path}: is a folder: give a file")
    if not stat.S_ISREG(st.st_mode):
        raise ContractError(f"{path}: not a regular file (a device, pipe or socket): give a file")
    if st.st_size > MAX_FILE_BYTES:
        raise ContractError(f"{path}: {st.st_size / 2**20:.0f} MiB is more than a pipeplan file ever holds")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ContractError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ContractError(f"{path}: more than {MAX_FILE_BYTES // 2**20} MiB: more than a pipeplan file ever holds")
    return data


def read_text(path: str | os.PathLike) -> tuple[Path, str]:
    """A regular UTF-8 text file of at most MAX_FILE_BYTES (see ``_read_bytes``)."""
    path = Path(path)
    try:
        return path, _read_bytes(path).decode()
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
            raise self.fail(key, f"expected a number, got {_short(v)}")
        if min is not None and v < min:
            raise self.fail(key, f"must be >= {min}, got {_short(v)}")
        return float(v)

    def int(self, key: str, *, min: int | None = 0, max: int = MAX_INT, default: Any = ...) -> int:
        v = self.raw(key, default)
        if v is default and default is not ...:
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(key, f"expected an integer, got {_short(v)}")
        if min is not None and v < min:
            raise self.fail(key, f"must be >= {min}, got {_short(v)}")
        if v > max:
            raise self.fail(key, f"must be <= {max}, got {_short(v)}")
        return v

    def str(self, key: str, *, choices: Iterable[str] | None = None, default: Any = ...) -> str:
        v = self.raw(key, default)
        if v is default and default is not ...:
            return v
        if not isinstance(v, str):
            raise self.fail(key, f"expected a string, got {_short(v)}")
        if choices is not None:
            choices = list(choices)
            if v not in choices:
                raise self.fail(key, f"{v!r} is not one of {', '.join(choices)}")
        return v

    def bool(self, key: str, *, default: Any = ...) -> bool:
        v = self.raw(key, default)
        if not isinstance(v, bool):
            raise self.fail(key, f"expected true or false, got {_short(v)}")
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


#: how a file's object gives one field of a contract: ``read(fields, earlier)``, where ``earlier``
#: holds the values of the fields declared before it (a stage table is checked against the stages)
Reader = Callable[[Fields, Mapping[str, Any]], Any]


def reads(read: Reader, default: Any = MISSING, **kw: Any) -> Any:
    """A contract dataclass's field declared with its reader (see :func:`read_declared`)."""
    return field(default=default, metadata={"read": read}, **kw)


def read_declared(cls: type, f: Fields) -> dict[str, Any]:
    """Each field of ``cls`` declared with :func:`reads`, by its reader, in declaration order (the
    order its errors come in); fields without one keep their defaults."""
    values: dict[str, Any] = {}
    for x in fields(cls):
        if "read" in x.metadata:
            values[x.name] = x.metadata["read"](f, values)
    return values


def _short(v: Any) -> str:
    """``repr(v)`` cut to fit in a one-line error (a value may be a huge number or list)."""
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 10**30:
        return f"an integer of {len(str(abs(v)))} digits"
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(f: Fields, key: str, what: str, v: Any):
    raise f.fail(key, f"expected {what}, got {type(v).__name__}")
