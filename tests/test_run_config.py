"""RunConfig: one declaration gives the launcher's flags, the worker's flags and the command line
between them (no torch, no torchrun)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from executor.config import LAUNCHER, WORKER, RunConfig, add_flags, worker_argv
from profiles.contract import UserError


def _parse(scope: str, argv: list[str]) -> RunConfig:
    p = argparse.ArgumentParser()
    add_flags(p, scope)
    return RunConfig.from_dict(vars(p.parse_args(argv)))


def test_every_setting_is_a_flag_of_someone_and_documented():
    for f in dataclasses.fields(RunConfig):
        assert f.metadata["scope"] and set(f.metadata["scope"]) <= {LAUNCHER, WORKER}, f.name
        assert f.metadata["help"], f.name


def test_what_the_launcher_passes_on_the_worker_reads_back():
    launcher = _parse(
        LAUNCHER,
        ["--steps", "3", "--warmup", "0", "--check", "--report", "r.json", "--data", "t.bin"]
        + ["--data-dtype", "uint32", "--torch-profiler", "prof", "--torch-schedule", "1F1B", "--trust-remote-code"]
        + ["--nproc", "2", "--oversubscribe"],
    )
    argv = worker_argv(launcher)
    assert argv[:6] == ["--steps", "3", "--warmup", "0", "--report", "r.json"]  # what a launch line shows first
    assert argv[-2:] == ["--check", "--trust-remote-code"]  # switches last
    worker = _parse(WORKER, argv)
    # the launcher's own settings stay behind; everything else arrives as given
    assert worker == dataclasses.replace(launcher, nproc=None, oversubscribe=False)
    assert worker.data == Path("t.bin") and worker.data_dtype == "uint32"


def test_defaults_pass_on_steps_warmup_and_report_only():
    assert worker_argv(RunConfig(report=Path("p.run.json"))) == [
        "--steps",
        "5",
        "--warmup",
        "2",
        "--report",
        "p.run.json",
    ]


@pytest.mark.parametrize(
    "values, message",
    [
        ({"stepz": 3}, "unknown run setting stepz"),
        ({"steps": 0}, "--steps 0: give a number from 1 to 10000"),
        ({"warmup": -1}, "--warmup -1"),
        ({"nproc": 0}, "--nproc 0"),
    ],
)
def test_bad_settings_are_refused_in_one_line(values, message):
    with pytest.raises(UserError, match=message):
        RunConfig.from_dict(values)


def test_hidden_worker_flags_stay_off_the_launcher():
    p = argparse.ArgumentParser()
    add_flags(p, LAUNCHER)
    text = p.format_help()
    assert "--perturb-grad" not in text and "--lr" not in text and "--oversubscribe" in text
    with pytest.raises(SystemExit):
        p.parse_args(["--perturb-grad", "1"])
