"""Collective communication costs in the α-β model, and the link a group of ranks uses.

A message of ``M`` bytes over one link costs ``α + M/β`` (latency ``α`` seconds, bandwidth ``β``
bytes/s per direction per rank). Over ``n`` ranks:

- ring all-reduce: ``2(n-1)(α + M/(nβ))`` — a reduce-scatter then an all-gather, each ``n-1``
  steps moving ``M/n`` (Thakur, Rabenseifner & Gropp, "Optimization of Collective Communication
  Operations in MPICH", IJHPCA 19(1), 2005, §4, the Rabenseifner/ring form);
- reduce-scatter and all-gather: ``(n-1)(α + M/(nβ))`` (same paper); ``M`` is always the size of
  the *whole* buffer (the all-gather's output, the reduce-scatter's input), ``M/n`` per rank;
- tree all-reduce: ``2⌈log2 n⌉·α + 2M/β`` — a pipelined double binary tree (Sanders, Speck &
  Träff, "Two-tree algorithms for full bandwidth broadcast, reduction and scan", Parallel
  Computing 35(12), 2009), which NCCL uses since 2.4: a reduce up and a broadcast down, each
  ``⌈log2 n⌉`` hops of latency, and each rank sends and receives ``M`` per phase because the two
  trees carry half the message each. The pipelining start-up terms are left out.

**As NCCL runs them, on a GPU fabric** (a :class:`Link` with ``collective_Bps``): a collective's
time is its bytes times its bus-bandwidth factor over the bus bandwidth NCCL achieves for that
message size (nccl-tests ``doc/PERFORMANCE.md``: all-reduce ``2(n-1)/n``, all-gather and
reduce-scatter ``(n-1)/n``, the buffer being the whole ``M``). The achievable bus bandwidth grows
with the message: the shape is a measured all-reduce of 8 A100s over NVLink (vTrain's
``trace/a100`` lookup: 19.8 GB/s at 1 MiB, 109 at 8 MiB, 164 at 32 MiB, 202 at 128 MiB, 229 at 1
GiB), interpolated in log size, linear in size below 1 MiB (latency-bound: the 1 MiB time) and
flat above 1 GiB, scaled so that its large-message end is the fabric's own ``collective_Bps``
(229 GB/s A100 NVLink, vTrain; about 370 GB/s H100 NVLink, nccl-tests issue #212). The
measured times hold NCCL's latencies, so no ``α`` is added. Assumptions: all-gather and
reduce-scatter reach all-reduce's bus bandwidth at the same size, and every fabric (InfiniBand
or RoCE across nodes too) has this curve's shape; ``algorithm`` is NCCL's own choice, already in
the measurement. A link without ``collective_Bps`` (CPU ranks, calibrated links) keeps the α-β
forms above, plus a fixed time per call (``Link.call_s``) and with the bandwidth its ring steps
reach (``Link.ring_Bps``), both measured by ``pipeplan calibrate`` with gloo's own all-reduce:
gloo spends a fixed time on each call whatever its size, and its ring steps move bytes slower
than one point-to-point send. gloo runs its reduce-scatter and all-gather apart from its
all-reduce, and slower per byte (over 2 CPU ranks an 80 MB reduce-scatter took about twice an
80 MB all-reduce's time, where a ring makes it half): their ring steps have their own measured
bandwidth (``Link.scatter_gather_Bps``).

**Groups that span nodes.** NCCL runs a collective as several rings (channels) at once, each
crossing the node boundary through its own NIC, so a group with ``k`` ranks on every node reaches
``k`` NICs' bandwidth, up to the node's NVLink bandwidth: the NCCL maintainers' expected figures
(NVIDIA/nccl issue #412: one HDR NIC per node gives about its own line rate across nodes; "you can
add more NICs and you should get more bandwidth, up to ... the NVLink intra-node bandwidth"; and
NVIDIA/nccl-tests issue #175, four 200 Gb/s NICs per node, 100 GB/s the all-reduce's theoretical
bus bandwidth across two nodes). A group holding a whole node (data parallelism without tensor
parallelism) thus runs at the node's network bandwidth, and a group of one GPU per node (the data
parallelism beside tp 8) at its own NIC's, every tp rank's group running beside the others on
its own NIC.

Assumptions: links are full duplex and do not contend with other traffic; a group that spans
nodes runs at ``k`` times the inter-node link's per-GPU share, ``k`` its fewest ranks on one node
(one in the α-β model, where the link has no collective bandwidth); collectives of size 1 cost
nothing.

Rank layout (as torchtitan's and Megatron's device meshes order it, tp innermost, pp outermost):
``rank = (pp_index * dp + dp_index) * tp + tp_index``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

__all__ = [
    "Link",
    "bus_bandwidth_share",
    "Algorithm",
    "GroupKind",
    "ring_all_reduce_s",
    "tree_all_reduce_s",
    "all_reduce_s",
    "reduce_scatter_s",
    "all_gather_s",
    "rank_of",
    "coords_of",
    "group_ranks",
    "group_link",
    "tp_block_comm_s",
]

Algorithm = Literal["ring", "tree", "best"]
GroupKind = Literal["tp", "dp", "pp"]


@dataclass(frozen=True)
class Link:
    """One direction of one rank's connection: ``latency_s`` per message, ``bandwidth_Bps`` bytes/s;
    ``collective_Bps``: the bus bandwidth NCCL's collectives reach on it for large messages (0: not
    a GPU fabric, collectives in the α-β model)."""

    latency_s: float
    bandwidth_Bps: float
    collective_Bps: float = 0.0
    #: α-β collectives (no ``collective_Bps``): the fixed time of one call, and the bandwidth of
    #: their ring steps (0: ``bandwidth_Bps``)
    call_s: float = 0.0
    ring_Bps: float = 0.0
    #: α-β reduce-scatters and all-gathers: the bandwidth of their ring steps where the library runs
    #: them apart from its all-reduce (gloo; 0: ``ring_Bps``'s)
    scatter_gather_Bps: float = 0.0

    def __post_init__(self) -> None:
        if (
            self.latency_s < 0
            or not self.bandwidth_Bps > 0
            or min(self.collective_Bps, self.call_s, self.ring_Bps, self.scatter_gather_Bps) < 0
        ):
            raise ValueError(f"a link needs latency >= 0, bandwidth > 0 and collective figures >= 0, got {self}")

    @property
    def step_Bps(self) -> float:
        """The bandwidth of one ring step of an α-β collective."""
        return self.ring_Bps or self.bandwidth_Bps


#: vTrain ``trace/a100``: all-reduce bus bandwidth of 8 A100 SXM over NVLink by message bytes
_BUSBW_BY_SIZE: tuple[tuple[float, float], ...] = (
    (2**20, 19.8e9),
    (8 * 2**20, 109e9),
    (32 * 2**20, 164e9),
    (128 * 2**20, 202e9),
    (2**30, 229e9),
)


def bus_bandwidth_share(nbytes: float) -> float:
    """Share of a fabric's large-message bus bandwidth a collective of ``nbytes`` reaches (the
    measured curve of the module docstring, 1 at 1 GiB and above)."""
    top = _BUSBW_BY_SIZE[-1][1]
    (s0, b0), (s_end, _) = _BUSBW_BY_SIZE[0], _BUSBW_BY_SIZE[-1]
    if nbytes >= s_end:
        return 1.0
    if nbytes <= s0:
        return b0 / top * nbytes / s0  # latency-bound: the 1 MiB message's time
    for (sa, ba), (sb, bb) in zip(_BUSBW_BY_SIZE, _BUSBW_BY_SIZE[1:]):
        if nbytes <= sb:
            x = math.log(nbytes / sa) / math.log(sb / sa)
            return (ba + x * (bb - ba)) / top
    return 1.0


def _nccl_s(factor: float, nbytes: float, link: Link) -> float:
    """NCCL's time: bytes times the bus-bandwidth factor over the bus bandwidth reached at that size."""
    if nbytes <= 0 or factor <= 0:
        return 0.0
    return factor * nbytes / (link.collective_Bps * bus_bandwidth_share(nbytes))


