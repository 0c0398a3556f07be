"""The Profile contract: what each unit of a model costs, measured or analytic.

Times are seconds, sizes bytes. One ``ProfileEntry`` per (dtype, microbatch size).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from .contract import ContractError, Fields, read_json, schema_id, write_json

__all__ = [
    "UnitKind",
    "UnitCost",
    "TiedParams",
    "WholeModel",
    "ProfileEntry",
    "Profile",
    "load_profile",
    "find_profile",
    "DType",
    "DTYPE_TABLE",
    "MIN_FIT_SIZES",
    "profile_file",
    "DTYPES",
    "METHODS",
    "SCALED_FIELDS",
    "OFF_CPU_WARN",
]

KIND, MAJOR = "profile", 1
#: per-unit fields that grow with the microbatch size (fitted as a + b * microbatch_size)
SCALED_FIELDS = (
    "forward_s",
    "backward_s",
    "backward_input_s",
    "backward_weight_s",
    "saved_bytes",
    "loss_saved_bytes",
    "output_bytes",
    "forward_flops",
)


@dataclass(frozen=True)
class DType:
    """A precision a stage can run in: its bytes per element and torch's name for it."""

    name: str  # as plans and profiles spell it
    bytes: int  # per element of weights, gradients and activations
    torch_name: str  # ``getattr(torch, torch_name)``

    @property
    def sixteen_bit(self) -> bool:
        """Mixed precision: an fp32 master copy of the weights is kept beside them."""
        return self.bytes < 4


#: the one dtype table: every other view of it (torch dtypes, autocast, bytes) reads this
DTYPE_TABLE: dict[str, DType] = {
    d.name: d for d in (DType("fp32", 4, "float32"), DType("bf16", 2, "bfloat16"), DType("fp16", 2, "float16"))
}
DTYPES = tuple(DTYPE_TABLE)
#: measured microbatch sizes (of one dtype) it takes to predict others from per-unit fits:
#: two fix the line ``a + b * size`` (three also tell its error, see Profile.fits)
MIN_FIT_SIZES = 2
METHODS = ("measured", "analytic")
#: attention kernels a profile may record (``profiles/ops.py`` prices each)
ATTENTION_KERNELS = ("flash", "efficient", "math")


class UnitKind(str, Enum):
    """The unit kinds the zoo writes, and the roles code may ask about.

    ``UnitCost.kind`` stays free text in the file (a user's ``ZooModel`` may name kinds of its
    own, such as ``act``), so a kind is compared with these, never converted; any kind but an
    embedding or a head is a body unit. A unit's role comes from its kind, never its name.
    """

    EMBEDDING = "embedding"  # the input end: token (and position) embeddings
    BLOCK = "block"  # a repeated transformer block (or BERT layer)
    HEAD = "head"  # the output end: final norm, output projection and loss
    LAYER = "layer"  # a unit of a user's plain list of modules: no role declared


#: a CPU measurement (profile or run) whose thread was ready but off the CPU for more than this
#: share of its time was disturbed by other load, and says so
OFF_CPU_WARN = 0.03


@dataclass(frozen=True)
class UnitCost:
    """Cost of one unit for one microbatch."""

    name: str
    kind: str  # a UnitKind value ("embedding", "block", "head", "layer") or a user model's own word
    forward_s: float
    backward_s: float  # full backward (B): input and weight gradients together
    backward_input_s: float  # I: gradient w.r.t. the unit's input only
    backward_weight_s: float  # W: gradient w.r.t. the unit's parameters only
    params: int  # every parameter the unit holds (all experts of a mixture-of-experts block)
    param_bytes: int
    saved_bytes: int  # activations kept from forward for backward
    output_bytes: int  # bytes handed to the next unit (what a stage boundary sends)
    forward_flops: float
    spread: dict[str, float] = field(default_factory=dict)  # relative spread of each time, e.g. {"forward_s": 0.03}
    peak_bytes: int = 0  # CUDA only: max_memory_allocated above the baseline during the unit's F + B (0: not measured)
    #: parameters a token uses: ``params`` less the routed experts it does not visit (= params when dense)
    active_params: int = -1
    #: the last unit's: of saved_bytes, those its loss saved (the log-probabilities), which a pipeline
    #: runtime frees with the input gradient (I), W not needing them (0 elsewhere and in older profiles)
    loss_saved_bytes: int = 0
    #: of ``forward_s`` and ``backward_input_s``, the operations on the residual stream (norms,
    #: residual adds, hidden dropouts), which Megatron-style tensor parallelism runs whole on every
    #: rank unless sequence parallel (0: not recorded, as in measured profiles)
    residual_forward_s: float = 0.0
    residual_backward_s: float = 0.0

    def __post_init__(self):
        if self.active_params < 0:
            object.__setattr__(self, "active_params", self.params)

    @property
    def is_embedding(self) -> bool:
        return self.kind == UnitKind.EMBEDDING

    @property
    def is_head(self) -> bool:
        return self.kind == UnitKind.HEAD

    @property
    def is_body(self) -> bool:
        """Neither the embedding nor the head: a block, or a unit of a user's model."""
        return not (self.is_embedding or self.is_head)

    @staticmethod
    def from_fields(f: Fields) -> UnitCost:
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
            peak_bytes=f.int("peak_bytes", default=0),
            active_params=f.int("active_params", default=-1),
            loss_saved_bytes=f.int("loss_saved_bytes", default=0),
            residual_forward_s=f.num("residual_forward_s", default=0.0),
            residual_backward_s=f.num("residual_backward_s", default=0.0),
        )


