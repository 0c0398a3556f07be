"""The jobs this tool exists for, through the command line: deep pipelines of a 70B model come
back balanced for every degree asked, a fixed published layout is always scored, and the same
command writes the same plan file byte for byte."""

from __future__ import annotations

import pytest
from conftest import run_cli

from planner.plan import load_plan


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    d = tmp_path_factory.mktemp("large")
    for args in (
        ("llama3-70b", "--analytic", "--device-spec", "h100", "--seq-len", "8192", "-o", "l70.json"),
        # GPT-3 175B (Brown et al. 2020 Table 2.1): 96 layers, h 12288, 96 heads, sequence 2048
        (
            "gpt2", "--analytic", "--device-spec", "a100", "--seq-len", "2048", "--set", "n_layer=96",
            "--set", "n_embd=12288", "--set", "n_head=96", "--set", "vocab_size=51200",
            "--set", "n_positions=2048", "-o", "g175.json",
        ),
    ):  # fmt: skip
        out = run_cli("profile", *args, cwd=d)
        assert out.returncode == 0, out.stderr
    return d


def _stage_times(plan) -> list[float]:
    costs = plan.cost_model().stage_costs(plan.bounds, [s.option for s in plan.stages])
    return [c.forward_s + c.backward_s for c in costs]


@pytest.mark.parametrize("pp", [2, 4, 8])
def test_deep_pipelines_of_70b_are_balanced(profiles, pp):
    out = run_cli(
        "plan", "l70.json", "--cluster", "h100:8x8", "--global-batch", "512", "--pp", str(pp),
        "--schedules", "1F1B", "-o", f"p{pp}.json", cwd=profiles,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    plan = load_plan(profiles / f"p{pp}.json")
    assert plan.pp == pp
    times = _stage_times(plan)
    # 80 equal blocks: no stage more than 1.5x the mean (the split used to come back as E|t|t|t*78,L)
    assert max(times) <= 1.5 * sum(times) / len(times)


def test_the_published_175b_layout_is_scored_and_the_same_command_writes_the_same_bytes(profiles):
    # Korthikanti et al. 2022 Table 5's 175B setting: tp 8, pp 8, 3 stages per rank, full recompute
    args = (
        "plan", "g175.json", "--cluster", "a100:8x8", "--global-batch", "64", "--tp", "8", "--pp", "8",
        "--virtual", "3", "--schedules", "Interleaved1F1B", "--recompute", "full",
    )  # fmt: skip
    first = run_cli(*args, "-o", "a.json", cwd=profiles)
    assert first.returncode == 0, first.stderr
    second = run_cli(*args, "-o", "b.json", cwd=profiles)
    assert second.returncode == 0, second.stderr
    assert (profiles / "a.json").read_bytes() == (profiles / "b.json").read_bytes()
    plan = load_plan(profiles / "a.json")
    assert (plan.pp, plan.tp, plan.virtual, plan.schedule) == (8, 8, 3, "Interleaved1F1B")
    assert {s.recompute.value for s in plan.stages} == {"full"}


def _split(profiles, *extra):
    out = run_cli(
        "plan", "l70.json", "--cluster", "h100:8x8", "--global-batch", "512", "--split", "even", "--pp", "4",
        *extra, "-o", "s.json", cwd=profiles,
    )  # fmt: skip
    return out, (load_plan(profiles / "s.json") if out.returncode == 0 else None)


def test_a_given_split_honours_every_per_stage_and_layout_choice(profiles):
    out, plan = _split(profiles, "--tp", "8", "--dp-mode", "fsdp", "--recompute", "full")
    assert out.returncode == 0, out.stderr
    assert {s.recompute.value for s in plan.stages} == {"full"}
    assert (plan.tp, plan.dp_mode.value, plan.sequence_parallel, plan.schedule) == (8, "fsdp", True, "1F1B")
    full_peak = max(plan.predicted.peak_bytes)
    out, plan = _split(profiles, "--tp", "8", "--dp-mode", "zero2", "--sequence-parallel", "off",
                       "--stage-options", "bf16:full,full,full,none")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert [s.recompute.value for s in plan.stages] == ["full", "full", "full", "none"]
    assert (plan.dp_mode.value, plan.sequence_parallel) == ("zero2", False)
    assert max(plan.predicted.peak_bytes) > full_peak  # the last stage holds its activations
    # every recompute mode allowed: each stage the fastest that fits
    out, plan = _split(profiles, "--tp", "8", "--dp-mode", "fsdp")
    assert out.returncode == 0, out.stderr
    assert max(plan.predicted.peak_bytes) <= plan.cluster.memory_bytes


def test_a_given_split_that_cannot_fit_names_the_lever_and_a_wrong_stage_count_is_refused(profiles):
    out, _ = _split(profiles, "--tp", "8", "--recompute", "none")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "needs" in out.stderr and "--recompute full" in out.stderr
    out, _ = _split(profiles, "--tp", "8", "--stage-options", "full,none")
    assert out.returncode == 2 and "gives 2 entries but the split has 4 stages" in out.stderr
    out, _ = _split(profiles, "--tp", "8", "--stage-options", "fp8:full,none,none,none")
    assert out.returncode == 2 and "--stage-options entry 0" in out.stderr


@pytest.mark.parametrize(
    "extra, lever",
    [
        ((), None),  # the default: every recompute mode, tp and dp mode
        (("--pp", "4", "--tp", "1", "--dp-mode", "ddp", "--recompute", "none"), "--recompute"),
    ],
)
def test_a_job_nothing_fits_says_how_much_memory_and_which_lever_on_every_path(profiles, extra, lever):
    out = run_cli(
        "plan", "l70.json", "--cluster", "h100:8x8", "--global-batch", "512", "--device-memory", "10GiB",
        *extra, "-o", "x.json", cwd=profiles,
    )  # fmt: skip
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "no plan fits 10.00 GiB per device: the least found for any split is" in out.stderr
    assert "the lever that helps most" in out.stderr and "solver ended" not in out.stderr
    assert lever is None or lever in out.stderr.split("helps most:")[1]
    assert not (profiles / "x.json").exists()
