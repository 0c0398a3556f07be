"""``RunConfig``: the settings of one run, declared once.

Each field is documented where it is declared: its type (the annotation), its default, its
command-line help and its validity rule (``bounds``). The fields generate the flags of
``pipeplan run``/``validate`` (``add_flags(parser, LAUNCHER)``), the worker's flags under
torchrun (``add_flags(parser, WORKER)``), and the worker's command line the launcher passes on
(``worker_argv``), so a new setting is one field here. The plan path(s), ``--json`` and the
runtime objects (devices, process groups) stay apart from it. No torch import here: the
command line reads this.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from planner.cluster import MAX_DEVICES
from profiles.clikit import bounded
from profiles.contract import UserError

__all__ = ["RunConfig", "LAUNCHER", "WORKER", "MAX_STEPS", "OVERSUBSCRIBE_MAX_PER_CORE", "add_flags", "worker_argv"]

#: the most timed (or warm-up) steps a run takes: a run is a check of a plan, not a training job
MAX_STEPS = 10_000
#: ``--oversubscribe``: CPU ranks per core allowed at most (more is a mistake, not a test)
OVERSUBSCRIBE_MAX_PER_CORE = 4

#: who reads a setting: the launcher (``pipeplan run``/``validate``), the torchrun worker, or both
LAUNCHER, WORKER = "launcher", "worker"
_BOTH = (LAUNCHER, WORKER)


def _setting(
    default: Any,
    help: str,
    *,
    scope: tuple[str, ...] = _BOTH,
    bounds: tuple[float, float] | None = None,
    metavar: str | None = None,
    always: bool = False,
) -> Any:
    """A field of ``RunConfig``: ``help`` for ``--help`` (``argparse.SUPPRESS``: a hidden flag),
    ``scope`` who takes the flag, ``bounds`` the allowed closed range of a number, ``always``: the
    launcher passes it to the worker even at its default (so a launch line says it)."""
    meta = {"help": help, "scope": scope, "bounds": bounds, "metavar": metavar, "always": always}
    return field(default=default, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """How to run a plan (or several, one after another, in one launch)."""

    #: processes to start; None: the plan's pp x dp x tp (the only count a plan runs with)
    nproc: int | None = _setting(
        None, "processes (default: the plan's pp x dp)", scope=(LAUNCHER,), bounds=(1, MAX_DEVICES)
    )
    #: timed steps; the report's step times and events are theirs
    steps: int = _setting(5, "timed steps (default 5)", bounds=(1, MAX_STEPS), always=True)
    #: untimed steps before the timed ones (torch's first step also infers shapes)
    warmup: int = _setting(2, "untimed steps before them (default 2)", bounds=(0, MAX_STEPS), always=True)
    #: compare the loss and every gradient (forward-only plans: the output) with one process, on step 0
    check: bool = _setting(False, "compare loss and every gradient with one process")
    #: where the RunReport goes; None: ``<plan>.run.json`` (a worker running several plans: each its own)
    report: Path | None = _setting(None, "RunReport path (default <plan>.run.json)", always=True)
    #: run torch's own schedule class of that name on the same stages instead of the plan's table
    torch_schedule: str | None = _setting(
        None,
        "run torch's own schedule class NAME (e.g. 1F1B) on the same stages, for comparison",
        metavar="NAME",
    )
    #: the tokens: a .bin token file or any file as text; None: synthetic tokens
    data: Path | None = _setting(
        None,
        "tokens: a .bin token file (uint16/uint32, nanoGPT/Megatron), or text (its bytes); default: synthetic",
    )
    #: a .bin file's token width; None: uint16 when the vocabulary fits, else uint32
    data_dtype: Literal["uint16", "uint32"] | None = _setting(None, "a .bin file's token width (default: by vocab)")
    #: a folder for one torch.profiler trace per rank and plan; None: no profiler
    torch_profiler: Path | None = _setting(None, "write a torch.profiler trace per rank to DIR", metavar="DIR")
    #: CPU: start more ranks than cores (up to ``OVERSUBSCRIBE_MAX_PER_CORE`` per core)
    oversubscribe: bool = _setting(
        False,
        f"CPU: allow more ranks than cores (up to {OVERSUBSCRIBE_MAX_PER_CORE} per core; correctness runs)",
        scope=(LAUNCHER,),
    )
    #: import and run the ``package.module:function`` model a profile names (its code runs on every rank)
    trust_remote_code: bool = _setting(
        False, "import and run the package.module:function model the plan's profile names, on every rank"
    )
    #: AdamW's learning rate
    lr: float = _setting(1e-4, "AdamW learning rate (default 0.0001)", scope=(WORKER,))
    #: fault-injection tests: the step at which rank ``fail_rank`` raises; None: never
    fail_at_step: int | None = _setting(None, argparse.SUPPRESS, scope=(WORKER,))
    #: fault-injection tests: the rank that fails at ``fail_at_step``
    fail_rank: int = _setting(0, argparse.SUPPRESS, scope=(WORKER,))
    #: ``--check`` failure tests: rank 0's first gradient element grows by this times the largest
    perturb_grad: float = _setting(0.0, argparse.SUPPRESS, scope=(WORKER,))

    def check_bounds(self) -> RunConfig:
        """Refuse a number outside its field's bounds, one line naming the flag; returns self."""
        for f in dataclasses.fields(self):
            if f.metadata["bounds"] is not None:
                bounded(_flag(f.name), getattr(self, f.name), *f.metadata["bounds"])
        return self

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """A config from ``{field name: value}`` (e.g. ``vars`` of parsed flags, less the caller's
        own arguments); unknown keys are refused, bounds checked."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown run setting {', '.join(unknown)}: known are {', '.join(sorted(known))}")
        return cls(**values).check_bounds()


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _value_type(f: dataclasses.Field) -> tuple[type, tuple[str, ...] | None]:
    """A field's value type without ``None``, and its choices when it is a ``Literal``."""
    hint = typing.get_type_hints(RunConfig)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] if _is_union(hint) else [hint]
    (t,) = args
    if typing.get_origin(t) is Literal:
        return str, typing.get_args(t)
    return t, None


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def add_flags(parser: argparse.ArgumentParser, scope: str) -> None:
    """The flags of the fields ``scope`` (``LAUNCHER`` or ``WORKER``) takes, in declaration order;
    a bool is a switch."""
    for f in dataclasses.fields(RunConfig):
        meta = f.metadata
        if scope not in meta["scope"]:
            continue
        t, choices = _value_type(f)
        if t is bool:
            parser.add_argument(_flag(f.name), action="store_true", help=meta["help"])
            continue
        kw: dict[str, Any] = {"type": t, "default": f.default, "help": meta["help"]}
        if choices:
            kw["choices"] = choices
        if meta["metavar"]:
            kw["metavar"] = meta["metavar"]
        parser.add_argument(_flag(f.name), **kw)


def worker_argv(cfg: RunConfig) -> list[str]:
    """The worker's flags for ``cfg``: every setting the worker takes that is not at its default
    (and those marked ``always``), valued flags first, then switches, each group in declaration order."""
    valued, switches = [], []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if WORKER not in f.metadata["scope"] or value is None:
            continue
        if isinstance(value, bool):
            switches += [_flag(f.name)] if value else []
        elif f.metadata["always"] or value != f.default:
            valued += [_flag(f.name), str(value)]
    return valued + switches