@dataclass(frozen=True)
class TiedParams:
    """One parameter held by several units (tied input and output embeddings).

    Each unit's ``params`` counts it, so a stage holding one of the units counts it once, as
    its rank holds one copy. A stage holding two of them holds it once, not twice. Ranks holding
    it on different stages sum its gradient every step (an all-reduce of ``params`` gradient
    elements among those ranks, as Megatron does for the embedding)."""

    units: tuple[str, ...]
    params: int


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
    tied: tuple[TiedParams, ...] = ()  # parameters shared by several units (tied embeddings)
    #: the attention kernel an analytic profile priced (``profiles.ops.ATTENTION_KERNELS``): fused
    #: ``flash``/``efficient`` keep no s x s scores; None: not recorded (measured profiles, older
    #: analytic ones), read as ``math``
    attention: str | None = None
    #: the blocks' tensor-parallel plan the executor runs (``profiles.tp_plans``: layer suffix ->
    #: style); ``{}``: the model cannot be split (tp 1 only); None: not recorded (older profiles)
    tp_plan: dict[str, str] | None = None

    @property
    def fused_attention(self) -> bool:
        """Whether attention ran as one fused kernel (no s x s scores kept)."""
        return self.attention in ("flash", "efficient")

    @property
    def unit_names(self) -> list[str]:
        return [u.name for u in self.entries[0].units]

    @property
    def num_units(self) -> int:
        return len(self.entries[0].units)

    def fits(self, dtype: str = "fp32") -> dict[str, Any]:
        """Per unit and field, the least-squares line ``a + b * microbatch_size`` over the
        measured sizes of ``dtype``, and the largest relative error of the fit at those sizes.

        With one measured size the line goes through the origin (cost proportional to
        the microbatch size). With fewer than three sizes the line meets every point, so
        its error is unknown and reported as null: measure three or more sizes to know it.
        """
        entries = sorted((e for e in self.entries if e.dtype == dtype), key=lambda e: e.microbatch_size)
        if not entries:
            self.entry(dtype)  # raises the one-line error
        xs = [float(e.microbatch_size) for e in entries]
        units: dict[str, dict[str, list[float]]] = {}
        worst: dict[str, float | None] = {}
        for i, name in enumerate(self.unit_names):
            units[name] = {}
            for f in SCALED_FIELDS:
                ys = [float(getattr(e.units[i], f)) for e in entries]
                a, b = _line(xs, ys)
                units[name][f] = [a, b]
                if len(xs) > 2:
                    err = max((abs(a + b * x - y) / y if y > 0 else 0.0) for x, y in zip(xs, ys))
                    worst[f] = max(worst.get(f) or 0.0, err)
                else:
                    worst[f] = None
        return {
            "dtype": dtype,
            "microbatch_sizes": [int(x) for x in xs],
            "model": "a + b * microbatch_size",
            "units": units,
            "max_rel_error": worst,
        }

    def entry_at(self, dtype: str, microbatch_size: float) -> ProfileEntry:
        """The entry for any microbatch size: the measured one when there is one, else from
        the per-unit linear fits (see :meth:`fits`); parameter counts do not scale."""
        for e in self.entries:
            if e.dtype == dtype and e.microbatch_size == microbatch_size:
                return e
        if microbatch_size <= 0:
            raise ContractError(f"microbatch size must be positive, got {microbatch_size}")
        fit = self.fits(dtype)
        base = self.entry(dtype)
        units = []
        for u in base.units:
            line = fit["units"][u.name]
            vals = {f: max(0.0, line[f][0] + line[f][1] * microbatch_size) for f in SCALED_FIELDS}
            for f in ("saved_bytes", "loss_saved_bytes", "output_bytes"):
                vals[f] = int(round(vals[f]))
            units.append(replace(u, **vals, spread={}))
        scale = microbatch_size / base.microbatch_size
        w = base.whole_model
        whole = WholeModel(w.forward_s * scale, w.backward_s * scale, int(w.saved_bytes * scale))
        return ProfileEntry(
            dtype, int(microbatch_size) if float(microbatch_size).is_integer() else microbatch_size, tuple(units), whole
        )

    def with_sizes(self, dtype: str, sizes: Iterable[int]) -> Profile:
        """This profile with an entry of ``dtype`` for each of ``sizes``: the measured one, else
        one predicted by :meth:`entry_at` from the per-unit fits, which takes at least
        MIN_FIT_SIZES measured sizes. Predicted entries are listed in ``measurement["fitted"]``
        (``"fp32/mb3"``); a plan says it used them."""
        measured = sorted({e.microbatch_size for e in self.entries if e.dtype == dtype})
        if not measured:
            self.entry(dtype)  # raises the one-line error naming the dtypes there are
        missing = sorted(set(sizes) - set(measured))
        if not missing:
            return self
        if len(measured) < MIN_FIT_SIZES:
            raise ContractError(
                f"profile of {self.model_name} measured {dtype} at microbatch size {measured[0]} only; "
                f"size {missing[0]} is predicted from per-unit fits when {MIN_FIT_SIZES} or more sizes are "
                f"measured: profile again with --microbatch-sizes {measured[0]},{missing[0]}"
            )
        added = tuple(self.entry_at(dtype, b) for b in missing)
        fitted = list(self.measurement.get("fitted", [])) + [f"{dtype}/mb{b}" for b in missing]
        return replace(self, entries=self.entries + added, measurement={**self.measurement, "fitted": fitted})

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
            "model": {
                "name": self.model_name,
                "config": self.model_config,
                **({"tp_plan": self.tp_plan} if self.tp_plan is not None else {}),
            },
            "device": {"name": self.device_name, "kind": self.device_kind},
            "seq_len": self.seq_len,
            "method": self.method,
            "measurement": self.measurement,
            "tied": [{"units": list(g.units), "params": g.params} for g in self.tied],
            **({"attention": self.attention} if self.attention is not None else {}),
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
            "fits": [self.fits(d) for d in dict.fromkeys(e.dtype for e in self.entries)],
        }

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @staticmethod
    def from_fields(f: Fields) -> Profile:
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
        tp_plan = model.raw("tp_plan", None)
        if tp_plan is not None and not (
            isinstance(tp_plan, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in tp_plan.items())
        ):
            raise model.fail("tp_plan", "expected an object of layer names to styles")
        measurement = f.raw("measurement", {})
        tied = tuple(
            TiedParams(units=tuple(map(str, g.list("units"))), params=g.int("params"))
            for g in (f.objs("tied") if f.has("tied") else [])
        )
        for i, g in enumerate(tied):
            if len(g.units) < 2 or not set(g.units) <= set(names):
                raise f.fail(f"tied[{i}].units", "expected two or more unit names of this profile")
        return Profile(
            tied=tied,
            model_name=model.str("name"),
            model_config=config,
            device_name=device.str("name"),
            device_kind=device.str("kind"),
            seq_len=f.int("seq_len", min=1),
            method=f.str("method", choices=METHODS),
            entries=tuple(entries),
            measurement=measurement if isinstance(measurement, dict) else {},
            attention=f.str("attention", choices=ATTENTION_KERNELS) if f.has("attention") else None,
            tp_plan=tp_plan,
        )


