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
import types
from itertools import groupby

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


def test_a_hook_left_on_a_module_level_module_is_reported(monkeypatch):
    """What the guard compares: a hook on a module held by a module-level name (as Llama's
    ``apply_rotary_pos_emb`` is in transformers 5.25) shows, and its removal restores the state."""
    shared = types.ModuleType("pipeplan_test_shared_module")
    shared.apply = torch.nn.Identity()
    monkeypatch.setitem(sys.modules, shared.__name__, shared)
    key = f"hooks on {shared.__name__}.apply"
    before = _process_state()
    assert before[key] == 0
    handle = shared.apply.register_forward_hook(lambda *_: None)
    try:
        assert _process_state()[key] == 1
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
    modules = [i.partition("::")[0] for i in shuffled]
    assert len({m for m, _ in groupby(modules)}) == len(list(groupby(modules)))  # each module's tests together
    assert _collected("--order", "random", "--order-seed", "7") == shuffled
    replay = _pytest("--order", "random", "tests/test_sim_formulas.py").stdout  # -q: no header
    seed = replay.rpartition("--order-seed ")[2].split()[0]
    assert seed.isdigit() and "passed" in replay, replay[-2000:]
