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

Assumptions: links are full duplex and do not contend with other traffic; a group that spans
nodes runs at the inter-node link's per-GPU share on every step (the ring's slowest hop);
collectives of size 1 cost nothing.

Rank layout (as torchtitan's and Megatron's device meshes order it, tp innermost, pp outermost):
``rank = (pp_index * dp + dp_index) * tp + tp_index``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Link",
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
    """One direction of one rank's connection: ``latency_s`` per message, ``bandwidth_Bps`` bytes/s."""

    latency_s: float
    bandwidth_Bps: float

    def __post_init__(self) -> None:
        if self.latency_s < 0 or not self.bandwidth_Bps > 0:
            raise ValueError(f"a link needs latency >= 0 and bandwidth > 0, got {self}")


def _check(n: int, nbytes: float) -> None:
    if n < 1 or nbytes < 0:
        raise ValueError(f"a collective needs n >= 1 ranks and nbytes >= 0, got n={n}, nbytes={nbytes}")


def ring_all_reduce_s(n: int, nbytes: float, link: Link) -> float:
    """Ring all-reduce of ``nbytes`` over ``n`` ranks: ``2(n-1)(α + M/(nβ))``."""
    _check(n, nbytes)
    return 2 * (n - 1) * (link.latency_s + nbytes / (n * link.bandwidth_Bps))


def tree_all_reduce_s(n: int, nbytes: float, link: Link) -> float:
    """Double-binary-tree all-reduce: ``2⌈log2 n⌉α + 2M/β`` (0 for one rank)."""
    _check(n, nbytes)
    if n == 1:
        return 0.0
    return 2 * math.ceil(math.log2(n)) * link.latency_s + 2 * nbytes / link.bandwidth_Bps


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
    return (n - 1) * (link.latency_s + nbytes / (n * link.bandwidth_Bps))


def all_gather_s(n: int, nbytes: float, link: Link) -> float:
    """Ring all-gather into a ``nbytes`` buffer (each rank brings ``nbytes/n``): ``(n-1)(α + M/(nβ))``."""
    _check(n, nbytes)
    return (n - 1) * (link.latency_s + nbytes / (n * link.bandwidth_Bps))


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
    ``inter`` (whose bandwidth is the per-GPU share of the node's network)."""
    if devices_per_node < 1:
        raise ValueError(f"devices_per_node must be >= 1, got {devices_per_node}")
    return intra if len({r // devices_per_node for r in ranks}) <= 1 else inter


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