def _line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x``; through the origin when there is one point."""
    if len(xs) == 1:
        return 0.0, ys[0] / xs[0]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - b * mx, b


def find_profile(name: str, roots: tuple[Path, ...] | None = None) -> Path:
    """The stored profile for model ``name``: ``profiles/<device>/<name>.json`` under the
    current folder, then next to this package; ``cpu`` wins when several devices have one.
    ``<device>/<name>`` picks the device."""
    roots = roots or (Path("profiles"), Path(__file__).parent)
    stem = name.replace(":", "__")
    found: list[Path] = []
    for root in roots:
        if "/" in stem:
            found += [p for p in [root / f"{stem}.json"] if p.is_file()]
        else:
            found += sorted(root.glob(f"*/{stem}.json"))
    if not found:
        raise ContractError(
            f"{name}: no such file, and no stored profile profiles/<device>/{stem}.json: "
            f"run `pipeplan profile {name}` first"
        )
    cpu = [p for p in found if p.parent.name == "cpu"]
    return (cpu or found)[0]


def profile_file(spec: str | Path) -> Path:
    """The file a profile argument names: a path, or a stored model name (``gpt2-demo``,
    ``cpu/gpt2-demo``) found by :func:`find_profile`."""
    p = Path(spec)
    if not p.exists() and p.suffix != ".json":
        p = find_profile(str(spec))
    return p


def load_profile(path: str | Path) -> Profile:
    """Load and validate a Profile file, given as a path or as a stored model name
    (``gpt2-demo``, ``cpu/gpt2-demo``); raises ContractError with one line on any fault."""
    return Profile.from_fields(read_json(profile_file(path), KIND, MAJOR))
