"""The suite's tests do not depend on their order (tests/conftest.py: ``--order``, and the guard
that fails a test leaving process-wide state behind).

The case that broke ``make test`` with transformers 5: a tensor-parallel block's collectives were
counted with torch's ``CommDebugMode``, whose module tracker left a forward hook on Llama's
``apply_rotary_pos_emb`` (a process-wide module in transformers 5), so every Llama-family model
built later in the process failed its probe ("its units do not run on their own").
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, _process_state


def _pytest(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )


def test_llama_builds_after_the_tensor_parallel_collective_count():
    """The collective count, then Llama-family builds, in one process (the order that failed)."""
    done = _pytest(
        "tests/test_executor_tp.py::test_block_collectives_are_the_cost_models",
        "tests/test_profiles_zoo.py::test_units_in_order_match_hugging_face",
        "tests/test_profiles_zoo.py::test_overrides_change_the_config_and_are_stored",
    )
    assert done.returncode == 0, done.stdout[-3000:]


def test_a_hook_left_on_a_shared_module_is_reported():
    """What the guard compares: a hook on a module-level module every Llama calls shows, and its
    removal restores the state."""
    from profiles.zoo import build_model

    build_model("llama-tiny", device="meta")  # imports the Llama modeling code
    from transformers.models.llama import modeling_llama

    shared = modeling_llama.apply_rotary_pos_emb
    if not isinstance(shared, torch.nn.Module):
        pytest.skip("this transformers has apply_rotary_pos_emb as a plain function")
    key = "hooks on transformers.models.llama.modeling_llama.apply_rotary_pos_emb"
    before = _process_state()
    handle = shared.register_forward_hook(lambda *_: None)
    try:
        assert _process_state()[key] == before.get(key, 0) + 1
    finally:
        handle.remove()
    assert _process_state() == before


def _collected(*args: str) -> list[str]:
    done = _pytest("--collect-only", *args, "tests/test_sim_formulas.py", "tests/test_planner_solver.py")
    assert done.returncode == 0, done.stdout[-3000:]
    return [line for line in done.stdout.splitlines() if "::" in line]


def test_order_option_reverses_and_replays_a_shuffle():
    as_written = _collected()
    assert len(as_written) > 10
    assert _collected("--order", "reverse") == as_written[::-1]
    shuffled = _collected("--order", "random", "--order-seed", "7")
    assert sorted(shuffled) == sorted(as_written) and shuffled != as_written
    assert _collected("--order", "random", "--order-seed", "7") == shuffled