def _check(n: int, nbytes: float) -> None:
    if n < 1 or nbytes < 0:
        raise ValueError(f"a collective needs n >= 1 ranks and nbytes >= 0, got n={n}, nbytes={nbytes}")


def ring_all_reduce_s(n: int, nbytes: float, link: Link) -> float:
    """Ring all-reduce of ``nbytes`` over ``n`` ranks: ``2(n-1)(α + M/(nβ))`` (NCCL: factor ``2(n-1)/n``)."""
    _check(n, nbytes)
    return _ring(2, n, nbytes, link)


def tree_all_reduce_s(n: int, nbytes: float, link: Link) -> float:
    """Double-binary-tree all-reduce: ``2⌈log2 n⌉α + 2M/β`` (0 for one rank)."""
    _check(n, nbytes)
    if n == 1:
        return 0.0
    if link.collective_Bps:  # NCCL picks its algorithm; the measured bus bandwidth holds the choice
        return _nccl_s(2 * (n - 1) / n, nbytes, link)
    return link.call_s + 2 * math.ceil(math.log2(n)) * link.latency_s + 2 * nbytes / link.step_Bps


def all_reduce_s(n: int, nbytes: float, link: Link, algorithm: Algorithm = "ring") -> float:
    """All-reduce by ``algorithm``; ``best`` takes the cheaper of ring and tree (as NCCL's tuner
    picks per size: trees win on latency for small messages and many ranks)."""
    if algorithm == "ring":
        return ring_all_reduce_s(n, nbytes, link)
    if algorithm == "tree":
        return tree_all_reduce_s(n, nbytes, link)
    if algorithm == "best":
        return min(ring_all_reduce_s(n, nbytes, link), tree_all_reduce_s(n, nbytes, link))
    raise ValueError(f"unknown all-reduce algorithm {algorithm!r}: choose ring, tree or best")


