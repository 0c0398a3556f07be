"""What a matrix product costs on a GPU, from its shape: tile and wave quantisation on the
device's streaming multiprocessors, times the share of the datasheet peak that a matmul can
reach at all, measured and published per device.

- **Waves.** NVIDIA, *Matrix Multiplication Background User's Guide* (DU-09799-001), §3.1 "Tile
  Quantization" and §3.2 "Wave Quantization": an ``m × n`` output is computed in
  ``tile_m × tile_n`` tiles, one tile per streaming multiprocessor (SM) at a time, so a GEMM runs
  ``⌈tiles / SMs⌉`` full waves and only the useful share of the tiles those waves could compute
  does work. The tile is the guide's 256×128 example; the SM counts are the datasheets'.
- **Achievable peak.** No GEMM reaches the datasheet peak. The matmul FLOP/s a device reaches at
  all, found by sweeping shapes with ``mamf-finder.py`` and published per accelerator in
  stas00/ml-engineering (``compute/accelerator/README.md`` and ``benchmarks/README.md``), comes in
  two kinds: the maximum *achievable* rate (MAMF), a burst at the boost clock, and the maximum
  *sustainable* rate (MSMF), measured after the chip has settled at its power cap, which its
  authors give as the rate that matches training, where every GPU of a node computes for minutes.
  A GEMM's efficiency is the device's sustainable share where one is published (else its burst
  share at the clock the device sustains at its power limit, where that clock is published)
  times its wave share relative to the wave share of the shape that figure was measured at,
  capped at that share: the published figure already holds that shape's own quantisation. The
  figures and their shapes are in ``GEMM_DEVICES``.
- **Small GEMMs fall off** through two terms and no third: the wave share (a GEMM of fewer tiles
  than SMs leaves SMs idle; a partial last wave wastes the rest of it) and the memory roofline
  that the caller applies (operands and result over the achievable bandwidth). Kernel launch
  latency and the prologue of short ``k`` loops are left out.

Assumptions: FP16 runs at BF16's rate (the same tensor-core peak); the H100 and the H200 are one
die under one power cap, so the H200's sustainable figure serves both; FP32 without TF32 has no published
sweep, so the 16-bit achievable share is applied to the FP32 peak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .devices import A100_SUSTAINED_CLOCK_SHARE, A100_SUSTAINED_CLOCK_SOURCE

__all__ = ["GemmDevice", "GEMM_DEVICES", "gemm_efficiency", "matmul_efficiency"]

_MAMF = "stas00/ml-engineering, compute/accelerator/README.md, maximum achievable matmul FLOP/s (mamf-finder.py)"
_MSMF = (
    "stas00/ml-engineering, compute/accelerator/benchmarks/README.md, maximum sustainable matmul FLOP/s "
    "(mamf-finder.py): H200 BF16, the slowest GPU of a node with all 8 computing"
)


@dataclass(frozen=True)
class GemmDevice:
    """What a GEMM's speed depends on besides its FLOPs: SMs, the output tile, and the achievable
    share of peak with the shape it was measured at."""

    sms: int  #: streaming multiprocessors, one output tile each at a time
    tile_m: int = 256  #: output tile rows (the guide's 256×128 example tile)
    tile_n: int = 128  #: output tile columns
    #: best measured matmul FLOP/s over the datasheet peak, sustained where published (1: not known)
    achievable: float = 1.0
    best_shape: tuple[int, int, int] | None = None  #: (m, n, k) where ``achievable`` was measured
    source: str = ""  #: where ``achievable`` comes from


#: SM counts from NVIDIA's datasheets/whitepapers: H100 SXM5 and H200 SXM 132, A100 SXM4 108.
#: H100/H200 (one die, one power cap): sustainable 745 TFLOP/s of 989.5, the slowest GPU of an 8-GPU
#: H200 node all computing (the node's median 755), 745 too at 1536x2816x6144 on one GPU; their
#: burst figure is 794.5 (H100 SXM, 2048x2048x13312). A100 SXM: no sustainable matmul figure is
#: published; its burst one, 271.2 TFLOP/s of 312 at 1024x10240x5120 (boost clock), is taken at
#: the clock the A100 sustains at its power limit (``A100_SUSTAINED_CLOCK_SHARE``).
_HOPPER = GemmDevice(132, achievable=745 / 989.5, best_shape=(1536, 2816, 6144), source=_MSMF)
GEMM_DEVICES: dict[str, GemmDevice] = {
    "h100": _HOPPER,
    "h200": _HOPPER,
    "a100": GemmDevice(
        108,
        achievable=271.2 / 312 * A100_SUSTAINED_CLOCK_SHARE,
        best_shape=(1024, 10240, 5120),
        source=f"{_MAMF}, at the sustained clock ({A100_SUSTAINED_CLOCK_SOURCE})",
    ),
}


def gemm_efficiency(m: int, n: int, device: GemmDevice | None, batch: int = 1) -> float:
    """Useful share of the tile waves an ``m × n`` output (``batch`` of them) occupies; 1 without a device."""
    if device is None:
        return 1.0
    tiles = batch * math.ceil(m / device.tile_m) * math.ceil(n / device.tile_n)
    waves = math.ceil(tiles / device.sms)
    return batch * m * n / (waves * device.sms * device.tile_m * device.tile_n)


def matmul_efficiency(m: int, n: int, device: GemmDevice | None, batch: int = 1) -> float:
    """Share of the datasheet peak an ``m × n`` output (``batch`` of them) runs at: the device's
    achievable share times the wave share relative to that of the shape it was measured at,
    capped at the achievable share; 1 without a device."""
    if device is None:
        return 1.0
    waves = gemm_efficiency(m, n, device, batch)
    if device.best_shape is not None:
        waves = min(1.0, waves / gemm_efficiency(device.best_shape[0], device.best_shape[1], device))
    return device.achievable * waves
