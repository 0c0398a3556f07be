"""Every command answers a bad input with one line and exit 2, and loses nothing.

Each case runs the real command line in a fresh copy of a small work folder (a profile,
a plan made from it, and crafted files) and asserts what a user relies on: exit code 2,
at most 3 lines on stderr, no traceback, an answer within 30 s under a 4 GiB
address-space limit, every file in the folder byte-identical afterwards and no file
added. The cases run two at a time; most fail before torch is imported.

The 30 s are CPU seconds (``RLIMIT_CPU``: a command that computes longer is killed and
fails its case), so that a machine busy with other work does not fail a case that
answers; a command that waits instead of computing (a FIFO read, a lock) is caught by
a wall-clock limit of WALL_S.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from profiles.contract import MAX_FILE_BYTES

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "tests" / "data" / "gpt2-demo-cpu.json"
LIMIT_S = 30  #: CPU seconds a case may use
WALL_S = 120  #: wall-clock seconds a case may take (generous: other work may share the machine)
ADDRESS_SPACE = 4 * 2**30
HUGE = "9" * 40  # an integer no bound allows
VERY_HUGE = "9" * 5000  # an integer too long for Python to convert from text


def _plan_variants(plan: dict) -> dict[str, dict]:
    """Plans with one field wrong each."""

    def changed(**edits) -> dict:
        p = copy.deepcopy(plan)
        for dotted, value in edits.items():
            target = p
            *path, last = dotted.split("__")
            for k in path:
                target = target[k]
            target[last] = value
        return p

    return {
        "plan-baselines5.json": changed(baselines=5),
        "plan-solver-list.json": changed(solver=[1, 2]),
        "plan-notes-int.json": changed(notes=[1]),
        "plan-pp-huge.json": changed(pp=10**30),
        "plan-dp-huge.json": changed(dp=10**6),
        "plan-mb-huge.json": changed(microbatches=10**15),
        "plan-mbs-str.json": changed(microbatch_size="4"),
        "plan-job-mb5.json": changed(job__microbatches=5),
        "plan-job-unknown.json": changed(job__colour="blue"),
        "plan-job-dtype.json": changed(job__dtypes=["fp64"]),
        "plan-cluster-bw0.json": changed(cluster__intra_bandwidth_Bps=0),
        "plan-cluster-devices-huge.json": changed(cluster__devices=10**12),
        "plan-table-huge-mb.json": changed(schedule__table={"0": ["0F999999999999"], "1": ["1F0"]}),
        "plan-table-not-list.json": changed(schedule__table={"0": "0F0"}),
        "plan-stage-units-str.json": changed(stages=[{"index": 0, "units": ["0", "5"], "rank": 0}]),
    }


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The work folder every case starts from: a profile, a plan of it, and crafted files."""
    d = tmp_path_factory.mktemp("bad-inputs-base")
    shutil.copy(PROFILE, d / "profile.json")
    made = subprocess.run(
        [sys.executable, str(ROOT / "pipeplan.py"), "plan", "profile.json", "--devices", "2", "--pp", "2"]
        + ["--global-batch", "4", "--microbatches", "4", "--schedules", "1F1B", "--time-limit", "5", "-o", "plan.json"],
        cwd=d,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    plan = json.loads((d / "plan.json").read_text())
    for name, data in _plan_variants(plan).items():
        (d / name).write_text(json.dumps(data))
    (d / "plan-nan.json").write_text((d / "plan.json").read_text().replace('"step_s": ', '"step_s": NaN, "x": ', 1))
    profile_text = (d / "profile.json").read_text()
    (d / "profile-nan.json").write_text(profile_text.replace('"forward_s": ', '"forward_s": NaN, "x": ', 1))
    (d / "profile-truncated.json").write_text(profile_text[: len(profile_text) // 2])
    (d / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (d / "hugeint.json").write_text('{"schema": "pipeplan.profile/1", "seq_len": ' + VERY_HUGE + "}")
    (d / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    (d / "job-mb5.json").write_text(json.dumps({"global_batch": 8, "microbatches": 5}))
    (d / "job-unknown.json").write_text(json.dumps({"global_batch": 8, "colour": "blue"}))
    (d / "job-list.json").write_text(json.dumps([1, 2]))
    (d / "job-huge.json").write_text(json.dumps({"global_batch": 10**18}))
    cluster = {"schema": "pipeplan.cluster/1", "devices": 2, "intra_bandwidth_Bps": 0}
    (d / "cluster-bw0.json").write_text(json.dumps(cluster))
    (d / "cluster-bad.yaml").write_text("devices: [2\n")
    (d / "cluster-inf.yaml").write_text("devices: 2\ninter_bandwidth_Bps: .inf\n")
    (d / "huge-mb.csv").write_text("0F999999999999\n")
    (d / "long-int.csv").write_text("0F" + VERY_HUGE + "\n")
    (d / "bad-action.csv").write_text("0X0,0B0\n")
    (d / "folder").mkdir()
    # a file over MAX_FILE_BYTES, sparse (no disk used), kept outside the folder each case copies
    with open(d.parent / "oversized.json", "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    return d


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    return env


P = [str(ROOT / "pipeplan.py")]
PROF = [*P, "profile", "gpt2-demo", "-o", "out.json"]
PLAN = [*P, "plan", "profile.json", "--time-limit", "5", "-o", "out.json"]
SIM = [*P, "simulate"]
WHATIF = [*P, "simulate", "--schedule", "1F1B", "--pp", "2"]
SCHED = [*P, "schedule"]
RUN = [*P, "run"]
VALIDATE = [*P, "validate"]

#: (id, argv after the interpreter, a piece of the one-line reason)
CASES: list[tuple[str, list[str], str]] = [
    # -- profile: flags checked before torch is imported, then the config's own fields
    ("profile-dtypes-repeated", [*PROF, "--dtypes", "fp32,fp32"], "named twice"),
    ("profile-dtypes-unknown", [*PROF, "--dtypes", "fp64"], "unknown dtype"),
    ("profile-mbs-zero", [*PROF, "--microbatch-sizes", "0"], "--microbatch-sizes"),
    ("profile-mbs-repeated", [*PROF, "--microbatch-sizes", "1,1"], "named twice"),
    ("profile-mbs-huge", [*PROF, "--microbatch-sizes", HUGE], "--microbatch-sizes"),
    ("profile-seq-negative", [*PROF, "--seq-len", "-1"], "--seq-len"),
    ("profile-repeats-zero", [*PROF, "--repeats", "0"], "--repeats"),
    ("profile-budget-nan", [*PROF, "--budget-s", "nan"], "--budget-s"),
    ("profile-side-huge", [*PROF, "--side-by-side", "100000"], "--side-by-side"),
    ("profile-output-folder", [*P, "profile", "gpt2-demo", "-o", "folder"], "folder"),
    ("profile-output-under-file", [*P, "profile", "gpt2-demo", "-o", "plan.json/x.json"], "cannot write"),
    ("profile-set-negative", [*PROF, "--set", "n_layer=-3"], "n_layer"),
    ("profile-set-banana", [*PROF, "--set", "n_layer=banana"], "expected an integer"),
    ("profile-set-unknown", [*PROF, "--set", "colour=1"], "not a field"),
    ("profile-set-no-value", [*PROF, "--set", "n_layer"], "key=value"),
    ("profile-set-float-int", [*PROF, "--set", "n_head=2.5"], "expected an integer"),
    ("profile-too-big-for-memory", [*PROF, "--set", "n_layer=20000"], "GiB"),
    ("profile-seq-beyond-positions", [*PROF, "--seq-len", "2000"], "--set n_positions=2000"),
    ("profile-analytic-set-negative", [*P, "profile", "llama-1b", "--analytic", "--set", "hidden_size=-1"], "hidden"),
    ("profile-unknown-model", [*P, "profile", "no-such-model", "-o", "out.json"], "unknown model"),
    ("profile-module-form", [sys.executable, "-m", "profiles", "gpt2-demo", "--dtypes", "bf16,bf16"], "twice"),
    # -- plan: the profile file
    ("plan-missing-profile", [*P, "plan", "missing.json"], "no such file"),
    ("plan-unknown-stored-name", [*P, "plan", "no-such-model"], "no stored profile"),
    ("plan-dev-zero", [*P, "plan", "/dev/zero"], "not a regular file"),
    ("plan-fifo", [*P, "plan", "fifo"], "not a regular file"),
    ("plan-folder", [*P, "plan", "folder"], "folder"),
    ("plan-unreadable", [*P, "plan", "/proc/self/mem"], "cannot read"),
    ("plan-truncated", [*P, "plan", "profile-truncated.json"], "not valid JSON"),
    ("plan-nan-profile", [*P, "plan", "profile-nan.json"], "NaN"),
    ("plan-deep-json", [*P, "plan", "deep.json"], "nested too deeply"),
    ("plan-huge-int-json", [*P, "plan", "hugeint.json"], "not valid JSON"),
    ("plan-binary", [*P, "plan", "binary.json"], "not a text file"),
    ("plan-oversized", [*P, "plan", "../oversized.json"], "more than a pipeplan file ever holds"),
    ("plan-given-a-plan", [*P, "plan", "plan.json", "-o", "out.json"], "not a profile file"),
    ("plan-default-output-is-input", [*P, "plan", "plan.json"], "is an input"),
    # -- plan: flags
    ("plan-output-is-input", [*P, "plan", "profile.json", "-o", "profile.json"], "is an input"),
    ("plan-output-csv-clash", [*P, "plan", "profile.json", "-o", "out.csv"], "give each output its own path"),
    ("plan-output-under-file", [*P, "plan", "profile.json", "-o", "plan.json/out.json"], "cannot write"),
    ("plan-output-unwritable", [*P, "plan", "profile.json", "-o", "/proc/out.json"], "cannot write"),
    ("plan-memory-inf", [*PLAN, "--device-memory", "1e999"], "--device-memory"),
    ("plan-memory-zero", [*PLAN, "--device-memory", "0GiB"], "--device-memory"),
    ("plan-memory-garbled", [*PLAN, "--device-memory", "1.2.3GB"], "--device-memory"),
    ("plan-top-zero", [*PLAN, "--top", "0"], "--top"),
    ("plan-devices-zero", [*PLAN, "--devices", "0"], "--devices"),
    ("plan-devices-huge", [*PLAN, "--devices", HUGE], "--devices"),
    ("plan-global-batch-huge", [*PLAN, "--global-batch", HUGE], "--global-batch"),
    ("plan-microbatches-zero", [*PLAN, "--microbatches", "0"], "--microbatches"),
    ("plan-microbatches-too-many", [*PLAN, "--global-batch", "4096", "--microbatches", "2048"], "--microbatches"),
    ("plan-batch-too-many-microbatches", [*PLAN, "--devices", "2", "--global-batch", "1048576"], "per replica"),
    ("plan-pp-beyond-devices", [*PLAN, "--devices", "2", "--pp", "100000"], "--pp"),
    ("plan-dtype-repeated", [*PLAN, "--dtype", "fp32,fp32"], "named twice"),
    ("plan-dtype-not-profiled", [*PLAN, "--dtype", "bf16"], "--dtypes fp32,bf16"),
    ("plan-mbs-unfittable", [*PLAN, "--microbatch-size", "2"], "--microbatch-sizes 1,2"),
    ("plan-time-limit-nan", [*PLAN, "--time-limit", "nan"], "--time-limit"),
    ("plan-schedule-unknown", [*PLAN, "--schedules", "NoSuch"], "unknown schedule"),
    ("plan-placement-huge-rank", [*PLAN, "--placement", f"0,{HUGE}"], "holds no stage"),
    ("plan-placement-negative", [*PLAN, "--placement", "0,-1"], "numbered from 0"),
    ("plan-cluster-zero-bandwidth", [*PLAN, "--cluster", "cluster-bw0.json"], "intra_bandwidth_Bps"),
    ("plan-cluster-missing", [*PLAN, "--cluster", "nope"], "no such file or preset"),
    ("plan-cluster-bad-yaml", [*PLAN, "--cluster", "cluster-bad.yaml"], "not valid YAML"),
    ("plan-cluster-inf-yaml", [*PLAN, "--cluster", "cluster-inf.yaml"], "inter_bandwidth_Bps"),
    ("plan-cluster-fifo", [*PLAN, "--cluster", "fifo"], "not a regular file"),
    ("plan-job-microbatches-int", [*PLAN, "--job", "job-mb5.json"], "microbatches"),
    ("plan-job-unknown-field", [*PLAN, "--job", "job-unknown.json"], "colour"),
    ("plan-job-not-object", [*PLAN, "--job", "job-list.json"], "JSON object"),
    ("plan-job-huge", [*PLAN, "--job", "job-huge.json"], "global_batch"),
    ("plan-job-dev-zero", [*PLAN, "--job", "/dev/zero"], "not a regular file"),
    ("plan-module-form", [sys.executable, "-m", "planner", "plan", "profile.json", "--top", "0"], "--top"),
    # -- simulate: plan files with one field wrong, and the outputs
    ("export-missing-plan", [*P, "export", "missing.json", "--to", "launch"], "no such file"),
    ("export-output-is-plan", [*P, "export", "plan.json", "--to", "launch", "-o", "plan.json"], "is an input"),
    ("export-output-is-profile", [*P, "export", "plan.json", "--to", "megatron", "-o", "profile.json"], "is an input"),
    ("export-unknown-target", [*P, "export", "plan.json", "--to", "deepspeed"], "invalid choice"),
    (
        "export-model-unknown-to-engine",
        [*P, "export", "plan.json", "--to", "torchtitan", "-o", "t.py"],
        "profile.model",
    ),
    ("export-output-folder", [*P, "export", "plan.json", "--to", "launch", "-o", "folder"], "folder"),
    ("simulate-output-is-plan", [*SIM, "plan.json", "-o", "plan.json"], "is an input"),
    ("simulate-trace-is-plan", [*SIM, "plan.json", "--trace", "plan.json"], "is an input"),
    ("simulate-trace-is-profile", [*SIM, "plan.json", "--trace", "profile.json"], "is an input"),
    ("simulate-outputs-clash", [*SIM, "plan.json", "-o", "a.json", "--trace", "a.json"], "own path"),
    ("simulate-gantt-folder", [*SIM, "plan.json", "--gantt", "folder"], "folder"),
    ("simulate-nan-plan", [*SIM, "plan-nan.json"], "NaN"),
    ("simulate-baselines-int", [*SIM, "plan-baselines5.json"], "baselines"),
    ("simulate-solver-list", [*SIM, "plan-solver-list.json"], "solver"),
    ("simulate-notes-int", [*SIM, "plan-notes-int.json"], "notes"),
    ("simulate-pp-huge", [*SIM, "plan-pp-huge.json"], "pp"),
    ("simulate-dp-beyond-cluster", [*SIM, "plan-dp-huge.json"], "dp"),
    ("simulate-microbatches-huge", [*SIM, "plan-mb-huge.json"], "microbatches"),
    ("simulate-mbs-string", [*SIM, "plan-mbs-str.json"], "microbatch_size"),
    ("simulate-job-microbatches-int", [*SIM, "plan-job-mb5.json"], "job.microbatches"),
    ("simulate-job-unknown", [*SIM, "plan-job-unknown.json"], "colour"),
    ("simulate-job-dtype", [*SIM, "plan-job-dtype.json"], "fp64"),
    ("simulate-cluster-zero-bandwidth", [*SIM, "plan-cluster-bw0.json"], "intra_bandwidth_Bps"),
    ("simulate-cluster-devices-huge", [*SIM, "plan-cluster-devices-huge.json"], "devices"),
    ("simulate-table-huge-microbatch", [*SIM, "plan-table-huge-mb.json"], "beyond"),
    ("simulate-table-not-list", [*SIM, "plan-table-not-list.json"], "table"),
    ("simulate-units-strings", [*SIM, "plan-stage-units-str.json"], "units"),
    # -- simulate: what-if forms
    ("whatif-csv-huge-microbatch", [*SIM, "--table", "huge-mb.csv"], "beyond"),
    ("whatif-csv-long-int", [*SIM, "--table", "long-int.csv"], "beyond"),
    ("whatif-csv-bad-action", [*SIM, "--table", "bad-action.csv"], "not an action"),
    ("whatif-csv-dev-zero", [*SIM, "--table", "/dev/zero"], "not a regular file"),
    ("whatif-csv-fifo", [*SIM, "--table", "fifo"], "not a regular file"),
    ("whatif-microbatches-huge", [*WHATIF, "--microbatches", HUGE], "--microbatches"),
    ("whatif-f-nan", [*WHATIF, "--microbatches", "4", "--f", "nan"], "--f"),
    ("whatif-comm-negative", [*WHATIF, "--microbatches", "4", "--comm", "-1"], "--comm"),
    ("whatif-gantt-is-table", [*SIM, "--table", "huge-mb.csv", "--gantt", "huge-mb.csv"], "is an input"),
    ("whatif-module-form", [sys.executable, "-m", "simulator", "simulate", "--table", "/dev/zero"], "regular"),
    # -- schedule
    ("schedule-table-too-big", [*SCHED, "1F1B", "--pp", "100000", "--microbatches", "100000"], "a table may hold"),
    ("schedule-pp-zero", [*SCHED, "1F1B", "--pp", "0", "--microbatches", "4"], "--pp"),
    ("schedule-microbatches-huge", [*SCHED, "1F1B", "--pp", "2", "--microbatches", HUGE], "--microbatches"),
    ("schedule-unknown", [*SCHED, "NoSuch", "--pp", "2", "--microbatches", "4"], "unknown schedule"),
    ("schedule-placement-huge", [*SCHED, "Custom", "--placement", f"0,{HUGE}", "--microbatches", "4"], "no stage"),
    ("schedule-csv-folder", [*SCHED, "1F1B", "--pp", "2", "--microbatches", "4", "--csv", "folder"], "folder"),
    ("schedule-csv-under-file", [*SCHED, "1F1B", "--pp", "2", "--microbatches", "4", "--csv", "plan.json/a"], "write"),
    # -- run and validate: refused before any process starts
    ("run-report-is-plan", [*RUN, "plan.json", "--report", "plan.json"], "is an input"),
    ("run-report-is-profile", [*RUN, "plan.json", "--report", "profile.json"], "is an input"),
    ("run-nproc-wrong", [*RUN, "plan.json", "--nproc", "3"], "--nproc"),
    ("run-steps-zero", [*RUN, "plan.json", "--steps", "0"], "--steps"),
    ("run-steps-huge", [*RUN, "plan.json", "--steps", HUGE], "--steps"),
    ("run-data-dev-zero", [*RUN, "plan.json", "--data", "/dev/zero"], "not a regular file"),
    ("run-plan-dev-zero", [*RUN, "/dev/zero"], "not a regular file"),
    ("run-plan-baselines-int", [*RUN, "plan-baselines5.json"], "baselines"),
    ("run-profiler-dir-is-file", [*RUN, "plan.json", "--torch-profiler", "profile.json"], "not a folder"),
    ("validate-report-is-plan", [*VALIDATE, "plan.json", "--report", "plan.json"], "is an input"),
    ("validate-report-is-side-file", [*VALIDATE, "plan.json", "--report", "plan.sim.trace.json"], "own path"),
    ("validate-warmup-negative", [*VALIDATE, "plan.json", "--warmup", "-1"], "--warmup"),
    ("validate-deep-plan", [*VALIDATE, "deep.json"], "nested too deeply"),
    # -- calibrate and dashboard
    ("calibrate-output-folder", [*P, "calibrate", "-o", "folder"], "folder"),
    ("calibrate-output-under-file", [*P, "calibrate", "-o", "plan.json/cluster.json"], "cannot write"),
    ("dashboard-port-huge", [*P, "dashboard", "--port", "99999"], "--port"),
    ("dashboard-root-missing", [*P, "dashboard", "--root", "no-such-folder"], "--root"),
    ("dashboard-root-file", [*P, "dashboard", "--root", "plan.json"], "--root"),
    # -- argument syntax
    ("unknown-command", [*P, "frobnicate"], "invalid choice"),
    ("plan-int-flag-text", [*PLAN, "--devices", "two"], "invalid int value"),
]


def _snapshot(d: Path) -> dict[str, str]:
    """Every entry under ``d``: a regular file's hash, else its kind (a FIFO is not opened)."""
    out = {}
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        if p.is_symlink():
            out[rel] = "link"
        elif p.is_fifo():
            out[rel] = "fifo"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _limit():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    resource.setrlimit(resource.RLIMIT_CPU, (LIMIT_S, LIMIT_S))


def _run_case(base: Path, scratch: Path, case: tuple[str, list[str], str]) -> dict:
    name, argv, _ = case
    d = scratch / name
    shutil.copytree(base, d)
    os.mkfifo(d / "fifo")
    before = _snapshot(d)
    t0 = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, *argv] if argv[0] != sys.executable else argv,
            cwd=d,
            env=_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=WALL_S,
            preexec_fn=_limit,
        )
        rc, stderr = done.returncode, done.stderr
    except subprocess.TimeoutExpired:
        rc, stderr = None, f"no answer within {WALL_S} s"
    wall = time.perf_counter() - t0
    return {"rc": rc, "stderr": stderr, "wall": wall, "before": before, "after": _snapshot(d)}


@pytest.fixture(scope="module")
def results(base, tmp_path_factory, request) -> dict[str, dict]:
    """The selected cases (``-k`` picks some), run two at a time."""
    chosen = {
        item.callspec.params["case"][0]
        for item in request.session.items
        if item.path == request.path and hasattr(item, "callspec") and "case" in item.callspec.params
    }
    cases = [c for c in CASES if c[0] in chosen]
    scratch = tmp_path_factory.mktemp("bad-inputs-runs")
    (scratch / "oversized.json").symlink_to(base.parent / "oversized.json")  # ../oversized.json of each case
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip((c[0] for c in cases), pool.map(lambda c: _run_case(base, scratch, c), cases)))


def test_there_are_at_least_60_cases_over_every_command():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)
    commands = {"profile", "plan", "simulate", "schedule", "run", "validate", "calibrate", "dashboard"}
    used = {a for _, argv, _ in CASES for a in argv} | {"profile" for _, argv, _ in CASES if "profiles" in argv}
    assert commands <= used


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line_and_exit_2_and_nothing_changes(case, results):
    name, argv, reason = case
    r = results[name]
    lines = r["stderr"].strip().splitlines()
    assert r["rc"] == 2, f"exit {r['rc']} after {r['wall']:.1f} s:\n{r['stderr'][-2000:]}"
    assert "Traceback" not in r["stderr"], r["stderr"][-2000:]
    assert 1 <= len(lines) <= 3, r["stderr"]
    assert reason in r["stderr"], r["stderr"]
    assert r["wall"] < WALL_S  # (past LIMIT_S of CPU the command is killed: rc is not 2)
    assert r["after"] == r["before"], "files changed, appeared or vanished"