def reduce_scatter_s(n: int, nbytes: float, link: Link) -> float:
    """Ring reduce-scatter of a ``nbytes`` buffer (each rank keeps ``nbytes/n``): ``(n-1)(α + M/(nβ))``."""
    _check(n, nbytes)
    return _ring(1, n, nbytes, link)


def all_gather_s(n: int, nbytes: float, link: Link) -> float:
    """Ring all-gather into a ``nbytes`` buffer (each rank brings ``nbytes/n``): ``(n-1)(α + M/(nβ))``."""
    _check(n, nbytes)
    return _ring(1, n, nbytes, link)


def _ring(passes: int, n: int, nbytes: float, link: Link) -> float:
    """``passes`` rounds of a ring over ``n`` ranks (2: an all-reduce; 1: a reduce-scatter or an
    all-gather): NCCL's time at bus-bandwidth factor ``passes(n-1)/n``, or in the α-β model one
    call plus ``passes(n-1)(α + M/(nβ))``."""
    if link.collective_Bps:
        return _nccl_s(passes * (n - 1) / n, nbytes, link)
    if n == 1:
        return 0.0
    step_Bps = (link.scatter_gather_Bps or link.step_Bps) if passes == 1 else link.step_Bps
    return link.call_s + passes * (n - 1) * (link.latency_s + nbytes / (n * step_Bps))


def rank_of(pp_index: int, dp_index: int, tp_index: int, *, dp: int, tp: int) -> int:
    """The global rank of mesh coordinates: ``(pp_index * dp + dp_index) * tp + tp_index``."""
    if not (0 <= dp_index < dp and 0 <= tp_index < tp and pp_index >= 0):
        raise ValueError(f"coordinates (pp {pp_index}, dp {dp_index}, tp {tp_index}) outside dp={dp}, tp={tp}")
    return (pp_index * dp + dp_index) * tp + tp_index


