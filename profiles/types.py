"""The Profile contract: what each unit of a model costs, measured or analytic.

Times are seconds, sizes bytes. One ``ProfileEntry`` per (dtype, microbatch size).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .contract import ContractError, Fields, read_json, schema_id, write_json

__all__ = ["UnitCost", "WholeModel", "ProfileEntry", "Profile", "load_profile", "DTYPES", "METHODS"]

KIND, MAJOR = "profile", 1
DTYPES = ("fp32", "bf16", "fp16")
METHODS = ("measured", "analytic")


@dataclass(frozen=True)
class UnitCost:
    """Cost of one unit for one microbatch."""

    name: str
    kind: str  # "embedding" | "block" | "head" | "layer" ... (free text, shown to users)
    forward_s: float
    backward_s: float  # full backward (B): input and weight gradients together
    backward_input_s: float  # I: gradient w.r.t. the unit's input only
    backward_weight_s: float  # W: gradient w.r.t. the unit's parameters only
    params: int
    param_bytes: int
    saved_bytes: int  # activations kept from forward for backward
    output_bytes: int  # bytes handed to the next unit (what a stage boundary sends)
    forward_flops: float
    spread: dict[str, float] = field(default_factory=dict)  # relative spread of each time, e.g. {"forward_s": 0.03}

    @staticmethod
    def from_fields(f: Fields) -> "UnitCost":
        spread = f.obj("spread", default={})
        return UnitCost(
            name=f.str("name"),
            kind=f.str("kind"),
            forward_s=f.num("forward_s"),
            backward_s=f.num("backward_s"),
            backward_input_s=f.num("backward_input_s"),
            backward_weight_s=f.num("backward_weight_s"),
            params=f.int("params"),
            param_bytes=f.int("param_bytes"),
            saved_bytes=f.int("saved_bytes"),
            output_bytes=f.int("output_bytes"),
            forward_flops=f.num("forward_flops"),
            spread={k: spread.num(k) for k in spread.data},
        )


@dataclass(frozen=True)
class WholeModel:
    forward_s: float
    backward_s: float
    saved_bytes: int


@dataclass(frozen=True)
class ProfileEntry:
    dtype: str
    microbatch_size: int
    units: tuple[UnitCost, ...]
    whole_model: WholeModel

    @property
    def consistency(self) -> dict[str, float]:
        """Sum over units divided by the whole-model measurement (1.0 is perfect)."""
        u = self.units
        w = self.whole_model

        def ratio(a: float, b: float) -> float:
            return a / b if b > 0 else float("nan")

        return {
            "forward": ratio(sum(x.forward_s for x in u), w.forward_s),
            "backward": ratio(sum(x.backward_s for x in u), w.backward_s),
            "saved_bytes": ratio(sum(x.saved_bytes for x in u), w.saved_bytes),
        }


@dataclass(frozen=True)
class Profile:
    model_name: str
    model_config: dict[str, Any]
    device_name: str
    device_kind: str  # "cpu" | "cuda" | a device-spec name for analytic profiles
    seq_len: int
    method: str  # "measured" | "analytic"
    entries: tuple[ProfileEntry, ...]
    measurement: dict[str, Any] = field(default_factory=dict)  # repeats, warmup, threads, attention, assumptions

    @property
    def unit_names(self) -> list[str]:
        return [u.name for u in self.entries[0].units]

    @property
    def num_units(self) -> int:
        return len(self.entries[0].units)

    def entry(self, dtype: str = "fp32", microbatch_size: int | None = None) -> ProfileEntry:
        """The entry for ``dtype`` and ``microbatch_size`` (the smallest size when None)."""
        matches = [e for e in self.entries if e.dtype == dtype]
        if microbatch_size is not None:
            matches = [e for e in matches if e.microbatch_size == microbatch_size]
        if not matches:
            have = ", ".join(f"{e.dtype}/mb{e.microbatch_size}" for e in self.entries)
            raise ContractError(
                f"profile of {self.model_name} has no entry for dtype {dtype} microbatch size "
                f"{microbatch_size}; it has {have}: profile again with --dtypes/--microbatch-sizes"
            )
        return min(matches, key=lambda e: e.microbatch_size)

    # -- JSON -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": schema_id(KIND, MAJOR),
            "model": {"name": self.model_name, "config": self.model_config},
            "device": {"name": self.device_name, "kind": self.device_kind},
            "seq_len": self.seq_len,
            "method": self.method,
            "measurement": self.measurement,
            "entries": [
                {
                    "dtype": e.dtype,
                    "microbatch_size": e.microbatch_size,
                    "units": [asdict(u) for u in e.units],
                    "whole_model": asdict(e.whole_model),
                    "consistency": e.consistency,
                }
                for e in self.entries
            ],
        }

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @staticmethod
    def from_fields(f: Fields) -> "Profile":
        model = f.obj("model")
        device = f.obj("device")
        entries = []
        for e in f.objs("entries", nonempty=True):
            units = tuple(UnitCost.from_fields(u) for u in e.objs("units", nonempty=True))
            w = e.obj("whole_model")
            entries.append(
                ProfileEntry(
                    dtype=e.str("dtype", choices=DTYPES),
                    microbatch_size=e.int("microbatch_size", min=1),
                    units=units,
                    whole_model=WholeModel(w.num("forward_s"), w.num("backward_s"), w.int("saved_bytes")),
                )
            )
        names = [u.name for u in entries[0].units]
        for i, e in enumerate(entries):
            if [u.name for u in e.units] != names:
                raise f.fail(f"entries[{i}].units", "unit names differ from entries[0]")
        config = model.raw("config", {})
        if not isinstance(config, dict):
            raise model.fail("config", "expected an object")
        measurement = f.raw("measurement", {})
        return Profile(
            model_name=model.str("name"),
            model_config=config,
            device_name=device.str("name"),
            device_kind=device.str("kind"),
            seq_len=f.int("seq_len", min=1),
            method=f.str("method", choices=METHODS),
            entries=tuple(entries),
            measurement=measurement if isinstance(measurement, dict) else {},
        )


def load_profile(path: str | Path) -> Profile:
    """Load and validate a Profile file; raises ContractError with one line on any fault."""
    return Profile.from_fields(read_json(path, KIND, MAJOR))
