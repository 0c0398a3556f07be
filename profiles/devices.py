"""Device specs for analytic profiles and GPU cluster presets: datasheet peaks, memory, and the
achievable shares of them that public measurements give (no torch import: the planner's cluster
presets read these too).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DeviceSpec",
    "DEVICE_SPECS",
    "HBM_EFFICIENCY",
    "OPTIMIZER_BYTES_PER_PARAM",
    "A100_SUSTAINED_CLOCK_SHARE",
    "A100_SUSTAINED_CLOCK_SOURCE",
    "SCORES_MEMORY_EFFICIENCY",
    "standard_attention_bytes",
]

#: achievable share of the HBM bandwidth: a read kernel measured at 1.80 of the A100 80GB's 2.04
#: TB/s (88%), about 90% the most any kernel reached in the GTC talk cited there (NVIDIA developer
#: forum, "Trouble to Reach Peak Bandwidth of A100", 2025)
HBM_EFFICIENCY = 0.88
_HBM_SOURCE = "NVIDIA developer forum 'Trouble to Reach Peak Bandwidth of A100': 88% of the datasheet measured"
#: bytes a mixed-precision AdamW step moves per parameter: the fused kernel reads the fp32 weight,
#: gradient and two moments (16) and writes the weight and moments (12) (torch's and apex's fused
#: Adam: one pass over the four tensors), then the 16-bit copy of the weight is made (4 read, 2
#: written); gradient clipping and zeroing are left out
OPTIMIZER_BYTES_PER_PARAM = 34
#: fused attention's share of the 16-bit peak: FlashAttention-2 reaches 50-73% on A100 (Dao,
#: arXiv:2307.08691, abstract; the range's midpoint is taken) and about 35% on H100 (Shah et al.,
#: FlashAttention-3, arXiv:2407.08608, §1); FlashAttention-3's 75% on H100 needs its own kernels
FA2_A100, FA2_H100 = (0.50 + 0.73) / 2, 0.35


def standard_attention_bytes(batch: int, heads: int, seq: int, head_dim: int, elem: int = 2) -> int:
    """Bytes the unfused (math) attention forward moves, as ``profiles.ops`` counts them: ``QKᵀ``
    reads Q and K and writes the ``s × s`` scores, the softmax reads them and writes the
    probabilities, ``PV`` reads those and V and writes the output."""
    scores = batch * heads * seq * seq * elem
    qkvo = 4 * batch * heads * seq * head_dim * elem
    return 4 * scores + qkvo


#: the share of the HBM bandwidth the unfused (math) attention path's ``s × s`` kernels reach: the
#: forward of standard attention (one GEMM writing the scores, a softmax kernel, one GEMM reading
#: the probabilities) measured at 119 TFLOP/s on an H100 SXM5 at sequence 2k, head dim 128, no
#: causal mask, batch × sequence 16k, hidden 2048 (Shah et al., FlashAttention-3, arXiv:2407.08608,
#: §4.1, Figure 5, "Standard attention"): its FLOPs (``4·b·s²·a·d``) at that rate take 2.31 ms, in
#: which it moves ``standard_attention_bytes`` (4.56 GB), 59% of the 3.35 TB/s datasheet bandwidth,
#: where a plain streaming kernel reaches ``HBM_EFFICIENCY``. Every ``s × s`` kernel of the math
#: path (the products reading or writing the scores, the softmax, attention dropout, forward and
#: backward) is taken at this share, on every device (no A100 figure is published)
_H100_BANDWIDTH = 3.35e12  #: bytes/s, the H100 SXM5 datasheet's HBM3 bandwidth
_B, _A, _S, _D = 8, 16, 2048, 128  #: the benchmark's batch, heads, sequence and head dim
_STD_ATTENTION_S = 4 * _B * _S**2 * _A * _D / 119e12  #: its forward FLOPs at the measured rate
SCORES_MEMORY_EFFICIENCY = standard_attention_bytes(_B, _A, _S, _D) / _STD_ATTENTION_S / _H100_BANDWIDTH
_SCORES_SOURCE = "FlashAttention-3 (arXiv:2407.08608) Figure 5: standard attention, H100, 2k, head dim 128"

#: the A100's clock under sustained tensor-core load over its boost clock: NVIDIA takes the A100's
#: HPL peak at the clock it sustains at its power limit, 1305 MHz, not its 1410 MHz boost. Burst
#: measurements (the matmul sweep, FlashAttention-2's) ran at the boost clock; a node training for
#: minutes runs at the sustained one, so the A100's burst shares are taken at this ratio
A100_SUSTAINED_CLOCK_SHARE = 1305 / 1410
A100_SUSTAINED_CLOCK_SOURCE = (
    "G. Lockwood, 'Peak FLOPS' (glennklockwood.com/garden/peak-FLOPS): NVIDIA's HPL Rpeak takes the A100 at the "
    "1305 MHz it sustains at its power limit, against its 1410 MHz boost"
)


@dataclass(frozen=True)
class DeviceSpec:
    """Peak dense FLOP/s per dtype, memory bandwidth (bytes/s) and memory size of one device,
    with the achievable shares of them (1.0 for a device measured here)."""

    name: str
    flops: dict[str, float]
    bandwidth: float
    memory_bytes: int
    source: str
    memory_efficiency: float = 1.0  #: achievable share of ``bandwidth``
    #: a fused attention kernel's share of the 16-bit peak (flash and efficient alike: no figure is
    #: published for the memory-efficient kernel, FlashAttention-2's is taken)
    attention_efficiency: float = 1.0
    efficiency_source: str = ""
    #: the share of ``bandwidth`` the unfused attention's ``s × s`` kernels reach (None:
    #: ``memory_efficiency``, as for a device measured here)
    scores_memory_efficiency: float | None = None

    @property
    def scores_bandwidth(self) -> float:
        """Bytes/s the unfused attention's ``s × s`` kernels move."""
        share = self.memory_efficiency if self.scores_memory_efficiency is None else self.scores_memory_efficiency
        return self.bandwidth * share

    @property
    def optimizer_s_per_param(self) -> float:
        """A mixed-precision AdamW step per parameter, memory-bound: ``OPTIMIZER_BYTES_PER_PARAM``
        over the achievable bandwidth."""
        return OPTIMIZER_BYTES_PER_PARAM / (self.bandwidth * self.memory_efficiency)


