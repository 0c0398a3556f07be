"""Data-parallel state per rank and its communication, against values worked out by hand."""

import pytest

from simulator.collectives import Link
from simulator.sharding import (
    fsdp_gathered_bytes,
    optimizer_step_s,
    state_bytes_per_param,
)

IB = Link(10e-6, 50e9)
# one llama3-8b block: q and o 4096^2 each, k and v 4096*1024 each, gate/up/down 4096*14336 each, two norms
LLAMA3_8B_BLOCK = 2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096


def test_bf16_adamw_bytes_per_parameter():
    # ddp 16; zero1 4 + 12/d; zero2 2 + 14/d; fsdp 16/d
    for d in (1, 2, 8, 64):
        assert state_bytes_per_param("ddp", d, dtype_bytes=2).total == 16
        assert state_bytes_per_param("zero1", d, dtype_bytes=2).total == pytest.approx(4 + 12 / d)
        assert state_bytes_per_param("zero2", d, dtype_bytes=2).total == pytest.approx(2 + 14 / d)
        assert state_bytes_per_param("fsdp", d, dtype_bytes=2).total == pytest.approx(16 / d)
    z1 = state_bytes_per_param("zero1", 8, dtype_bytes=2)
    assert (z1.weights, z1.grads, z1.master, z1.optimizer) == (2, 2, 0.5, 1)


def test_fp32_and_other_optimizers():
    # fp32: no master copy; weights 4 + grads 4 + optimizer 8
    assert state_bytes_per_param("ddp", 4, dtype_bytes=4).total == 16
    assert state_bytes_per_param("zero1", 4, dtype_bytes=4).total == pytest.approx(8 + 8 / 4)
    assert state_bytes_per_param("zero2", 4, dtype_bytes=4).total == pytest.approx(4 + 12 / 4)
    assert state_bytes_per_param("fsdp", 4, dtype_bytes=4).total == pytest.approx(4)
    # SGD with momentum: 4 bytes of optimizer state
    assert state_bytes_per_param("zero1", 2, dtype_bytes=2, optimizer_bytes_per_param=4).total == pytest.approx(4 + 4)
    with pytest.raises(ValueError):
        state_bytes_per_param("zero3", 2, dtype_bytes=2)


def test_memory_per_rank_of_a_stage_by_hand():
    # a stage of 4 llama3-8b blocks (872,448,000 parameters), bf16, d = 8
    n = 4 * LLAMA3_8B_BLOCK
    assert n == 872_448_000
    assert n * state_bytes_per_param("ddp", 8, dtype_bytes=2).total == 13_959_168_000
    assert n * state_bytes_per_param("zero1", 8, dtype_bytes=2).total == pytest.approx(4_798_464_000)
    fsdp_static = n * state_bytes_per_param("fsdp", 8, dtype_bytes=2).total
    assert fsdp_static == pytest.approx(1_744_896_000)
    # per-block FSDP: gathered weights of the current and the prefetched block, and one unsharded gradient
    gathered = fsdp_gathered_bytes([LLAMA3_8B_BLOCK] * 4, dtype_bytes=2)
    assert gathered == 6 * LLAMA3_8B_BLOCK
    assert fsdp_static + gathered == pytest.approx(1_744_896_000 + 1_308_672_000)
    # torchtitan under pipelining: the whole stage unsharded for the step, gradients accumulated in fp32
    kept = fsdp_gathered_bytes([LLAMA3_8B_BLOCK] * 4, dtype_bytes=2, grad_bytes=4, reshard_after_forward=False)
    assert kept == n * 6
    assert fsdp_gathered_bytes([], dtype_bytes=2) == 0


def test_optimizer_step_is_sharded():
    assert optimizer_step_s("ddp", 10**9, 8, 1e-12) == pytest.approx(1e-3)
    for mode in ("zero1", "zero2", "fsdp"):
        assert optimizer_step_s(mode, 10**9, 8, 1e-12) == pytest.approx(1.25e-4)
