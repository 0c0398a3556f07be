"""Cluster specs as files: JSON (as ``pipeplan calibrate`` writes it) and hand-written YAML,
validated alike (unknown keys refused, one-line errors naming the file and field)."""

from __future__ import annotations

import pytest
from conftest import run_cli

from planner import Cluster, load_cluster
from profiles.contract import UserError

YAML = """\
# eight H100s in one node
name: my-node
device: h100
devices: 8
memory_bytes: 80GiB
devices_per_node: 8
intra_bandwidth_Bps: 450e9   # YAML reads this as text; taken as a number
intra_latency_s: 5.0e-6
inter_bandwidth_Bps: 50000000000
inter_latency_s: 1.0e-5
"""


def test_yaml_spec_equals_the_json_one(tmp_path):
    path = tmp_path / "node.yaml"
    path.write_text(YAML)
    got = load_cluster(path)
    want = Cluster(
        name="my-node",
        device="h100",
        devices=8,
        memory_bytes=80 * 2**30,
        devices_per_node=8,
        intra_bandwidth_Bps=450e9,
        intra_latency_s=5e-6,
        inter_bandwidth_Bps=50e9,
        inter_latency_s=1e-5,
    )
    assert got == want
    assert load_cluster(want.save(tmp_path / "node.json")) == want


@pytest.mark.parametrize(
    "text,field",
    [
        ("devices: 8\nmemory_gb: 80\n", "memory_gb"),  # unknown key
        ("devices: eight\n", "devices"),
        ("devices: 8\nmemory_bytes: 80 gigs\n", "memory_bytes"),
        ("intra_latency_s: fast\n", "intra_latency_s"),
        ("schema: pipeplan.plan/1\ndevices: 8\n", "schema"),
    ],
)
def test_bad_yaml_field_is_named(tmp_path, text, field):
    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        load_cluster(path)
    msg = str(e.value)
    assert "bad.yml" in msg and field in msg and "\n" not in msg


def test_broken_yaml_exits_2_with_one_line(tiny_profile_path, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("devices: [8\nmemory_bytes: 80GiB\n")
    r = run_cli("plan", str(tiny_profile_path), "--cluster", str(path), "-o", str(tmp_path / "p.json"))
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "broken.yaml" in r.stderr and "YAML" in r.stderr
    assert not (tmp_path / "p.json").exists()


def test_plan_reads_a_yaml_cluster(tiny_profile_path, tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text("name: two-cpus\ndevice: cpu\ndevices: 2\nmemory_bytes: 8GiB\n")
    r = run_cli("plan", str(tiny_profile_path), "--cluster", str(path), "--json", "-o", str(tmp_path / "p.json"))
    assert r.returncode == 0, r.stderr
    assert '"name": "two-cpus"' in r.stdout