DEVICE_SPECS: dict[str, DeviceSpec] = {
    "h100": DeviceSpec(
        "NVIDIA H100 SXM5 80GB",
        {"fp32": 66.9e12, "bf16": 989.4e12, "fp16": 989.4e12},
        _H100_BANDWIDTH,
        80 * 2**30,
        "NVIDIA H100 Tensor Core GPU datasheet (dense, no sparsity)",
        HBM_EFFICIENCY,
        FA2_H100,
        f"{_HBM_SOURCE}; FlashAttention-2 on H100: FlashAttention-3 paper (arXiv:2407.08608); {_SCORES_SOURCE}",
        SCORES_MEMORY_EFFICIENCY,
    ),
    "h200": DeviceSpec(
        "NVIDIA H200 SXM 141GB",
        {"fp32": 66.9e12, "bf16": 989.4e12, "fp16": 989.4e12},
        4.8e12,
        141 * 10**9,
        "NVIDIA H200 Tensor Core GPU datasheet (dense, no sparsity)",
        HBM_EFFICIENCY,
        FA2_H100,
        f"{_HBM_SOURCE}; FlashAttention-2 on H100 (same SMs): FlashAttention-3 paper (arXiv:2407.08608); "
        f"{_SCORES_SOURCE}",
        SCORES_MEMORY_EFFICIENCY,
    ),
    "a100": DeviceSpec(
        "NVIDIA A100 SXM4 80GB",
        {"fp32": 19.5e12, "bf16": 312e12, "fp16": 312e12},
        2.039e12,
        80 * 2**30,
        "NVIDIA A100 Tensor Core GPU datasheet (dense, no sparsity)",
        HBM_EFFICIENCY,
        FA2_A100 * A100_SUSTAINED_CLOCK_SHARE,
        f"{_HBM_SOURCE}; FlashAttention-2 on A100: FlashAttention-2 paper (arXiv:2307.08691), at the sustained "
        f"clock ({A100_SUSTAINED_CLOCK_SOURCE}); {_SCORES_SOURCE} (the H100's share)",
        SCORES_MEMORY_EFFICIENCY,
    ),
}