def coords_of(rank: int, *, dp: int, tp: int) -> tuple[int, int, int]:
    """``(pp_index, dp_index, tp_index)`` of a global rank (the inverse of :func:`rank_of`)."""
    if rank < 0:
        raise ValueError(f"rank {rank} is negative")
    rest, tp_index = divmod(rank, tp)
    pp_index, dp_index = divmod(rest, dp)
    return pp_index, dp_index, tp_index


def group_ranks(kind: GroupKind, rank: int, *, pp: int, dp: int, tp: int) -> list[int]:
    """The ranks of ``rank``'s ``tp``, ``dp`` or ``pp`` group, in index order."""
    if not 0 <= rank < pp * dp * tp:
        raise ValueError(f"rank {rank} outside a world of pp*dp*tp = {pp * dp * tp}")
    p, d, t = coords_of(rank, dp=dp, tp=tp)
    if kind == "tp":
        return [rank_of(p, d, i, dp=dp, tp=tp) for i in range(tp)]
    if kind == "dp":
        return [rank_of(p, i, t, dp=dp, tp=tp) for i in range(dp)]
    if kind == "pp":
        return [rank_of(i, d, t, dp=dp, tp=tp) for i in range(pp)]
    raise ValueError(f"unknown group kind {kind!r}: choose tp, dp or pp")


def group_link(ranks: list[int], devices_per_node: int, intra: Link, inter: Link) -> Link:
    """``intra`` when every rank of the group sits on one node (``rank // devices_per_node``), else
    ``inter`` (whose bandwidth is the per-GPU share of the node's network). On a GPU fabric
    (``inter.collective_Bps``) a group with ``k`` ranks on each node crosses the node boundary
    through ``k`` NICs, so its bus bandwidth is ``k`` times the per-GPU share, up to the node's own
    (``intra.collective_Bps``); ``k`` is the fewest the group has on any of its nodes (module
    docstring)."""
    if devices_per_node < 1:
        raise ValueError(f"devices_per_node must be >= 1, got {devices_per_node}")
    per_node: dict[int, int] = {}
    for r in ranks:
        per_node[r // devices_per_node] = per_node.get(r // devices_per_node, 0) + 1
    if len(per_node) <= 1:
        return intra
    k = min(per_node.values())
    if k == 1 or not inter.collective_Bps:
        return inter
    busbw = min(k * inter.collective_Bps, intra.collective_Bps or k * inter.collective_Bps)
    return replace(inter, collective_Bps=busbw)


def tp_block_comm_s(
    t: int, activation_bytes: float, link: Link, *, sequence_parallel: bool, algorithm: Algorithm = "ring"
) -> tuple[float, float]:
    """Megatron tensor-parallel communication of one transformer block: ``(forward_s, backward_s)``.

    ``activation_bytes``: one ``s·b·h`` activation in the compute dtype. Without sequence
    parallelism a block runs 2 all-reduces of it in the forward (after attention and after the
    MLP, Megatron's ``f̄``) and 2 in the backward (``f``); with sequence parallelism each becomes
    an all-gather (``g``) plus a reduce-scatter (``ḡ``) of the same bytes, 2 of each per pass
    (Korthikanti et al. 2022, §4.2.2: "the communication bandwidth used for tensor parallelism
    and tensor together with sequence parallelism are the same"). The extra all-gather that
    sequence parallelism adds in the backward is overlapped with the weight-gradient GEMM there
    and not counted. ``algorithm`` chooses the all-reduce's; all-gathers and reduce-scatters are rings."""
    if t < 1:
        raise ValueError(f"tensor-parallel degree must be >= 1, got {t}")
    if sequence_parallel:
        one = all_gather_s(t, activation_bytes, link) + reduce_scatter_s(t, activation_bytes, link)
        return 2 * one, 2 * one
    one = all_reduce_s(t, activation_bytes, link, algorithm)
    return 2 * one, 2 * one
