"""What a matrix product costs on a GPU, from its shape: tile and wave quantisation on the
device's streaming multiprocessors, times the share of the datasheet peak that a matmul can
reach at all, measured and published per device.

- **Waves.** NVIDIA, *Matrix Multiplication Background User's Guide* (DU-09799-001), §3.1 "Tile
  Quantization" and §3.2 "Wave Quantization": an ``m × n`` output is computed in
  ``tile_m × tile_n`` tiles, one tile per streaming multiprocessor (SM) at a time, so a GEMM runs
  ``⌈tiles / SMs⌉`` full waves and only the useful share of the tiles those waves could compute
  does work. The tile is the guide's 256×128 example; the SM counts are the datasheets'.
- **Achievable peak.** No GEMM reaches the datasheet peak. The maximum achievable matmul FLOP/s
  ("MAMF"), found by sweeping shapes and published per accelerator in stas00/ml-engineering
  (``compute/accelerator/README.md``, measured with its ``mamf-finder.py``): A100 SXM 271.2
  TFLOP/s in BF16 (86.9% of 312) at 1024×10240×5120, H100 SXM 794.5 TFLOP/s (80.3% of 989.5) at
  2048×2048×13312. A GEMM's efficiency is that share times its wave share relative to the wave
  share of the shape the maximum was measured at, capped at the maximum: the published figure
  already holds that shape's own quantisation.
- **Small GEMMs fall off** through two terms and no third: the wave share (a GEMM of fewer tiles
  than SMs leaves SMs idle; a partial last wave wastes the rest of it) and the memory roofline
  that the caller applies (operands and result over the achievable bandwidth). Kernel launch
  latency and the prologue of short ``k`` loops are left out.

Assumptions: FP16 runs at BF16's rate (the same tensor-core peak); the H200 has the H100's SMs
and clocks, so the H100's achievable share is taken for it; FP32 without TF32 has no published
sweep, so the 16-bit achievable share is applied to the FP32 peak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["GemmDevice", "GEMM_DEVICES", "gemm_efficiency", "matmul_efficiency"]

_MAMF = "stas00/ml-engineering, compute/accelerator/README.md, maximum achievable matmul FLOP/s (mamf-finder.py)"


@dataclass(frozen=True)
class GemmDevice:
    """What a GEMM's speed depends on besides its FLOPs: SMs, the output tile, and the achievable
    share of peak with the shape it was measured at."""

    sms: int  #: streaming multiprocessors, one output tile each at a time
    tile_m: int = 256  #: output tile rows (the guide's 256×128 example tile)
    tile_n: int = 128  #: output tile columns
    achievable: float = 1.0  #: best measured matmul FLOP/s over the datasheet peak (1: not known)
    best_shape: tuple[int, int, int] | None = None  #: (m, n, k) where ``achievable`` was measured
    source: str = ""  #: where ``achievable`` comes from


#: SM counts from NVIDIA's datasheets/whitepapers: H100 SXM5 and H200 SXM 132, A100 SXM4 108.
GEMM_DEVICES: dict[str, GemmDevice] = {
    "h100": GemmDevice(132, achievable=794.5 / 989.5, best_shape=(2048, 2048, 13312), source=_MAMF),
    "h200": GemmDevice(132, achievable=794.5 / 989.5, best_shape=(2048, 2048, 13312), source=_MAMF + " (H100's)"),
    "a100": GemmDevice(108, achievable=271.2 / 312, best_shape=(1024, 10240, 5120), source=_MAMF),
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
