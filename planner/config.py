"""Typed configs that generate their readers.

A config is a frozen dataclass whose fields are declared with :func:`setting`: each field's doc,
default, JSON kind and validity rule (range, choices, non-empty) in one place, and, where a
command line or the dashboard mirrors it, its flag and its label. From those declarations come:

- :func:`read_config`: the JSON reader (unknown keys refused, each value of its kind, one-line
  errors naming the field);
- :func:`config_problems`: the validity rules, for a value however it was made (a file, flags,
  Python); the config's ``check`` raises the first;
- :func:`add_flags` and :func:`flag_values`: the ``argparse`` flags of the mirrored fields, and
  their values back as the fields' values;
- :func:`mirrored`: the settings a front end shows (labels, docs), in declaration order.

A new field is one :func:`setting` in its dataclass; every reader picks it up.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Literal

from profiles.clikit import bounded
from profiles.contract import MAX_INT, Fields

__all__ = [
    "Flag",
    "Setting",
    "setting",
    "settings_of",
    "read_config",
    "config_problems",
    "shown",
    "add_flags",
    "flag_values",
    "check_flag_bounds",
    "mirrored",
    "comma_ints",
    "comma_names",
]

#: the JSON shape of a field: a number, a string, a flag, a list of them, a list of int lists
Kind = Literal["int", "num", "str", "bool", "ints", "strs", "int_lists"]
_KEY = "pipeplan.setting"


def comma_ints(text: str) -> tuple[int, ...]:
    """``2,4,8`` -> (2, 4, 8): a flag's comma list of integers."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def comma_names(text: str) -> tuple[str, ...]:
    """``ddp,fsdp`` -> ("ddp", "fsdp"): a flag's comma list of names (blanks dropped)."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


@dataclass(frozen=True, kw_only=True)
class Flag:
    """How a field shows on a command line."""

    name: str  #: ``--global-batch``
    help: str  #: the ``--help`` line
    default: Any = None  #: the flag's default (None: the command decides, e.g. from the profile)
    choices: tuple[str, ...] | None = None  #: argparse's choices, for a single name
    nargs: str | None = None  #: ``?``: the flag may be given bare, meaning ``const``
    const: Any = None
    bounds: tuple[float, float] | None = None  #: checked before any work (default: the field's range)
    bounds_why: str = ""  #: said after the range, e.g. `` (per replica)``

    @property
    def metavar(self) -> str:
        return self.name.lstrip("-").replace("-", "_").upper()


@dataclass(frozen=True, kw_only=True)
class Setting:
    """One field's declaration: what it means, its JSON kind and the values it may take."""

    doc: str
    kind: Kind
    lo: float | None = None  #: smallest value (of each item, for lists)
    hi: float | None = None  #: largest value (of each item, for lists)
    positive: bool = False  #: a number above ``lo``, not equal to it (a bandwidth)
    why: str = ""  #: what the range counts, said in its error, e.g. `` (microbatches per replica)``
    choices: tuple[str, ...] | None = None  #: the names allowed (of each item, for lists)
    nonempty: bool = False  #: a list must name at least one
    #: an older stored form -> today's (e.g. ``recompute: true`` -> all three modes)
    legacy: Callable[[Any], Any] | None = None
    flag: Flag | None = None  #: its command-line flag, where a command mirrors it
    label: str | None = None  #: its name in the dashboard, where the dashboard mirrors it


def setting(default: Any, doc: str, kind: Kind, **kw: Any) -> Any:
    """A dataclass field declared with its doc, kind and rule (see :class:`Setting`)."""
    return field(default=default, metadata={_KEY: Setting(doc=doc, kind=kind, **kw)})


def settings_of(cls: type) -> Iterator[tuple[Field, Setting]]:
    """The declared fields of a config class, in order."""
    for f in fields(cls):
        if _KEY in f.metadata:
            yield f, f.metadata[_KEY]


def mirrored(cls: type) -> dict[str, Setting]:
    """Field name -> declaration, for the fields the dashboard shows (those with a label)."""
    return {f.name: s for f, s in settings_of(cls) if s.label}


# -- JSON ---------------------------------------------------------------------------------------
def read_config(cls: type, data: Any, where: str, prefix: str = "") -> Any:
    """A ``cls`` from a JSON object: every key a declared field (else a one-line error listing the
    known ones), every value of its field's kind; a missing key (or null, for a field whose default
    is None) takes the default. The validity rules are the caller's ``check``."""
    f = Fields(data, where, prefix)
    declared = dict((x.name, s) for x, s in settings_of(cls))
    for key in f.data:
        if key not in declared:
            raise f.fail(key, f"unknown field; known fields: {', '.join(sorted(declared))}")
    values = {}
    for x, s in settings_of(cls):
        default = x.default if x.default is not MISSING else None
        if x.name not in f.data or (f.data[x.name] is None and default is None):
            continue
        src = f if s.legacy is None else Fields({x.name: s.legacy(f.data[x.name])}, f.where, f.prefix)
        values[x.name] = _read(src, x.name, s.kind)
    return cls(**values)


