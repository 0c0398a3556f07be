"""``python -m profiles``: bad input exits 2 with one line and writes nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _run(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "profiles", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.parametrize(
    "args,match",
    [
        (["no-such-model"], "unknown model"),
        ([], "give a MODEL"),
        (["missing/config.json"], "no such config file"),
        (["gpt2-tiny", "--set", "no_field=3"], "not a field"),
        (["gpt2-tiny", "--set", "n_layer"], "expected key=value"),
        (["no_such_pkg.mod:fn"], "cannot import"),
        (["gpt2-tiny", "--dtypes", "fp8"], "unknown dtype"),
        (["gpt2-tiny", "--analytic", "--device-spec", "tpu9"], "device-spec"),
        (["gpt2-tiny", "--side-by-side", "64"], "--side-by-side 64: this machine has"),
    ],
)
def test_bad_input_exit_2_one_line_nothing_written(tmp_path, args, match):
    r = _run(args, tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not list(tmp_path.rglob("*.json"))


def test_profile_user_model_and_json(tmp_path):
    (tmp_path / "tests").mkdir()
    r = _run(
        [
            "tests.user_model:build",
            "--set",
            "width=8",
            "--seq-len",
            "4",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--json",
            "-o",
            str(tmp_path / "u.json"),
        ],
        ROOT,
    )
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["model"] == {"name": "tests.user_model:build", "config": {"width": 8}, "tp_plan": {}}
    assert [u["name"] for u in d["entries"][0]["units"]] == ["unit0", "unit1", "unit2"]
    from profiles.types import load_profile
    from profiles.zoo import build_model

    p = load_profile(tmp_path / "u.json")
    assert len(build_model(p.model_name, config=p.model_config).units) == 3


def test_list_prints_presets_and_model_types(tmp_path):
    r = _run(["--list"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "mixtral-8x7b" in r.stdout and "8 experts, top-2" in r.stdout and "gemma2-9b" in r.stdout
    assert {"qwen3", "olmo2", "gpt_neox"} <= set(r.stdout.split())
    assert not list(tmp_path.rglob("*.json"))


def test_profile_a_config_json_of_a_type_no_preset_names(tmp_path):
    """A hand-written config.json (Qwen3: no preset, no code of ours) profiles, --set still applies."""
    cfg = {
        "model_type": "qwen3",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": 1000,
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    args = ["config.json", "--set", "num_hidden_layers=2", "--seq-len", "8", "--repeats", "1", "--warmup", "0"]
    r = _run([*args, "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert [u["name"] for u in d["entries"][0]["units"]] == ["embed", "block0", "block1", "head"]
    assert d["model"]["config"]["model_type"] == "qwen3" and d["model"]["config"]["num_hidden_layers"] == 2
    assert (tmp_path / "profiles" / "cpu" / "config.json").is_file()


def test_profile_table_and_default_path(tmp_path):
    r = _run(["gpt2-tiny", "--seq-len", "8", "--repeats", "1", "--warmup", "0", "--microbatch-sizes", "1,2"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "profiles" / "cpu" / "gpt2-tiny.json").is_file()
    assert "block1" in r.stdout and "microbatch 2" in r.stdout and "sum of units / whole model" in r.stdout


def _neighbours_alive() -> list[str]:
    alive = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmd.read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # a process that just ended
            continue
        if "profiles.neighbour" in text:
            alive.append(text)
    return alive


def test_side_by_side_profiles_beside_a_training_neighbour_and_stops_it(tmp_path):
    """--side-by-side 1: one process trains the model while the units are timed, and is gone after."""
    r = _run(
        [
            "tests.user_model:build",
            "--set",
            "width=8",
            "--seq-len",
            "4",
            "--repeats",
            "2",
            "--warmup",
            "0",
            "--side-by-side",
            "1",
            "-o",
            str(tmp_path / "u.json"),
        ],
        ROOT,
    )
    assert r.returncode == 0, r.stderr
    from profiles.types import load_profile

    assert load_profile(tmp_path / "u.json").measurement["side_by_side"] == 1
    assert not _neighbours_alive()


def test_cpu_profile_is_taken_beside_a_neighbour_by_default(tmp_path):
    """Without --side-by-side, a CPU profile on a host of 2+ cores is timed beside one training
    neighbour (a plan's CPU ranks share the host), and ``--side-by-side 0`` still times it alone."""
    from profiles.types import load_profile

    common = ["tests.user_model:build", "--set", "width=8", "--seq-len", "4", "--repeats", "1", "--warmup", "0"]
    assert _run([*common, "-o", str(tmp_path / "d.json")], ROOT).returncode == 0
    expect = 1 if (os.cpu_count() or 1) >= 2 else 0
    assert load_profile(tmp_path / "d.json").measurement["side_by_side"] == expect
    assert _run([*common, "--side-by-side", "0", "-o", str(tmp_path / "a.json")], ROOT).returncode == 0
    assert load_profile(tmp_path / "a.json").measurement["side_by_side"] == 0
    assert not _neighbours_alive()


def test_neighbours_train_inside_the_context_and_are_gone_after(monkeypatch):
    from profiles.neighbour import neighbours

    monkeypatch.chdir(ROOT)  # the neighbour imports the user model from here, as the profiler does
    with neighbours(1, "tests.user_model:build", {"width": 8}, 4, 1, "sdpa"):
        assert len(_neighbours_alive()) == 1
    assert not _neighbours_alive()
