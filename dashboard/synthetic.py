"""Synthetic Profiles for the dashboard's tests and screenshots: no model is measured.

A transformer-shaped model: an embedding (many parameters, little time), ``blocks``
equal blocks, a head (many parameters, much time). Costs scale linearly with the
microbatch size; bf16 halves time and bytes. Numbers are made up, shapes are not.
"""

from __future__ import annotations

from profiles.types import DTYPE_TABLE, Profile, ProfileEntry, UnitCost, UnitKind, WholeModel

__all__ = ["synthetic_profile"]


def synthetic_profile(
    blocks: int = 6,
    *,
    block_ms: float = 2.0,
    block_params: int = 2_000_000,
    embed_params: int = 8_000_000,
    head_ms: float = 4.0,
    saved_mib: float = 4.0,
    microbatch_sizes: tuple[int, ...] = (1, 2),
    dtypes: tuple[str, ...] = ("fp32", "bf16"),
    name: str = "synthetic",
) -> Profile:
    """A Profile with ``blocks + 2`` units for every (dtype, microbatch size)."""
    entries = []
    for dtype in dtypes:
        scale_t = 1.0 if DTYPE_TABLE[dtype].bytes == 4 else 0.5
        for mbs in microbatch_sizes:
            specs = [("embed", UnitKind.EMBEDDING.value, 0.1 * block_ms, embed_params, 0.0)]
            specs += [(f"block{i}", UnitKind.BLOCK.value, block_ms, block_params, saved_mib) for i in range(blocks)]
            specs += [("head", UnitKind.HEAD.value, head_ms, embed_params, 2 * saved_mib)]
            units = []
            for uname, kind, f_ms, params, saved in specs:
                f = f_ms * mbs * scale_t / 1e3
                units.append(
                    UnitCost(
                        name=uname,
                        kind=kind,
                        forward_s=f,
                        backward_s=2 * f,
                        backward_input_s=f,
                        backward_weight_s=f,
                        params=params,
                        param_bytes=params * DTYPE_TABLE[dtype].bytes,
                        saved_bytes=int(saved * 2**20 * mbs * DTYPE_TABLE[dtype].bytes / 4),
                        output_bytes=int(2**18 * mbs * DTYPE_TABLE[dtype].bytes / 4) if kind != UnitKind.HEAD else 0,
                        forward_flops=2.0 * params * 128 * mbs,
                    )
                )
            whole = WholeModel(
                sum(u.forward_s for u in units) * 1.05,
                sum(u.backward_s for u in units) * 0.97,
                sum(u.saved_bytes for u in units),
            )
            entries.append(ProfileEntry(dtype, mbs, tuple(units), whole))
    return Profile(
        model_name=name,
        model_config={"blocks": blocks},
        device_name="synthetic device",
        device_kind="cpu",
        seq_len=128,
        method="analytic",
        entries=tuple(entries),
        measurement={"assumptions": "synthetic numbers for tests and screenshots"},
    )
