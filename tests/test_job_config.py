"""A Job field is declared once (``planner.config.setting``: doc, default, kind, rule, flag, label) and
every reader is made from that declaration: the JSON reader, the rules (``Job.check``), the
``pipeplan plan`` flags and the dashboard's settings. A new field is a change to ``planner/cluster.py``
and its test: the last test here adds one and finds it everywhere without touching anything else."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, fields

import pytest

from planner.cli import PLAN
from planner.cluster import Cluster, Job
from planner.config import Flag, add_flags, config_problems, flag_values, mirrored, read_config, setting, settings_of
from profiles.contract import ContractError

#: a value of each kind unlike any default, so a round trip shows the field was read
_SAMPLE = {"int": 3, "num": 3.5, "str": None, "bool": True, "ints": (2, 4), "strs": None, "int_lists": ((0, 1, 0),)}


def _plan_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    PLAN.add_arguments(p)
    return p


def _sample(s) -> object:
    if s.kind in ("str", "strs"):
        first = s.choices[-1] if s.choices else "GPipe"
        return first if s.kind == "str" else (first,)
    return _SAMPLE[s.kind]


@pytest.mark.parametrize("config", [Job, Cluster])
def test_every_field_is_declared_once_with_its_doc_and_rule(config):
    declared = {x.name: s for x, s in settings_of(config)}
    assert list(declared) == [x.name for x in fields(config)]
    for name, s in declared.items():
        assert s.doc and s.kind, name


def test_the_json_reader_reads_every_field_and_names_it_when_wrong():
    values = {x.name: _sample(s) for x, s in settings_of(Job)}
    values["forward_only"], values["objective"] = True, "latency"  # the one rule between two fields
    job = Job(**values)
    assert Job.from_dict(json.loads(json.dumps(job.to_dict()))) == job
    for x, s in settings_of(Job):
        wrong = "text" if s.kind != "str" else 5
        with pytest.raises(ContractError, match=rf"job\.json: field {x.name}\b") as e:
            Job.from_dict({x.name: wrong}, "job.json")
        assert "\n" not in str(e.value)
    with pytest.raises(ContractError, match="colour: unknown field; known fields: dp_modes"):
        Job.from_dict({"colour": "blue"}, "job.json")


def test_each_rule_is_the_declarations_and_names_the_flag_for_flags():
    assert next(config_problems(Job(microbatches=(2048,))))[0] == "microbatches"
    with pytest.raises(ContractError, match=r"^job: field dp_modes: is \['x'\]: choose from ddp, zero1, zero2, fsdp$"):
        Job(dp_modes=("x",)).check()
    with pytest.raises(ContractError, match=r"^--dp-mode x: choose from"):
        Job(dp_modes=("x",)).check(None)
    with pytest.raises(ContractError, match="objective"):
        Job(objective="latency").check()


def test_the_plan_flags_are_the_job_fields_with_a_flag():
    parser = _plan_parser()
    by_dest = {a.dest: a for a in parser._actions}
    for x, s in settings_of(Job):
        if s.flag is None:
            assert x.name not in by_dest, x.name
            continue
        action = by_dest[x.name]
        assert action.option_strings == [s.flag.name] and action.help == s.flag.help
        assert action.default == s.flag.default
    args = parser.parse_args(["p.json", "--dp-mode", "fsdp,ddp", "--tp", "2,4", "--forward-only", "--recompute"])
    got = flag_values(Job, args)
    assert got["dp_modes"] == ("fsdp", "ddp") and got["tp"] == (2, 4) and got["forward_only"] is True
    assert got["recompute"] == ("none", "selective", "full")  # a bare --recompute: all three


def test_the_dashboard_mirrors_the_labelled_fields():
    pytest.importorskip("streamlit")
    from dashboard.data import WIDGET_KEYS, PlanSettings

    labelled = mirrored(Job)
    assert set(labelled) == {
        "global_batch",
        "microbatch_size",
        "schedules",
        "pp",
        "dtypes",
        "recompute",
        "tp",
        "dp_modes",
        "grad_dtype",
    }
    assert set(WIDGET_KEYS) <= set(labelled)
    assert PlanSettings().job == Job()  # the settings hold a Job, not copies of its fields


def test_a_new_field_is_one_declaration():
    """A field added to a Job (here in a subclass, so the real Job stays as it is) is read from JSON,
    checked, given its flag and written back, with nothing else changed."""

    @dataclass(frozen=True, kw_only=True)
    class Wider(Job):
        warmup_steps: int = setting(
            0, "optimizer steps before timing", "int", lo=0, hi=100, flag=Flag(name="--warmup", default=0, help="w")
        )

    assert read_config(Wider, {"warmup_steps": 7, "global_batch": 16}, "job.json").warmup_steps == 7
    with pytest.raises(ContractError, match="known fields: .*warmup_steps"):
        read_config(Wider, {"warmup": 7}, "job.json")
    with pytest.raises(ContractError, match="field warmup_steps: expected an integer"):
        read_config(Wider, {"warmup_steps": "7"}, "job.json")
    assert [name for name, _, _ in config_problems(Wider(warmup_steps=101))] == ["warmup_steps"]
    p = argparse.ArgumentParser()
    add_flags(p, Wider)
    assert flag_values(Wider, p.parse_args(["--warmup", "5"]))["warmup_steps"] == 5
    assert Wider(warmup_steps=3).to_dict()["warmup_steps"] == 3
