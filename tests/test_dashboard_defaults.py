"""The dashboard plans as ``pipeplan plan`` does: the same defaults, the cluster the profile implies
(its run folder's calibrated cluster.json, else a node of its device), ``profile=``/``cluster=``
URL parameters, the profile's own dtypes after a switch, and a search limit that reaches the planner."""

from __future__ import annotations

from dataclasses import replace

import pytest

pytest.importorskip("streamlit")

from dashboard_apptest import app, ok, synthetic_root  # noqa: E402

from dashboard import data  # noqa: E402
from dashboard.synthetic import synthetic_profile  # noqa: E402
from planner import Cluster  # noqa: E402
from simulator.costs import DPMode  # noqa: E402


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """runs/syn: a CPU profile (fp32, bf16) and its plan; runs/gpu: an h100 profile in bf16 only."""
    runs = synthetic_root(tmp_path_factory.mktemp("defaults"))
    (runs / "gpu").mkdir()
    gpu = replace(
        synthetic_profile(6, dtypes=("bf16",), name="gpusyn"), device_kind="h100", device_name="NVIDIA H100 SXM5"
    )
    gpu.save(runs / "gpu" / "profile.json")
    return runs


def test_defaults_are_the_cli_defaults(monkeypatch, root):
    at = ok(app(monkeypatch, root, "Profile", profile="syn/profile.json").run())
    assert at.selectbox(key="profile").value.endswith("syn/profile.json")
    assert at.selectbox(key="cluster").value == "cpu-local"  # a CPU profile: this machine
    assert at.multiselect(key="recompute").value == ["none", "full"]  # every mode valid for a headless model
    assert at.multiselect(key="dp_modes").value == [m.value for m in DPMode]
    assert at.multiselect(key="tp").value == [int(t) for t in at.multiselect(key="tp").options]
    assert at.multiselect(key="dtypes").value == ["fp32", "bf16"]  # every dtype of the profile
    assert at.number_input(key="limit").value == data.DEFAULT_TIME_LIMIT


def test_url_profile_by_model_name_brings_its_device_cluster_and_dtypes(monkeypatch, root):
    at = ok(app(monkeypatch, root, "Profile", profile="gpusyn").run())
    assert at.selectbox(key="profile").value.endswith("gpu/profile.json")
    assert at.selectbox(key="cluster").value == "h100"  # a node of 8 H100s, not cpu-local
    assert at.number_input(key="devices").value == 8 and at.number_input(key="mem").value == 80.0
    assert at.multiselect(key="dtypes").options == ["bf16"] and at.multiselect(key="dtypes").value == ["bf16"]


def test_url_cluster_preset_with_nodes(monkeypatch, root):
    at = ok(app(monkeypatch, root, "Profile", profile="syn/profile.json", cluster="h100:2x4").run())
    assert at.selectbox(key="cluster").value == "h100:2x4"
    assert at.number_input(key="devices").value == 8 and at.number_input(key="per_node").value == 4
    at = app(monkeypatch, root, "Profile", profile="syn/profile.json", cluster="nowhere.json").run()
    assert not at.exception and any("cluster=nowhere" in w.value for w in at.sidebar.warning)
    assert at.selectbox(key="cluster").value == "cpu-local"


def test_switching_profile_keeps_each_profile_s_dtypes_and_cluster(monkeypatch, root):
    at = ok(app(monkeypatch, root, "Profile", profile="syn/profile.json").run())
    ok(at.selectbox(key="profile").set_value(str(root / "gpu" / "profile.json")).run())
    assert at.multiselect(key="dtypes").value == ["bf16"]
    assert at.selectbox(key="cluster").value == "h100" and at.number_input(key="devices").value == 8
    ok(at.selectbox(key="profile").set_value(str(root / "syn" / "profile.json")).run())
    assert at.multiselect(key="dtypes").value == ["fp32", "bf16"]
    assert at.selectbox(key="cluster").value == "cpu-local" and at.number_input(key="devices").value == 2


def test_the_run_folder_s_calibrated_cluster_is_the_default(monkeypatch, tmp_path):
    runs = synthetic_root(tmp_path)
    Cluster(name="calibrated-here", devices=4, memory_bytes=3 * 2**30, devices_per_node=4).save(
        runs / "syn" / "cluster.json"
    )
    at = ok(app(monkeypatch, runs, "Profile").run())
    assert at.selectbox(key="cluster").value.endswith("syn/cluster.json")
    assert at.number_input(key="devices").value == 4 and at.number_input(key="mem").value == 3.0


def test_the_search_limit_reaches_the_planner(monkeypatch, root):
    seen = []

    def recording(*args, **kw):
        seen.append(kw.get("time_limit"))
        return real(*args, **kw)

    real = data.make_plans
    monkeypatch.setattr(data, "make_plans", recording)
    at = app(monkeypatch, root, "Plan", profile="syn/profile.json", pp=2)
    at.session_state["schedules"] = ["1F1B"]
    ok(at.run())
    ok(at.number_input(key="limit").set_value(7.5).run())
    assert seen[-1] == 7.5
    table = at.dataframe[0].value
    assert {"tokens/s", "tokens/s per device", "TFLOP/s per device", "MFU %"} <= set(table.columns)
    assert (table["tokens/s"] > 0).all()
