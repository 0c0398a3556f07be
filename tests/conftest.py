"""Shared fixtures: one tiny measured profile and a 2-stage plan of it, made once per session.

Also two guards of test independence: ``--order reverse|random`` runs the tests in another order
(random: the modules shuffled, and the tests within each; ``--order-seed N`` replays one), and
every test fails in its teardown if it left process-wide state behind that a later test would
inherit (``_no_leaked_state``).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    group = parser.getgroup("pipeplan")
    group.addoption(
        "--order",
        choices=("file", "reverse", "random"),
        default="file",
        help="the order tests run in: as collected (default), reversed, or shuffled (modules, and tests within each)",
    )
    group.addoption("--order-seed", type=int, default=None, help="the seed of --order random (default: a new one)")


def pytest_configure(config):
    if config.getoption("order") == "random" and config.getoption("order_seed") is None:
        config.option.order_seed = random.SystemRandom().randrange(10**6)


def pytest_report_header(config):
    order = config.getoption("order")
    if order == "random":
        return f"test order: random, --order-seed {config.getoption('order_seed')} replays it"
    return f"test order: {order}"


def pytest_terminal_summary(terminalreporter, config):
    if config.getoption("order") != "file":  # the header is not shown under -q
        terminalreporter.write_line(pytest_report_header(config))


def pytest_collection_modifyitems(config, items):
    order = config.getoption("order")
    if order == "reverse":
        items.reverse()
    elif order == "random":  # modules in a random order, each one's tests shuffled: a module's
        # fixtures are still made once (shuffling across modules would remake them per test)
        rng = random.Random(config.getoption("order_seed"))
        modules: dict[str, list] = {}
        for item in items:
            modules.setdefault(item.nodeid.partition("::")[0], []).append(item)
        groups = list(modules.values())
        rng.shuffle(groups)
        for group in groups:
            rng.shuffle(group)
        items[:] = [item for group in groups for item in group]


# -- state a test must not leave behind --------------------------------------------------

_NN_GLOBAL_HOOKS = (
    "_global_forward_pre_hooks",
    "_global_forward_hooks",
    "_global_backward_pre_hooks",
    "_global_backward_hooks",
    "_global_buffer_registration_hooks",
    "_global_module_registration_hooks",
    "_global_parameter_registration_hooks",
)
_MODULE_HOOKS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")
_singletons: dict[str, list[tuple[str, object]]] = {}  # module name -> its module-level nn.Modules


def _module_level_modules() -> list[tuple[str, object]]:
    """Every ``nn.Module`` held by a module-level name of an imported module (transformers 5 makes
    functions such as Llama's ``apply_rotary_pos_emb`` process-wide modules): a hook added to one
    reaches every later model. Imported modules are scanned once each."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated module attributes warn when inspected
        for name, mod in list(sys.modules.items()):
            if name in _singletons:
                continue
            try:
                attrs = list(vars(mod).items())
            except TypeError:
                attrs = []
            _singletons[name] = [(f"{name}.{k}", v) for k, v in attrs if isinstance(v, torch.nn.Module)]
    return [pair for pairs in _singletons.values() for pair in pairs]


def _process_state() -> dict[str, object]:
    import torch
    import torch.distributed as dist
    from torch.nn.modules import module as nn_module

    state: dict[str, object] = {
        "torch.get_default_dtype()": torch.get_default_dtype(),
        "torch.get_default_device()": torch.get_default_device(),
        "torch.is_grad_enabled()": torch.is_grad_enabled(),
        "torch dispatch modes entered": torch._C._len_torch_dispatch_stack(),
        "torch function modes entered": torch._C._len_torch_function_stack(),
        "torch.distributed.is_initialized()": dist.is_available() and dist.is_initialized(),
    }
    for name in _NN_GLOBAL_HOOKS:
        state[f"torch.nn.modules.module.{name}"] = len(getattr(nn_module, name))
    for name, m in _module_level_modules():
        state[f"hooks on {name}"] = sum(len(getattr(m, h, ())) for h in _MODULE_HOOKS)
    return state


@pytest.fixture(autouse=True)
def _no_leaked_state():
    """Fails the test that leaves torch's process-wide state changed (hooks on every module or on a
    module-level one, a default dtype or device, a mode still entered, a process group), naming
    what changed; otherwise the tests after it fail instead, far from the cause."""
    before = _process_state()
    yield
    after = _process_state()
    changed = [f"{k}: {before.get(k, 0)} -> {v}" for k, v in after.items() if v != before.get(k, 0)]
    if changed:
        pytest.fail("the test left process-wide state behind: " + "; ".join(changed), pytrace=False)


def run_cli(*args: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python pipeplan.py ARGS`` as a user would; returns the completed process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, str(ROOT / "pipeplan.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd or ROOT,
    )


@pytest.fixture(scope="session")
def tiny_profile_path(tmp_path_factory) -> Path:
    from profiles import profile_model

    path = tmp_path_factory.mktemp("profile") / "profile.json"
    profile_model("gpt2-tiny", seq_len=16, microbatch_sizes=(1, 2), repeats=2, warmup=1).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_plan_path(tiny_profile_path, tmp_path_factory) -> Path:
    from planner import Cluster, Job, plan
    from profiles import load_profile

    profile = load_profile(tiny_profile_path)
    plans = plan(
        profile,
        Cluster(devices=2, memory_bytes=2**30),
        Job(global_batch=4, microbatch_size=1, schedules=("1F1B",), pp=(2,)),
        top=1,
        profile_path=tiny_profile_path,
    )
    path = tiny_profile_path.parent / "plan.json"
    plans[0].save(path)
    return path
