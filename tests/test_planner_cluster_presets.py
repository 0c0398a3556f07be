"""Cluster presets: node types with a node count, the older names, and their cited sources."""

import pytest
import yaml

from planner.cluster import PRESET_CLUSTERS, PRESETS_FILE, Cluster, load_cluster
from profiles.contract import UserError


def test_older_names_keep_their_values():
    from profiles.devices import DEVICE_SPECS

    # NVLink 4 all-reduce, the NIC's line rate; a memory-bound AdamW step on the H100's HBM
    nccl = {
        "intra_collective_Bps": 370e9,
        "inter_collective_Bps": 50e9,
        "optimizer_s_per_param": DEVICE_SPECS["h100"].optimizer_s_per_param,
    }
    assert PRESET_CLUSTERS["h100-node"] == Cluster(
        name="h100-node",
        device="h100",
        devices=8,
        memory_bytes=80 * 2**30,
        devices_per_node=8,
        intra_bandwidth_Bps=450e9,
        intra_latency_s=5e-6,
        inter_bandwidth_Bps=50e9,
        inter_latency_s=10e-6,
        **nccl,
    )
    assert PRESET_CLUSTERS["h100x64"] == Cluster(
        name="h100x64",
        device="h100",
        devices=64,
        memory_bytes=80 * 2**30,
        devices_per_node=8,
        intra_bandwidth_Bps=450e9,
        intra_latency_s=5e-6,
        inter_bandwidth_Bps=50e9,
        inter_latency_s=10e-6,
        **nccl,
    )
    # CPU ranks keep the α-β collectives on their links
    assert PRESET_CLUSTERS["cpu-local"] == Cluster(
        name="cpu-local",
        device="cpu",
        devices=2,
        memory_bytes=8 * 2**30,
        devices_per_node=2,
        intra_bandwidth_Bps=1.5e9,
        intra_latency_s=150e-6,
        inter_bandwidth_Bps=1.5e9,
        inter_latency_s=150e-6,
    )
    # H200: 141 GB as its datasheet states it (it was 141 GiB before); its own HBM for the optimizer
    nccl["optimizer_s_per_param"] = DEVICE_SPECS["h200"].optimizer_s_per_param
    assert PRESET_CLUSTERS["h200x64"] == Cluster(
        name="h200x64",
        device="h200",
        devices=64,
        memory_bytes=141 * 10**9,
        devices_per_node=8,
        intra_bandwidth_Bps=450e9,
        intra_latency_s=5e-6,
        inter_bandwidth_Bps=50e9,
        inter_latency_s=10e-6,
        **nccl,
    )
    assert 34 / 3.35e12 < DEVICE_SPECS["h100"].optimizer_s_per_param < 34 / 3.35e12 / 0.85


def test_node_types_and_counts():
    one = load_cluster("h100")
    assert (one.devices, one.devices_per_node, one.memory_bytes) == (8, 8, 80 * 2**30)
    eight = load_cluster("h100:8x8")
    assert (eight.name, eight.devices, eight.devices_per_node) == ("h100:8x8", 64, 8)
    assert load_cluster("h100:8").devices == 64 and load_cluster("h100:8").name == "h100:8x8"
    half = load_cluster("h100:8x4")
    assert (half.devices, half.devices_per_node, half.inter_bandwidth_Bps) == (32, 4, 50e9)
    a100 = load_cluster("a100:2")
    assert (a100.devices, a100.intra_bandwidth_Bps, a100.inter_bandwidth_Bps) == (16, 300e9, 25e9)
    h200 = load_cluster("h200:128")
    assert (h200.devices, h200.memory_bytes, h200.intra_bandwidth_Bps) == (1024, 141 * 10**9, 450e9)


@pytest.mark.parametrize("spec", ["h100:0", "h100:2x16", "h100:2x0"])
def test_bad_counts_refused(spec):
    with pytest.raises(UserError, match="NODES"):
        load_cluster(spec)


def test_unknown_preset_names_the_choices():
    with pytest.raises(UserError) as e:
        load_cluster("tpu:4")
    assert "h100" in str(e.value) and "a100" in str(e.value) and "\n" not in str(e.value)


def test_every_gpu_node_cites_its_datasheet():
    nodes = yaml.safe_load(PRESETS_FILE.read_text())["nodes"]
    for name in ("h100", "h200", "a100"):
        sources = nodes[name]["sources"]
        assert any("datasheet" in s and "nvidia.com" in s for s in sources), name
