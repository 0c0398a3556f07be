"""Cluster and job specs: what the hardware is and what the job asks for.

Both are typed configs: every field documented, unknown keys refused (STYLE.md 7).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from profiles.contract import (
    MAX_INT,
    ContractError,
    Fields,
    UserError,
    parse_json,
    read_json,
    read_text,
    read_yaml,
    schema_id,
    write_json,
)
from profiles.devices import DEVICE_SPECS
from profiles.types import DTYPES
from simulator.actions import ScheduleError
from simulator.costs import DPMode, Layout, Links
from simulator.placement import check_placement
from simulator.schedules import CUSTOM, SCHEDULES

from .config import Flag, config_problems, read_config, setting, settings_of, shown

__all__ = [
    "Cluster",
    "Job",
    "PRESET_CLUSTERS",
    "PRESETS_FILE",
    "preset_cluster",
    "cluster_for_device",
    "MAX_DEVICES",
    "MAX_GLOBAL_BATCH",
    "MAX_MICROBATCHES",
    "MAX_VIRTUAL_FLAG",
    "ALL_SCHEDULES",
    "load_cluster",
    "load_job",
    "parse_bytes",
]

KIND, MAJOR = "cluster", 1

#: The most devices a cluster may have: 2**20, ten times the largest training clusters built.
MAX_DEVICES = 2**20
#: The largest global batch in samples, 2**20: at 4096 tokens a sample, 4 billion tokens a
#: step, hundreds of times the 16M tokens Llama 3 405B trained with (Meta, 2024).
MAX_GLOBAL_BATCH = 2**20
#: The most microbatches per replica and step the planner considers: 1024, far above the tens
#: to hundreds large runs use (e.g. GPT-3 on Megatron: a batch of 1536 over 8 replicas, 192
#: microbatches of 1; Narayanan et al. 2021), and a table it can simulate in seconds.
MAX_MICROBATCHES = 1024
_BPS = " bytes/s (a link moves data)"

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(text: str | int | float, flag: str = "--device-memory") -> int:
    """``80GiB``, ``512MB``, ``1e9`` -> bytes: a positive, finite size of at most MAX_INT bytes."""
    if isinstance(text, bool):
        raise UserError(f"{flag} {text!r}: write a size like 80GiB, 512MiB or 24GB")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", text)
        if not m or m.group(2).lower() not in _UNITS:
            raise UserError(f"{flag} {text!r}: write a size like 80GiB, 512MiB or 24GB")
        try:
            value = float(m.group(1)) * _UNITS[m.group(2).lower()]
        except ValueError:
            raise UserError(f"{flag} {text!r}: write a size like 80GiB, 512MiB or 24GB") from None
    if not math.isfinite(value) or not 1 <= value <= MAX_INT:
        raise UserError(f"{flag} {str(text)[:30]!r}: a size between 1 byte and {MAX_INT // 2**50} PiB, like 80GiB")
    return int(value)


@dataclass(frozen=True, kw_only=True)
class Cluster:
    """The hardware: devices, their memory, and the links between them (``pipeplan calibrate``
    measures the links and overheads). Each field declared once (``planner.config``)."""

    name: str = setting("custom", "the cluster's name, as plans show it", "str")
    device: str = setting("cpu", 'device kind, informational ("h100", "cpu", ...)', "str")
    devices: int = setting(2, "accelerators in all", "int", lo=1, hi=MAX_DEVICES)
    memory_bytes: int = setting(8 * 2**30, "usable memory per device", "int", lo=1)
    devices_per_node: int = setting(8, "devices that share the fast intra-node link", "int", lo=1, hi=MAX_DEVICES)
    intra_bandwidth_Bps: float = setting(
        1e9, "point-to-point bandwidth inside a node, bytes/s", "num", lo=0.0, positive=True, why=_BPS
    )
    intra_latency_s: float = setting(50e-6, "point-to-point latency inside a node", "num", lo=0.0)
    inter_bandwidth_Bps: float = setting(1e9, "bandwidth across nodes", "num", lo=0.0, positive=True, why=_BPS)
    inter_latency_s: float = setting(50e-6, "latency across nodes", "num", lo=0.0)
    overlap: bool = setting(True, "sends overlap compute (False: the sender waits for its send)", "bool")
    action_overhead_s: float = setting(
        0.0, "runtime cost of every compute action, in the stage costs (calibrate)", "num", lo=0.0
    )
    optimizer_s_per_param: float = setting(
        0.0, "gradient scaling + AdamW step time per parameter (calibrate)", "num", lo=0.0
    )
    intra_collective_Bps: float = setting(
        0.0,
        "bus bandwidth NCCL's collectives reach for large messages inside a node (bytes/s; 0: collectives "
        "priced on the point-to-point link, α-β)",
        "num",
        lo=0.0,
    )
    inter_collective_Bps: float = setting(
        0.0, "bus bandwidth NCCL's collectives reach for large messages across nodes (0: as above)", "num", lo=0.0
    )
    collective_call_s: float = setting(
        0.0,
        "α-β collectives: the fixed time of one call, whatever its size (seconds; gloo's, measured by "
        "pipeplan calibrate; 0: none)",
        "num",
        lo=0.0,
    )
    ring_Bps: float = setting(
        0.0,
        "α-β collectives: the bandwidth of their ring steps (bytes/s; measured by pipeplan calibrate; 0: the "
        "point-to-point bandwidth)",
        "num",
        lo=0.0,
    )
    scatter_gather_Bps: float = setting(
        0.0,
        "α-β collectives: the bandwidth of the ring steps of a reduce-scatter or an all-gather, where the "
        "library runs them apart from its all-reduce (bytes/s; gloo's, measured by pipeplan calibrate; 0: as "
        "ring_Bps)",
        "num",
        lo=0.0,
    )
    tp_layer_s: float = setting(
        0.0,
        "the runtime's own time per tensor-parallel layer in a forward (seconds: DTensor's dispatch and "
        "redistributions beside the math; measured by pipeplan calibrate; 0: none)",
        "num",
        lo=0.0,
    )
    tp_layer_backward_s: float = setting(
        0.0, "the same in a backward (seconds; measured by pipeplan calibrate; 0: none)", "num", lo=0.0
    )
    fsdp_unit_s: float = setting(
        0.0,
        "the runtime's own time per unit FSDP2 shards, in a forward (seconds: its hooks and parameter "
        "views beside the math and the gathers; measured by pipeplan calibrate; 0: none)",
        "num",
        lo=0.0,
    )
    fsdp_unit_backward_s: float = setting(
        0.0, "the same in a backward (seconds; measured by pipeplan calibrate; 0: none)", "num", lo=0.0
    )

    def links(self, stride: int = 1) -> Links:
        """Links between pipeline ranks ``stride`` devices apart (``dp`` with tp 1)."""
        return Links(
            latency_s=self.intra_latency_s,
            bandwidth_Bps=self.intra_bandwidth_Bps,
            inter_latency_s=self.inter_latency_s,
            inter_bandwidth_Bps=self.inter_bandwidth_Bps,
            devices_per_node=self.devices_per_node,
            overlap=self.overlap,
            stride=stride,
            collective_Bps=self.intra_collective_Bps,
            inter_collective_Bps=self.inter_collective_Bps,
            collective_call_s=self.collective_call_s,
            ring_Bps=self.ring_Bps,
            scatter_gather_Bps=self.scatter_gather_Bps,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        return write_json(path, {"schema": schema_id(KIND, MAJOR), **self.to_dict()})

    @staticmethod
    def from_fields(f: Fields) -> Cluster:
        """A Cluster from its file's fields (``schema`` aside), each of its declared kind, unknown
        keys refused, then checked (a one-line error naming the field)."""
        cluster = read_config(Cluster, {k: v for k, v in f.data.items() if k != "schema"}, f.where, f.prefix)
        cluster.check(Fields({}, f.where, f.prefix))
        return cluster

    def check(self, f: Fields | None = None) -> None:
        """Raise a one-line ContractError at the first value its declaration does not allow."""
        f = f or Fields({}, "cluster")
        for name, value, why in config_problems(self):
            raise f.fail(name, f"is {shown(value)}: {why}")


PRESETS_FILE = Path(__file__).with_name("clusters.yaml")  #: node types, their datasheet sources, old names
_PRESET_SPEC = re.compile(r"([a-z0-9][a-z0-9-]*)(?::(\d+)(?:x(\d+))?)?")


def _load_presets() -> tuple[dict[str, Cluster], dict[str, str]]:
    """The node types of ``clusters.yaml`` (one node each) and the old names they keep working."""
    import yaml

    data = yaml.safe_load(PRESETS_FILE.read_text())
    nodes = {}
    for name, spec in data["nodes"].items():
        per_node = int(spec["devices_per_node"])
        nodes[name] = Cluster(
            name=name,
            device=spec["device"],
            devices=per_node,
            memory_bytes=parse_bytes(spec["memory_bytes"], f"{PRESETS_FILE}: {name}.memory_bytes"),
            devices_per_node=per_node,
            intra_bandwidth_Bps=float(spec["intra_bandwidth_Bps"]),
            intra_latency_s=float(spec["intra_latency_s"]),
            inter_bandwidth_Bps=float(spec["inter_bandwidth_Bps"]),
            inter_latency_s=float(spec["inter_latency_s"]),
            intra_collective_Bps=float(spec.get("intra_collective_Bps", 0.0)),
            inter_collective_Bps=float(spec.get("inter_collective_Bps", 0.0)),
            # a GPU's AdamW step, memory-bound on its datasheet bandwidth (profiles/devices.py)
            optimizer_s_per_param=DEVICE_SPECS[spec["device"]].optimizer_s_per_param
            if spec["device"] in DEVICE_SPECS
            else 0.0,
        )
    return nodes, dict(data.get("aliases") or {})


_NODES, _ALIASES = _load_presets()


def preset_cluster(spec: str) -> Cluster | None:
    """``NODE`` (one node), ``NODE:N`` (N nodes) or ``NODE:NxG`` (N nodes, G devices used on each),
    NODE a node type of ``clusters.yaml``; an old preset name; None when ``spec`` names no preset."""
    alias = spec if spec in _ALIASES else None
    spec = _ALIASES.get(spec, spec)
    m = _PRESET_SPEC.fullmatch(spec)
    if not m or m.group(1) not in _NODES:
        return None
    node = _NODES[m.group(1)]
    nodes = int(m.group(2) or 1)
    per_node = int(m.group(3) or node.devices_per_node)
    if nodes < 1 or not 1 <= per_node <= node.devices_per_node:
        raise UserError(
            f"--cluster {spec}: write {m.group(1)}:NODES or {m.group(1)}:NODESxGPUS with NODES >= 1 and "
            f"1 <= GPUS <= {node.devices_per_node}"
        )
    name = alias or (spec if spec == m.group(1) or m.group(3) else f"{m.group(1)}:{nodes}x{per_node}")
    return replace(node, name=name, devices=nodes * per_node, devices_per_node=per_node)


#: Common machines: each node type (one node) and the older names (``h100x64``: 8 H100 nodes).
PRESET_CLUSTERS: dict[str, Cluster] = {name: preset_cluster(name) for name in [*_NODES, *_ALIASES]}


def cluster_for_device(kind: str, name: str = "") -> Cluster:
    """The cluster a profile implies when none is given: one node of its device's type (an ``h100``
    profile: a node of 8 H100s), ``cpu-local`` for a CPU profile. ``kind``: the profile's device kind
    (a device-spec name for analytic profiles, ``cuda``/``cpu`` for measured ones); ``name``: its
    device name (``NVIDIA H100 80GB HBM3``), matched against the node types for a measured GPU."""
    kind = kind.lower()
    if kind == "cpu":
        return PRESET_CLUSTERS["cpu-local"]
    if kind in _NODES:
        return PRESET_CLUSTERS[kind]
    words = set(re.split(r"[^a-z0-9]+", name.lower()))
    node = next((n for n, c in _NODES.items() if c.device != "cpu" and c.device in words), None)
    if node is None:
        raise UserError(
            f"the profile's device {name or kind!r} matches no cluster preset ({', '.join(_NODES)}): give "
            f"--cluster (a preset, a file from pipeplan calibrate, or a YAML file of its fields)"
        )
    return PRESET_CLUSTERS[node]


def load_cluster(spec: str | Path) -> Cluster:
    """A preset (``h100``, ``h100:8``, ``h100:8x8``, ``h100x64``, ...; see ``clusters.yaml``), a
    cluster JSON file (as written by ``pipeplan calibrate``) or a YAML file (``.yaml``/``.yml``)
    with the same fields."""
    preset = preset_cluster(str(spec))
    if preset is not None:
        return preset
    path = Path(spec)
    if not path.exists() and not path.is_symlink():
        raise UserError(
            f"--cluster {spec}: no such file or preset (presets: {', '.join(PRESET_CLUSTERS)}; "
            f"or NODE:NODES[xGPUS] with NODE one of {', '.join(_NODES)})"
        )
    if path.suffix.lower() in (".yaml", ".yml"):
        return Cluster.from_fields(_read_yaml(path))
    return Cluster.from_fields(read_json(path, KIND, MAJOR))


def _read_yaml(path: Path) -> Fields:
    """A hand-written cluster spec: the JSON file's fields as a YAML mapping, validated the same
    way (``schema`` may be left out). ``memory_bytes`` may be a size (``80GiB``); numbers YAML
    reads as text (``450e9``) are taken as numbers."""
    f = read_yaml(path, KIND, MAJOR)
    numeric = {x.name for x in fields(Cluster) if x.type == "float"}
    for key, value in f.data.items():
        if key == "memory_bytes" and isinstance(value, str):
            f.data[key] = parse_bytes(value, f"{path}: field memory_bytes")
        elif key in numeric and isinstance(value, str):
            try:
                f.data[key] = float(value)
            except ValueError:
                raise f.fail(key, f"expected a number, got {value!r}") from None
    return f


def _old_recompute(raw: Any) -> Any:
    """plan/1 and older jobs stored a boolean: allow recompute (all three modes) or not."""
    if isinstance(raw, bool):
        return list(RECOMPUTE_CHOICES) if raw else ["none"]
    return raw


RECOMPUTE_CHOICES = ("none", "selective", "full")  #: Recompute's values, as a job names them
DP_MODE_CHOICES = tuple(m.value for m in DPMode)  #: ddp, zero1, zero2, fsdp
GRAD_DTYPE_CHOICES = ("fp32", "stage")  #: ``Job.grad_dtype``: fp32, or the stage's own dtype
ALL_SCHEDULES = (*SCHEDULES, CUSTOM.name)  #: ``--schedules``' default: every schedule and Custom
MAX_VIRTUAL_FLAG = 64  #: the most stages per rank ``--virtual`` may allow


@dataclass(frozen=True, kw_only=True)
class Job:
    """What the user wants trained (or served). Each field is declared once (``planner.config``):
    its doc, default and rule, and its ``pipeplan plan`` flag and dashboard label where those
    mirror it; the JSON reader, the flags and the rules are made from these declarations."""

    global_batch: int = setting(
        8,
        "samples per optimizer step, across all data-parallel replicas",
        "int",
        lo=1,
        hi=MAX_GLOBAL_BATCH,
        flag=Flag(name="--global-batch", default=8, help="samples per optimizer step (default 8)"),
        label="global batch",
    )
    microbatch_size: int | None = setting(
        None,
        "samples per microbatch (None: the planner chooses among the profiled sizes)",
        "int",
        lo=1,
        hi=MAX_GLOBAL_BATCH,
        flag=Flag(name="--microbatch-size", help="samples per microbatch (default: planner chooses)"),
        label="microbatch size",
    )
    microbatches: tuple[int, ...] = setting(
        (),
        "allowed microbatch counts per replica (empty: planner chooses)",
        "ints",
        lo=1,
        hi=MAX_MICROBATCHES,
        why=" (microbatches per replica)",
        flag=Flag(name="--microbatches", default=(), help="allowed microbatch counts (default: any)"),
    )
    schedules: tuple[str, ...] = setting(
        ("1F1B",),
        "schedules the planner may choose from (Custom: its own unequal placements, slower to search)",
        "strs",
        nonempty=True,
        flag=Flag(
            name="--schedules",
            default=ALL_SCHEDULES,
            help="comma list of allowed schedules (default: all seven and Custom)",
        ),
        label="schedules",
    )
    pp: tuple[int, ...] = setting(
        (),
        "allowed pipeline degrees (empty: any that fits)",
        "ints",
        lo=1,
        hi=MAX_DEVICES,
        flag=Flag(name="--pp", default=(), help="allowed pipeline degrees, comma list (default: any)"),
        label="pipeline degrees",
    )
    dtypes: tuple[str, ...] = setting(
        ("fp32",),
        "precisions the planner may choose per stage: with several, the MILP chooses one per stage",
        "strs",
        choices=DTYPES,
        flag=Flag(
            name="--dtype",
            help="precision, or a comma list the MILP chooses from per stage (fp32, bf16, fp16; "
            "default: every dtype the profile has)",
        ),
        label="dtypes",
    )
    recompute: tuple[str, ...] = setting(
        ("none",),
        "activation recompute modes the planner may choose per stage: none, selective (the attention "
        "core only, as Megatron), full (every unit); a stored true reads as all three, false as none",
        "strs",
        choices=RECOMPUTE_CHOICES,
        nonempty=True,
        legacy=_old_recompute,
        flag=Flag(
            name="--recompute",
            nargs="?",
            const=RECOMPUTE_CHOICES,
            help="recompute modes the MILP chooses from per stage: comma list of none, selective, full "
            "(a bare --recompute: all three; default: every mode valid for the model)",
        ),
        label="recompute",
    )
    tp: tuple[int, ...] = setting(
        (1,),
        "allowed tensor-parallel degrees (empty: every valid one, a divisor of the devices per node "
        "and of the model's attention and key/value heads)",
        "ints",
        lo=1,
        hi=MAX_DEVICES,
        flag=Flag(
            name="--tp",
            default=(),
            help="allowed tensor-parallel degrees, comma list (default: every divisor of the devices per "
            "node that divides the attention and key/value heads)",
        ),
        label="tensor-parallel degrees",
    )
    dp_modes: tuple[str, ...] = setting(
        ("ddp",),
        "allowed data-parallel modes: ddp (replicas), zero1 / zero2 (optimizer state, and gradients, "
        "sharded), fsdp (parameters too)",
        "strs",
        choices=DP_MODE_CHOICES,
        nonempty=True,
        flag=Flag(
            name="--dp-mode",
            default=DP_MODE_CHOICES,
            help="allowed data-parallel modes, comma list of ddp, zero1, zero2, fsdp (default: all)",
        ),
        label="data-parallel modes",
    )
    sequence_parallel: str = setting(
        "auto",
        "on | off | auto (auto: on wherever tp > 1, as Megatron runs it)",
        "str",
        choices=("on", "off", "auto"),
        flag=Flag(
            name="--sequence-parallel",
            default="auto",
            choices=("on", "off", "auto"),
            help="Megatron sequence parallelism beside tp > 1 (auto: on, as Megatron runs it)",
        ),
    )
    grad_dtype: str = setting(
        "fp32",
        "dtype of 16-bit stages' accumulated gradients and of their data-parallel reduction: fp32 (what "
        "Megatron-LM does for bf16, torchtitan's FSDP2 reduce dtype, torch autocast's fp32 weights) or stage "
        "(the stage's own dtype, Megatron-LM's --grad-reduce-in-bf16)",
        "str",
        choices=GRAD_DTYPE_CHOICES,
        flag=Flag(
            name="--grad-dtype",
            default="fp32",
            choices=GRAD_DTYPE_CHOICES,
            help="16-bit stages' gradients accumulated and reduced in fp32 (default, as Megatron-LM, torchtitan "
            "and autocast run them) or in the stage's dtype",
        ),
        label="gradient dtype",
    )
    optimizer_bytes_per_param: float = setting(
        8.0,
        "optimizer state per parameter (AdamW: two fp32 moments)",
        "num",
        lo=0.0,
        flag=Flag(
            name="--optimizer-bytes",
            default=8.0,
            bounds=(0.0, 1024.0),
            bounds_why=" bytes per parameter",
            help="optimizer state bytes per parameter (default 8: AdamW's two fp32 moments)",
        ),
    )
    forward_only: bool = setting(
        False,
        "inference: forward actions only, objective latency/throughput",
        "bool",
        flag=Flag(name="--forward-only", default=False, help="inference: forwards only, weights only"),
    )
    virtual: tuple[int, ...] = setting(
        (),
        "allowed stages per rank for schedules that take several (empty: 1..4)",
        "ints",
        lo=1,
        hi=MAX_DEVICES,
        flag=Flag(
            name="--virtual",
            default=(),
            bounds=(1, MAX_VIRTUAL_FLAG),
            help="allowed stages per rank for schedules that take several (default 1..4)",
        ),
    )
    seq_len: int | None = setting(None, "sequence length; must match the profile's when given", "int", lo=1)
    objective: str = setting(
        "step",
        '"step": training step time; "latency"/"throughput": forward-only serving',
        "str",
        choices=("step", "latency", "throughput"),
        flag=Flag(
            name="--objective",
            choices=("step", "throughput", "latency"),
            help="what to minimize: step (training step time; the default), throughput (samples/s, "
            "the default with --forward-only) or latency (one microbatch through the pipeline); "
            "throughput and latency need --forward-only",
        ),
    )
    placements: tuple[tuple[int, ...], ...] = setting(
        (),
        "stage -> rank maps the search tries as Custom candidates (``--placement``); empty: with Custom "
        "in ``schedules``, its own family (p ranks, p + 1 stages, the last back on rank 0)",
        "int_lists",
    )

    def layout(self, *, tp: int, dp: int, dp_mode: DPMode, sequence_parallel: bool) -> Layout:
        """A layout this job plans: the given degrees and modes, with the job's gradient dtype."""
        return Layout(
            tp=tp, dp=dp, dp_mode=dp_mode, sequence_parallel=sequence_parallel, grads_fp32=self.grad_dtype == "fp32"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @staticmethod
    def from_dict(d: Any, where: str = "job", prefix: str = "") -> Job:
        """A Job from its JSON fields, each of its declared kind, unknown keys refused, then checked
        (a one-line error naming the field)."""
        job = read_config(Job, d, where, prefix)
        job.check(f"{where}: {prefix}" if prefix else where)
        return job

    def check(self, where: str | None = "job") -> None:
        """Raise a one-line ContractError at the first value its declaration does not allow, or that
        breaks a rule between fields. ``where``: the file (errors name the field), None for flags
        (errors name the flag)."""

        def bad(name: str, value: Any, why: str) -> ContractError:
            if where is None and name in _FLAGS:
                return ContractError(f"{_FLAGS[name]} {shown(value, as_flag=True)}: {why}")
            return ContractError(f"{where or 'flags'}: field {name}: is {shown(value)}: {why}")

        for name, value, why in config_problems(self):
            raise bad(name, value, why)
        for placement in self.placements:
            try:
                check_placement(list(placement))
            except (ScheduleError, TypeError) as e:
                raise ContractError(f"{where or 'flags'}: field placements: {e}") from None
        if self.objective != "step" and not self.forward_only:
            raise bad(
                "objective",
                self.objective,
                "ranks serving plans: make the job forward-only (forward_only true, --forward-only), or "
                "minimize the training step",
            )


#: a Job field's flag (``pipeplan plan``), for errors about values that came from flags
_FLAGS = {x.name: s.flag.name for x, s in settings_of(Job) if s.flag is not None}


def load_job(path: str | Path) -> Job:
    """A job JSON file: the Job fields, unknown keys refused."""
    where, text = read_text(path)
    data = parse_json(text, where)
    if not isinstance(data, dict):
        raise UserError(f"--job {path}: expected a JSON object of job fields")
    data.pop("schema", None)
    return Job.from_dict(data, str(where))