def _read(f: Fields, key: str, kind: Kind) -> Any:
    """One value of its kind (ranges are the rules' business, not the reader's)."""
    if kind == "int":
        return f.int(key, min=None)
    if kind == "num":
        return f.num(key, min=None)
    if kind == "str":
        return f.str(key)
    if kind == "bool":
        return f.bool(key)
    items = f.list(key)
    wrapped = Fields(dict(enumerate(items)), f.where, f._path(key))
    if kind == "ints":
        return tuple(wrapped.int(i, min=None) for i in range(len(items)))
    if kind == "strs":
        return tuple(wrapped.str(i) for i in range(len(items)))
    out = []  # int_lists
    for i, item in enumerate(items):
        if not isinstance(item, list):
            raise f.fail(key, f"entry {i}: expected a list, got {type(item).__name__}")
        inner = Fields(dict(enumerate(item)), f.where, f"{f._path(key)}[{i}]")
        out.append(tuple(inner.int(j, min=None) for j in range(len(item))))
    return tuple(out)


# -- rules --------------------------------------------------------------------------------------
def config_problems(obj: Any) -> Iterator[tuple[str, Any, str]]:
    """``(field, value, why)`` for each value of ``obj`` its declaration does not allow."""
    for x, s in settings_of(type(obj)):
        value = getattr(obj, x.name)
        if value is None and x.default is None:
            continue
        why = _problem(value, s)
        if why:
            yield x.name, value, why


def _problem(value: Any, s: Setting) -> str | None:
    if s.kind in ("ints", "strs", "int_lists"):
        if not isinstance(value, tuple):
            return f"expected a list, got {type(value).__name__}"
        if s.nonempty and not value:
            return "name at least one"
        items = value
    else:
        items = (value,)
    if s.kind == "int_lists":
        return None  # their rule is the config's own (e.g. a placement's)
    return next((why for why in map(lambda v: _item_problem(v, s), items) if why), None)


def shown(value: Any, *, as_flag: bool = False) -> str:
    """A value as an error shows it, cut to one short line: as a file holds it (``[2, 4]``), or
    as a flag is written (``2,4``; nothing: ``''``)."""
    if as_flag:
        text = (",".join(map(str, value)) if isinstance(value, tuple) else str(value)) or "''"
    else:
        text = repr(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def _item_problem(v: Any, s: Setting) -> str | None:
    if s.kind in ("int", "ints", "num"):
        integer = s.kind != "num"
        if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
            return f"expected {'an integer' if integer else 'a number'}"
        if not integer and not math.isfinite(v):
            return "expected a finite number"
        lo, hi = s.lo, MAX_INT if s.hi is None else s.hi
        if s.positive and v <= lo:
            return f"must be > {_number(lo)}{s.why}"
        if (lo is not None and v < lo) or v > hi:
            span = f"from {_number(lo)} to {_number(hi)}" if s.hi is not None else f">= {_number(lo)}"
            return f"{'each ' if s.kind == 'ints' else ''}must be {span}{s.why}"
        return None
    if s.kind == "bool":
        return None if isinstance(v, bool) else "expected true or false"
    if not isinstance(v, str):
        return "expected a string"
    if s.choices is not None and v not in s.choices:
        return f"choose from {', '.join(s.choices)}"
    return None


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


# -- command line -------------------------------------------------------------------------------
def add_flags(p: argparse.ArgumentParser, cls: type) -> None:
    """One flag per declared field that has one, its value stored under the field's name."""
    for x, s in settings_of(cls):
        fl = s.flag
        if fl is None:
            continue
        kw: dict[str, Any] = {"dest": x.name, "default": fl.default, "help": fl.help}
        if s.kind == "bool":
            p.add_argument(fl.name, action="store_true", **kw)
            continue
        kw["type"] = {"int": int, "num": float, "str": str, "ints": comma_ints, "strs": comma_names}[s.kind]
        if fl.choices is None:
            kw["metavar"] = fl.metavar
        else:
            kw["choices"] = list(fl.choices)
        if fl.nargs is not None:
            kw.update(nargs=fl.nargs, const=fl.const)
        p.add_argument(fl.name, **kw)


def flag_values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The flags' values, by field name (None where a flag left the choice to the command)."""
    return {x.name: getattr(args, x.name) for x, s in settings_of(cls) if s.flag is not None}


def check_flag_bounds(cls: type, args: argparse.Namespace) -> None:
    """Each number flag inside its range (the flag's own, else its field's), before any work."""
    for x, s in settings_of(cls):
        fl = s.flag
        if fl is None or s.kind not in ("int", "num", "ints"):
            continue
        lo, hi = fl.bounds or (s.lo, s.hi if s.hi is not None else MAX_INT)
        bounded(fl.name, getattr(args, x.name), lo, hi, fl.bounds_why or s.why)
