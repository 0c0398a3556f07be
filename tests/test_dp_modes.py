"""The data-parallel mode table: state per rank and communication against values worked out by
hand, and the rule that no product code compares a mode by name outside the table."""

import ast
from pathlib import Path

import pytest

from simulator.collectives import Link, all_gather_s, reduce_scatter_s, ring_all_reduce_s
from simulator.modes import DP_MODES, DPMode, gathered_bytes


def state_bytes_per_param(mode, d, **kw):
    return DPMode(mode).spec.state_bytes_per_param(d, **kw)


fsdp_gathered_bytes = gathered_bytes
ROOT = Path(__file__).resolve().parents[1]

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


def test_every_mode_has_a_row_and_what_it_sends():
    assert set(DP_MODES) == set(DPMode)
    link, d, n = IB, 8, 1e9
    ddp, z1, z2, fsdp = (DPMode(m).spec for m in ("ddp", "zero1", "zero2", "fsdp"))
    assert ddp.tail_s(d, n, link) == ring_all_reduce_s(d, n, link) and ddp.head_s(d, n, link) == 0
    # zero1: reduce-scatter the gradients once a step, all-gather the updated weights
    assert z1.tail_s(d, n, link) == reduce_scatter_s(d, n, link) + all_gather_s(d, n, link)
    # zero2: each microbatch's gradients reduce-scattered as the backward makes them, then the gather
    assert z2.each_microbatch_s(d, n, link) == reduce_scatter_s(d, n, link)
    assert z2.tail_s(d, n, link) == all_gather_s(d, n, link)
    assert z1.head_s(d, n, link) == z2.head_s(d, n, link) == 0
    assert [m.value for m in DPMode if m.spec.reduces_each_microbatch] == ["zero2"]
    assert fsdp.head_s(d, n, link) == all_gather_s(d, n, link)
    assert fsdp.tail_s(d, n, link) == reduce_scatter_s(d, n, link)
    # only a parameter-sharding mode reshards, and only without a pipeline
    assert [m.value for m in DPMode if m.spec.reshards(1)] == ["fsdp"]
    assert not any(m.spec.reshards(2) for m in DPMode)
    assert [m.value for m in DPMode if not m.spec.sharded] == ["ddp"]


def _product_files():
    for d in ("planner", "simulator", "executor", "dashboard", "profiles"):
        for p in sorted((ROOT / d).glob("*.py")):
            if p.name != "modes.py":
                yield p


def test_no_mode_is_compared_by_name_outside_the_table():
    names = {m.value for m in DPMode} | {m.name for m in DPMode}
    bad = []
    for path in _product_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            for side in [node.left, *node.comparators]:
                for leaf in ast.walk(side):
                    text = leaf.value if isinstance(leaf, ast.Constant) else getattr(leaf, "attr", None)
                    if text in names and not (isinstance(leaf, ast.Attribute) and leaf.attr.islower()):
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, f"dp modes compared by name outside simulator/modes.py: {bad}"


def test_gradients_in_fp32_double_what_a_bf16_reduction_moves_and_holds():
    """Gradients accumulated and reduced in fp32 (``Layout.grads_fp32``): the reductions move 4 bytes
    a parameter, the gathers still the weights' 2; the accumulated gradient is 4 bytes (Megatron's
    bf16 ddp: 2 + 4 + 4 + 8 = 18 a parameter)."""
    link, d, n = IB, 8, 1e9
    z1, fsdp = DPMode.ZERO1.spec, DPMode.FSDP.spec
    assert z1.tail_s(d, n, link, 2 * n) == reduce_scatter_s(d, 2 * n, link) + all_gather_s(d, n, link)
    assert z1.tail_s(d, n, link) == z1.tail_s(d, n, link, n)  # default: reduced in the weights' dtype
    assert fsdp.head_s(d, n, link) == all_gather_s(d, n, link)
    assert DPMode.ZERO2.spec.each_microbatch_s(d, 2 * n, link) == reduce_scatter_s(d, 2 * n, link)
    assert state_bytes_per_param("ddp", 4, dtype_bytes=2, grad_bytes=4).total == 18
    assert state_bytes_per_param("zero2", 4, dtype_bytes=2, grad_bytes=4).total == pytest.approx(2 + 16 / 4)
    assert state_bytes_per_param("fsdp", 4, dtype_bytes=2, grad_bytes=4).total == pytest.approx(18 / 4)


def test_a_mode_row_names_known_collectives_in_their_roles():
    from simulator.modes import DPModeSpec

    base = dict(doc="x", shards_optimizer=False, shards_grads=False, shards_params=False, trace_name="X")
    with pytest.raises(ValueError, match="unknown collectives"):
        DPModeSpec(**base, head=(), tail=("broadcast",))
    with pytest.raises(ValueError, match="each_microbatch reduces"):
        DPModeSpec(**base, head=(), tail=(), each_microbatch=("all_gather",))
    with pytest.raises(ValueError, match="head gathers"):
        DPModeSpec(**base, head=("reduce_scatter",), tail=())
    assert DPModeSpec(**base, head=(), tail=("all_reduce",)).tail_reduces
    assert not DPMode.ZERO2.spec.tail_reduces  # its step ends with the weights' gather
