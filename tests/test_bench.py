"""Tests for lab.bench: its pure helpers, and a smoke run of the smallest benchmark on a real
tiny lab (skipped without virtualization, a failure under --lab-required)."""

from __future__ import annotations

import argparse
import json
import os
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from lab import accel, bench, shell, snapshots, statecache, topology
from lab.images import ImageStore
from lab.topology import TopologyError

BIG_HOST = 1_000_000  # MiB: only the memory test sees the host check


def _args(**flags: bool) -> argparse.Namespace:
    values = {"output": None, "smallest": False, "skip_cold_build": False,
              "skip_lab": False, "skip_baseline": False, "skip_scaling": False}
    values.update(flags)
    return argparse.Namespace(**values)


# TOML and generated topologies -----------------------------------------------------------------




def test_default_profile_survives_dump() -> None:
    path = topology.profiles()["default"]
    again = tomli_w.dumps(tomllib.loads(path.read_text()))
    original = topology.parse(path.read_text(), "a", BIG_HOST)
    dumped = topology.parse(again, "b", BIG_HOST)
    assert dumped.machines == original.machines
    assert dumped.networks == original.networks
    assert dumped.layouts == original.layouts
    assert dumped.default_layout == original.default_layout


@pytest.mark.parametrize("n", bench.SCALE_SIZES)
def test_scaling_topology_parses_and_validates(n: int) -> None:
    text = bench.scaling_topology_text(topology.profiles()["default"].read_text(), n)
    topo = topology.parse(text, f"<{n} hypervisors>", BIG_HOST)
    nodes = tuple(f"node{i}" for i in range(1, n + 1))
    assert tuple(m.name for m in topo.hypervisors) == nodes
    assert all(m.memory_mib == bench.SCALE_MEMORY_MIB for m in topo.hypervisors)
    assert all(m.disks_gib and m.disks_gib[0] >= topology.MIN_VG_DISK_GIB
               for m in topo.hypervisors)
    assert topo.service.name == "service"
    assert len(topo.machines) == n + 1
    assert list(topo.layouts) == [bench.SCALE_LAYOUT]
    assert topo.default_layout == bench.SCALE_LAYOUT
    (cluster,) = topo.layout()
    assert cluster.nodes == nodes
    assert {net.role for net in topo.networks} == {"management", "cluster"}
    assert all(net.subnet is None for net in topo.networks)  # still leased per lab


def test_scaling_topology_keeps_the_host_memory_check() -> None:
    text = bench.scaling_topology_text(topology.profiles()["default"].read_text(), 6)
    with pytest.raises(TopologyError, match="memory"):
        topology.parse(text, "<6 hypervisors>", host_memory_mib=4096)


def test_scaling_topology_needs_a_hypervisor() -> None:
    with pytest.raises(ValueError):
        bench.scaling_topology_text(topology.profiles()["default"].read_text(), 0)


# Figures -----------------------------------------------------------------------------------------


def _phase(name: str, seconds: float) -> dict[str, Any]:
    return {"name": name, "parent": None, "start": "2026-01-01T00:00:00.000Z",
            "seconds": seconds, "outcome": "passed", "error": None, "metrics": {}}


def test_bootstrap_breakdown_reads_init_node_adds_and_verify() -> None:
    phases = [
        _phase("save snapshot booted", 3.21),
        _phase("cluster1: prepare 3 nodes", 2.0),
        _phase("cluster1: gnt-cluster init", 45.4242),
        _phase("cluster1: gnt-node add node2.lab", 58.2),
        _phase("cluster1: gnt-node add node2.lab: before Ganeti received its first job", 33.1),
        _phase("cluster1: gnt-node add node2.lab: Ganeti job 3 (NODE_ADD(node2.lab)) queued",
               2.5),
        _phase("cluster1: gnt-node add node2.lab: Ganeti job 3 (NODE_ADD(node2.lab)) ran",
               23.6),
        _phase("cluster1: gnt-node add node3.lab", 57.1),
        _phase("cluster1: gnt-cluster verify", 12.5),
        _phase("cluster1: gnt-cluster verify: before Ganeti received its first job", 8.0),
        _phase("cluster1: gnt-cluster verify: Ganeti job 6 (CLUSTER_VERIFY) queued", 4.0),
        _phase("cluster1: gnt-cluster verify: Ganeti job 6 (CLUSTER_VERIFY) ran", 7.7),
        _phase("cluster1: gnt-cluster verify: Ganeti job 8 (CLUSTER_VERIFY_GROUP(g)) queued",
               15.0),
        _phase("cluster1: gnt-cluster verify: Ganeti job 8 (CLUSTER_VERIFY_GROUP(g)) ran", 36.7),
        _phase("other: gnt-cluster init", 1.0),
        _phase("cluster1", 180.0),
    ]
    out = bench.bootstrap_breakdown(phases, ["cluster1", "absent"])
    assert out["phases"]["save snapshot booted"] == 3.21
    c1 = out["clusters"]["cluster1"]
    assert c1 == {"init_seconds": 45.424,
                  "node_add_seconds": {"node2.lab": 58.2, "node3.lab": 57.1},
                  "verify_seconds": 12.5,
                  "ganeti_jobs": {
                      "node2.lab": {"before_first_job_seconds": 33.1,
                                    "jobs_queued_seconds": 2.5, "jobs_ran_seconds": 23.6},
                      "verify": {"before_first_job_seconds": 8.0,
                                 "jobs_queued_seconds": 19.0, "jobs_ran_seconds": 44.4}}}
    assert out["clusters"]["absent"] == {"init_seconds": None, "node_add_seconds": {},
                                         "verify_seconds": None, "ganeti_jobs": {}}
    json.dumps(out)


def test_ratios_compare_ours_with_the_baseline() -> None:
    lab = {"machines": 5, "hypervisors": 4, "layout": "one-cluster",
           "cold_start_to_ssh_seconds": 200.0,
           "bootstrap_one_cluster_seconds": 300.0, "per_test_reset_seconds": 10.0}
    base = {"machines": 5, "hypervisors": 4, "layout": "one-cluster", "total_seconds": 2000.0}
    r = bench.compute_ratios(lab, base)
    assert r["same_shape"] is True
    assert bench.compute_ratios({**lab, "hypervisors": 6}, base)["same_shape"] is False
    assert r["ours_cold_start_and_bootstrap_seconds"] == 500.0
    assert r["cold_start_and_bootstrap_over_baseline"] == 0.25
    assert r["baseline_over_cold_start_and_bootstrap"] == 4.0
    assert r["per_test_reset_over_baseline"] == 0.005
    assert r["baseline_over_per_test_reset"] == 200.0


def test_each_of_our_figures_against_its_baseline_counterpart() -> None:
    lab = {"cold_start_to_ssh_seconds": 200.0, "bootstrap_one_cluster_seconds": 300.0,
           "per_test_reset_seconds": 10.0, "snapshot_save_seconds": 5.0,
           "restore_to_verified_cluster_seconds": 50.0}
    base = {"total_seconds": 2000.0, "prepare_seconds": 1.0, "vagrant_up_seconds": 99.0,
            "provision_seconds": 1500.0, "settle_seconds": 100.0, "bootstrap_seconds": 300.0}
    images = {"cold_build_seconds": 100.0, "warm_build_seconds": 1.0}
    each = bench.compute_ratios(lab, base, images)["each_figure"]
    assert each["images.cold_build_seconds"]["baseline_figure"] == "baseline.provision_seconds"
    assert each["images.cold_build_seconds"]["baseline_over_ours"] == 15.0
    assert each["images.warm_build_seconds"]["baseline_over_ours"] == 1500.0
    up = each["lab.cold_start_to_ssh_seconds"]
    assert up["baseline_seconds"] == 1700.0 and up["baseline_over_ours"] == 8.5
    assert each["lab.bootstrap_one_cluster_seconds"]["baseline_over_ours"] == 1.0
    assert each["lab.cold_start_and_bootstrap_seconds"]["baseline_over_ours"] == 4.0
    assert each["lab.per_test_reset_seconds"]["baseline_over_ours"] == 200.0
    assert each["lab.restore_to_verified_cluster_seconds"]["baseline_over_ours"] == 40.0
    assert all(e["why"] for e in each.values())
    two = each["lab.bootstrap_two_clusters_seconds"]  # not measured: said, no ratio
    assert "baseline_over_ours" not in two
    assert two["missing"] == "lab.bootstrap_two_clusters_seconds"
    # a baseline figure missing names the baseline key
    del base["settle_seconds"]
    up = bench.compute_ratios(lab, base, images)["each_figure"]["lab.cold_start_to_ssh_seconds"]
    assert up["missing"] == "baseline.up_to_settled_seconds"


def test_ratios_say_why_they_are_missing() -> None:
    assert bench.compute_ratios({}, {"skipped": True, "reason": "--smallest"}) == {
        "skipped": True, "reason": "baseline skipped: --smallest"}
    r = bench.compute_ratios({"cold_start_to_ssh_seconds": 1.0, "error": "x"},
                             {"total_seconds": 5.0, "error": "y"})
    assert r["skipped"] is True
    assert "lab.bootstrap_one_cluster_seconds" in r["reason"]
    assert "baseline.total_seconds" not in r["reason"]


def test_skip_reasons() -> None:
    assert bench.skip_reason(_args(), "baseline") is None
    assert bench.skip_reason(_args(smallest=True), "scaling") == "--smallest"
    assert bench.skip_reason(_args(skip_cold_build=True), "cold_build") == "--skip-cold-build"
    assert bench.skip_reason(_args(skip_cold_build=True), "baseline") is None
    assert bench.skip_reason(argparse.Namespace(), "scaling") is None


def test_skipped_sections_touch_nothing() -> None:
    # No store, no timings, no libvirt: a skipped section must not need any of them.
    none: Any = None
    assert bench.baseline_section(_args(skip_baseline=True), none, none, none) == {
        "skipped": True, "reason": "--skip-baseline"}
    assert bench.scaling_section(_args(smallest=True), none, none) == {
        "skipped": True, "reason": "--smallest"}


def test_median_and_rounding() -> None:
    assert bench.median([3.0, 1.0, 2.0]) == 2.0
    assert bench.median([1.00001, 1.00002, 9.0]) == 1.0


def test_timed_records_seconds_or_the_failed_step() -> None:
    doc: dict[str, Any] = {}
    with bench._timed(doc, "a_seconds"):
        time.sleep(0.05)
    assert 0.05 <= doc["a_seconds"] < 5
    with pytest.raises(RuntimeError), bench._timed(doc, "outer"), bench._timed(doc, "inner"):
        raise RuntimeError("boom")
    assert doc["failed_step"] == "inner"
    assert "outer" not in doc and "inner" not in doc


def test_error_text_is_one_string_with_the_type() -> None:
    assert bench._error(RuntimeError("boom\n  fix: x")) == "RuntimeError: boom\n  fix: x"
    assert bench._error(KeyError()) == "KeyError"
    assert len(bench._error(ValueError("x" * 10_000))) == 4000


def test_remove_tree(tmp_path: Path) -> None:
    victim = tmp_path / "cold" / "images"
    victim.mkdir(parents=True)
    (victim / "f").write_text("x")
    bench._remove_tree(tmp_path / "cold")
    assert not (tmp_path / "cold").exists()
    bench._remove_tree(tmp_path / "absent")  # nothing to do


def test_baseline_method_says_what_is_excluded() -> None:
    assert "NOT timed" in bench.BASELINE_METHOD
    assert "download" in bench.BASELINE_METHOD


# The orchestration, with every lab, image and libvirt call faked -------------------------------


class _Clock:
    """The monotonic clock of a faked bench run: it moves only when a faked step takes time,
    so every figure the bench computes is known exactly."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


CLOCK = _Clock()
# What each faked step takes, in seconds.
PREPARE, BOOT, COMMAND, INIT, NODE_ADD, VERIFY = 2.0, 40.0, 0.5, 10.0, 20.0, 6.0
SAVE, RESTORE, HEALTH, RAPI_UP, SETTLE, DESTROY = 5.0, 3.0, 0.25, 1.0, 7.0, 1.5
BOOTSTRAP = INIT + NODE_ADD + VERIFY  # a faked cluster of two nodes
CACHE_STORE, CACHE_COPY = 12.0, 8.0


class _FakeMachine:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def wait_for_ssh(self, timeout: float = 0) -> float:
        return 0.0

    def put(self, local: Path, remote: str) -> None:
        self.log.append(f"{self.name}: put {local.name}")

    def succeed(self, command: str, timeout: float = 0) -> str:
        self.log.append(f"{self.name}: {command.split()[0]}")
        CLOCK.advance(COMMAND)
        return "3.0.2-3" if command.startswith("dpkg-query") else ""

    def write_file(self, remote: str, text: str, mode: int = 0o644) -> None:
        self.log.append(f"{self.name}: write {remote}")


class _FakeLab:
    made: list[str] = []

    def __init__(self, topo: topology.Topology, name: str) -> None:
        from types import SimpleNamespace

        self.name, self.accelerator, self.log = name, "tcg: fake", []
        self.dir = Path("/nonexistent/ganeti-lab") / name  # a lab without a Ganeti patch
        self.plan = SimpleNamespace(
            topology=topo.source, console_dir="/nowhere",
            layouts={k: [SimpleNamespace(name=c.name, version=c.version) for c in v]
                     for k, v in topo.layouts.items()})
        self.hypervisors = [_FakeMachine(m.name, self.log) for m in topo.hypervisors]

    @classmethod
    def prepare(cls, topo: topology.Topology, name: str, store: Any) -> _FakeLab:
        cls.made.append(name)
        CLOCK.advance(PREPARE)
        return cls(topo, name)

    def up(self, steps: Any, then: Any = None) -> None:  # settling is not faked: no machines
        with steps.step("boot"):
            CLOCK.advance(BOOT)

    def on_all(self, fn: Any, machines: Any = None) -> dict[str, Any]:
        return {m.name: fn(m) for m in self.hypervisors}

    def vagrant_env(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        pass


@pytest.fixture
def faked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, list[str]]:
    import functools
    from types import SimpleNamespace

    from lab import virt
    from lab.accel import Accelerator

    calls: dict[str, list[str]] = {"destroyed": [], "layouts": [], "restores": []}
    _FakeLab.made = []
    monkeypatch.setattr(time, "monotonic", CLOCK)
    monkeypatch.setenv("GANETI_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(topology, "host_memory", lambda: BIG_HOST)  # any CI host fits
    # Each fake replaces a name in the module of lab.bench that looks it up.
    monkeypatch.setattr("lab.bench.labs.Lab", _FakeLab)
    monkeypatch.setattr("lab.bench.baseline.Lab", _FakeLab)
    monkeypatch.setattr("lab.bench.host.host_facts", lambda: {"cores": 2})
    monkeypatch.setattr(accel, "detect",
                        functools.cache(lambda kernel=None: Accelerator("tcg", "fake")))
    monkeypatch.setattr("lab.bench.images.build_images", lambda store, **kw: {})
    monkeypatch.setattr("lab.bench.labs._boxes_of", lambda topo, store: [])
    for where in ("lab.bench.labs", "lab.bench.baseline"):
        monkeypatch.setattr(f"{where}._box_volumes_present",
                            lambda boxes: {b: True for b in boxes})
    monkeypatch.setattr("lab.bench.cleanup.LeaseBook",
                        lambda: SimpleNamespace(get=lambda name: None))
    monkeypatch.setattr(virt, "find", lambda prefix="": virt.LabObjects())
    def destroy(name: str) -> None:
        calls["destroyed"].append(name)
        CLOCK.advance(DESTROY)

    monkeypatch.setattr("lab.bench.cleanup.destroy", destroy)

    def ensure_layout(lab: _FakeLab, layout: str, timings: Any) -> None:
        assert not statecache.enabled(), "the bench times real bootstraps, never the cache's"
        calls["layouts"].append(f"{lab.name}:{layout}")
        for cp in lab.plan.layouts[layout]:  # one after the other: the figure is their sum
            with timings.phase(f"{cp.name}: gnt-cluster init"):
                CLOCK.advance(INIT)
            with timings.phase(f"{cp.name}: gnt-node add nodeX.lab"):
                CLOCK.advance(NODE_ADD)
            with timings.phase(f"{cp.name}: gnt-cluster verify"):
                CLOCK.advance(VERIFY)

    monkeypatch.setattr("lab.bench.labs.ensure_layout", ensure_layout)
    monkeypatch.setattr("lab.bench.baseline.form_layout", ensure_layout)
    def verify() -> SimpleNamespace:
        CLOCK.advance(VERIFY)
        return SimpleNamespace(ok=True, warnings=["w"], errors=[], output="")

    def save(lab: Any, name: str) -> SimpleNamespace:
        CLOCK.advance(SAVE)
        return SimpleNamespace(seconds=SAVE - 0.5)  # libvirt's part of it

    def healthy(cluster: Any) -> SimpleNamespace:
        CLOCK.advance(HEALTH)
        return SimpleNamespace(seconds=HEALTH)

    def rapi_answers(cluster: Any) -> int:
        CLOCK.advance(RAPI_UP)
        return 2

    monkeypatch.setattr("lab.bench.labs.clusters_of", lambda lab, layout: {
        cp.name: SimpleNamespace(verify=verify) for cp in lab.plan.layouts[layout]})
    monkeypatch.setattr(snapshots, "save", save)
    monkeypatch.setattr(snapshots, "delete", lambda lab, name: None)
    monkeypatch.setattr("lab.bench.labs.ensure_healthy", healthy)
    monkeypatch.setattr("lab.bench.labs.wait_rapi", rapi_answers)

    def restore(lab: Any, name: str) -> snapshots.Restored:
        calls["restores"].append(name)
        CLOCK.advance(RESTORE)
        return snapshots.Restored(snapshots.Snapshot(name, "then", 1.0, ["m"]),
                                  RESTORE - 1.0, 1.0)

    monkeypatch.setattr(snapshots, "restore", restore)

    def store(lab: Any, state: str, snapshot: str, patch: str | None) -> SimpleNamespace:
        calls["stored"] = [state, snapshot, os.environ[statecache.DIR_ENV]]
        CLOCK.advance(CACHE_STORE)
        return SimpleNamespace(size=3 * 2**30)

    def start_from(entry: Any, lab: Any) -> snapshots.Restored:
        CLOCK.advance(CACHE_COPY)
        return restore(lab, "cluster-one-cluster-3.0")

    monkeypatch.setattr(statecache, "store", store)
    monkeypatch.setattr(statecache, "start_from", start_from)
    monkeypatch.setattr("lab.bench.baseline.baseline_inputs", lambda store, steps: (
        tmp_path, {"box": "ganeti-lab-base-k", "debs": ["a_1_amd64.deb"], "debs_bytes": 2**20},
        True))
    monkeypatch.setattr("lab.bench.baseline._use_box", lambda lab, box, directory: None)
    monkeypatch.setattr(virt, "ensure_default_pool", lambda: None)
    monkeypatch.setattr(virt, "ensure_networks", lambda plan: None)
    monkeypatch.setattr(shell, "run", lambda argv, **kw: CLOCK.advance(
        BOOT if argv[:2] == ["vagrant", "up"] else 0))
    monkeypatch.setattr("lab.bench.baseline.settle", lambda lab: CLOCK.advance(SETTLE))
    return calls


def test_run_bench_assembles_every_section_with_fakes(faked: dict[str, list[str]]) -> None:
    doc = bench.run_bench(_args(skip_cold_build=True))
    json.dumps(doc)
    assert doc["host"]["accelerator"] == {"name": "tcg", "reason": "fake",
                                          "probe_seconds": doc["host"]["accelerator"][
                                              "probe_seconds"]}
    assert doc["images"]["cold_build_skipped"] == "--skip-cold-build"

    lab = doc["lab"]
    assert "error" not in lab, lab.get("error")
    assert lab["hypervisors"] == 4
    assert lab["up_steps"].keys() == {"boot"}
    assert lab["bootstrap"]["clusters"]["cluster1"]["node_add_seconds"].keys() == {"nodeX.lab"}
    assert set(lab["bootstrap_two_clusters"]["clusters"]) == {"rack1", "rack2"}
    assert len(lab["per_test_reset_samples"]) == bench.RESET_SAMPLES
    assert lab["verify_after_restore"] == {"cluster1": {"ok": True, "warnings": 1}}
    # Two for the verified and healthy figures, the reset samples, two for the state cache.
    assert faked["restores"] == ["cluster-one-cluster-3.0"] * (4 + bench.RESET_SAMPLES)
    # The bench's own cache, gone afterwards; the user's setting is left as it was.
    state, snapshot, directory = faked["stored"]
    assert state == snapshot == "cluster-one-cluster-3.0"
    assert not Path(directory).exists() and statecache.DIR_ENV not in os.environ
    assert lab["state_cache_store_seconds"] == CACHE_STORE
    assert lab["state_cache_start_to_healthy_seconds"] == CACHE_COPY + RESTORE + HEALTH
    assert lab["state_cache_start_steps"] == {"copy": CACHE_COPY, "restore": RESTORE,
                                              "health": HEALTH}
    assert lab["state_cache_entry_gib"] == 3.0
    assert lab["prepare_seconds"] == PREPARE and lab["up_seconds"] == BOOT
    assert lab["cold_start_to_ssh_seconds"] == PREPARE + BOOT
    assert lab["bootstrap_one_cluster_seconds"] == BOOTSTRAP
    assert lab["bootstrap_two_clusters_seconds"] == 2 * BOOTSTRAP
    assert lab["snapshot_save_seconds"] == SAVE
    assert lab["restore_to_verified_cluster_seconds"] == RESTORE + VERIFY
    assert lab["restore_to_healthy_seconds"] == RESTORE + HEALTH
    assert lab["health_check_seconds"] == {"cluster1": HEALTH}
    assert lab["per_test_reset_samples"] == [RESTORE + RAPI_UP] * bench.RESET_SAMPLES
    assert lab["per_test_reset_seconds"] == RESTORE + RAPI_UP
    assert lab["per_test_reset_steps"] == [
        {"revert": RESTORE - 1.0, "machines_answer": 1.0, "rapi": RAPI_UP}] * bench.RESET_SAMPLES

    base = doc["baseline"]
    assert "error" not in base, base.get("error")
    assert base["method"] == bench.BASELINE_METHOD
    assert list(base["provision"]) == ["node1", "node2", "node3", "node4"]
    assert base["provision"]["node1"]["ganeti_version"] == "3.0.2-3"
    # Each hypervisor: unpack the .debs, install them, make the recipe's directory (its
    # script and files, as the image build has them), run the script, read the version: five
    # faked commands.
    provision = 4 * 5 * COMMAND
    assert {k: base[k] for k in ("prepare_seconds", "vagrant_up_seconds", "provision_seconds",
                                 "settle_seconds", "bootstrap_seconds", "total_seconds")} == {
        "prepare_seconds": PREPARE, "vagrant_up_seconds": BOOT, "provision_seconds": provision,
        "settle_seconds": SETTLE, "bootstrap_seconds": BOOTSTRAP,
        "total_seconds": PREPARE + BOOT + provision + SETTLE + BOOTSTRAP}
    assert base["bootstrap"]["clusters"]["cluster1"]["init_seconds"] == INIT

    ratios = doc["ratios"]
    assert ratios["same_shape"] is True
    ours = PREPARE + BOOT + BOOTSTRAP
    assert ratios["cold_start_and_bootstrap_over_baseline"] == round(
        ours / base["total_seconds"], 4)
    each = ratios["each_figure"]
    assert all(("baseline_over_ours" in e) != ("missing" in e) for e in each.values()), each
    assert each["images.cold_build_seconds"]["missing"] == "images.cold_build_seconds"
    # Both bootstraps run the same faked steps.
    assert each["lab.bootstrap_one_cluster_seconds"]["baseline_over_ours"] == 1.0
    assert each["lab.state_cache_start_to_healthy_seconds"]["baseline_over_ours"] == round(
        base["total_seconds"] / (CACHE_COPY + RESTORE + HEALTH), 2)
    assert ratios["per_test_reset_over_baseline"] == round(
        (RESTORE + RAPI_UP) / base["total_seconds"], 5)

    scaling = doc["scaling"]
    assert [x["hypervisors"] for x in scaling["labs"]] == list(bench.SCALE_SIZES)
    assert all("error" not in x for x in scaling["labs"]), scaling["labs"]
    pair = scaling["two_tiny_labs_at_once"]
    assert "error" not in pair, pair.get("error")
    assert set(pair["labs"]) == set(bench.PAIR_NAMES)
    # The two boots share the faked clock: each took one boot, or two if they overlapped.
    assert all(BOOT <= v["up_seconds"] <= 2 * BOOT for v in pair["labs"].values()), pair
    assert pair["up_wall_seconds"] == 2 * BOOT

    made = [bench.LAB_NAME, bench.BASELINE_NAME,
            *(f"bench-scale-{n}" for n in bench.SCALE_SIZES), *bench.PAIR_NAMES]
    assert _FakeLab.made == made
    assert sorted(faked["destroyed"]) == sorted(made)  # everything made is destroyed


def test_summary_of_a_full_document(faked: dict[str, list[str]]) -> None:
    from lab.bench.summary import markdown, rows

    doc = bench.run_bench(_args(skip_cold_build=True))
    table = dict(rows(doc))
    assert table["image build, cold cache (downloads included)"] == "skipped: --skip-cold-build"
    measured = {k: v for k, v in table.items() if not k.startswith("image build, cold")}
    assert not [k for k, v in measured.items() if v.startswith(("skipped", "error"))], measured
    assert table["baseline / our per-test reset"].endswith("x")
    # Where the resets went, each step's median, in the row's name.
    assert f"per-test reset (median): revert {RESTORE - 1.0:.1f}, machines answer 1.0, " \
           f"rapi {RAPI_UP:.1f}" in table
    assert [k for k in table if k.startswith("scaling,")] == [
        f"scaling, {n} hypervisors: cold start / bootstrap" for n in bench.SCALE_SIZES]
    text = markdown(doc)
    assert text.splitlines()[2:4] == ["| figure | seconds |", "| --- | --- |"]
    assert "accelerator tcg" in text.splitlines()[0]


def test_summary_says_why_a_figure_is_missing(faked: dict[str, list[str]]) -> None:
    from lab.bench.summary import rows

    table = dict(rows(bench.run_bench(_args(smallest=True))))
    assert table["baseline: plain vagrant up + apt/shell provisioning + init + node adds"] == \
        "skipped: --smallest"
    assert table["ratios to the baseline"] == "skipped: baseline skipped: --smallest"
    assert table["scaling (2/4/6 hypervisors, two labs at once)"] == "skipped: --smallest"


def test_summary_shows_the_error_of_a_scaling_step_that_failed() -> None:
    """A scaling lab that came up but failed its bootstrap (as the 4-hypervisor one of an
    earlier full run did) shows that error next to the cold start that was measured."""
    from lab.bench.summary import rows

    error = "CommandFailed: node1: `ssh node3.lab 'cat /etc/ssh/*.pub'` exited 255"
    doc = {"scaling": {"labs": [
        {"hypervisors": 2, "cold_start_to_ssh_seconds": 96.0,
         "bootstrap_one_cluster_seconds": 154.2},
        {"hypervisors": 4, "cold_start_to_ssh_seconds": 172.0,
         "failed_step": "bootstrap_one_cluster_seconds", "error": error + "\nmore lines"},
        {"hypervisors": 6, "error": "LabError: the name is held"}]}}
    table = dict(rows(doc))
    assert table["scaling, 2 hypervisors: cold start / bootstrap"] == "96.0 / 154.2"
    assert table["scaling, 4 hypervisors: cold start / bootstrap"] == f"172.0 / error: {error}"
    assert table["scaling, 6 hypervisors"] == "error: LabError: the name is held"


def test_the_committed_benchmark_document_has_every_figure() -> None:
    """docs/bench-20261124.json is the README's table: one run in which nothing failed."""
    import json

    from lab.bench.summary import markdown, rows

    doc = json.loads((Path(__file__).parent.parent / "docs" / "bench-20261124.json").read_text())
    failed = {k: v for k, v in rows(doc) if v.startswith(("error", "skipped", "not measured"))
              or "error" in v}
    assert failed == {}
    assert "interrupted" not in doc and doc["host"]["accelerator"]["name"] in ("kvm", "tcg")
    assert "| our figure |" in markdown(doc)


def test_summarize_a_missing_document_names_the_fix(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "lab.cli", "bench", "--summarize",
                          str(tmp_path / "nope.json")], capture_output=True, text=True)
    assert out.returncode != 0
    assert "nope.json" in out.stderr and "ganeti-lab bench --output FILE" in out.stderr


def test_a_failing_step_is_recorded_and_the_lab_still_destroyed(
        faked: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    from lab.errors import LabError

    def broken(lab: Any, name: str) -> None:
        raise LabError("restore went wrong", "fix it")

    monkeypatch.setattr(snapshots, "restore", broken)
    doc = bench.run_bench(_args(smallest=True))
    lab = doc["lab"]
    assert lab["error"].startswith("LabError: restore went wrong")
    assert lab["failed_step"] == "restore_to_verified_cluster_seconds"
    assert lab["snapshot_save_seconds"] == SAVE  # what was measured before is kept
    assert faked["destroyed"] == [bench.LAB_NAME]
    assert lab["destroy_seconds"] == DESTROY
    assert doc["baseline"] == {"skipped": True, "reason": "--smallest"}


def test_an_interrupt_keeps_what_was_measured_and_destroys_the_lab(
        faked: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    from lab.bench.summary import markdown

    def interrupted(lab: Any, layout: str, timings: Any) -> None:
        raise KeyboardInterrupt("signal 15")  # what sigterm_as_interrupt raises on SIGTERM

    monkeypatch.setattr("lab.bench.labs.ensure_layout", interrupted)
    doc = bench.run_bench(_args(smallest=True))
    assert doc["interrupted"] == {"section": "lab", "signal": "signal 15"}
    assert doc["images"]["warm_build_seconds"] == 0.0  # measured before: kept
    assert "lab" not in doc and "scaling" not in doc
    assert faked["destroyed"] == [bench.LAB_NAME]
    assert doc["total_seconds"] == PREPARE + BOOT + DESTROY
    assert "**Interrupted** (signal 15) in section lab" in markdown(doc)


def test_an_interrupt_while_two_labs_boot_ends_their_boots_before_destroying_them(
        faked: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C reaches the main thread only; the labs booting in worker threads must stop
    booting (their `vagrant up` ended) before they are destroyed, or they leave machines."""
    import os
    import signal
    import subprocess
    import threading

    from lab.bench.labs import two_labs_at_once

    events: list[str] = []
    booting: list[subprocess.Popen[bytes]] = []

    class Booting(_FakeLab):
        def up(self, steps: Any, then: Any = None) -> None:
            proc = subprocess.Popen(["sleep", "120"])  # stands for `vagrant up`
            booting.append(proc)
            proc.wait()
            events.append(f"{self.name} boot ended {proc.returncode}")
            raise RuntimeError("vagrant up was killed")

    def interrupt_once_both_boot() -> None:
        while len(booting) < 2:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr("lab.bench.labs.Lab", Booting)
    monkeypatch.setattr("lab.bench.cleanup.destroy", lambda name: events.append(f"destroy {name}"))
    # A run started in the background of a non-interactive shell ignores SIGINT: give this
    # process the Ctrl-C a person's terminal would deliver, for the length of the test.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=interrupt_once_both_boot, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            two_labs_at_once(ImageStore())
    finally:
        signal.signal(signal.SIGINT, previous)
    ended = sorted(e for e in events if " boot ended " in e)
    assert ended == [f"{n} boot ended {-signal.SIGTERM}" for n in sorted(bench.PAIR_NAMES)]
    destroys = [e for e in events if e.startswith("destroy ")]
    assert destroys == [f"destroy {n}" for n in bench.PAIR_NAMES]
    assert events.index(destroys[0]) > max(events.index(e) for e in ended)


def test_a_lab_that_fails_to_close_is_still_destroyed(faked: dict[str, list[str]]) -> None:
    from lab.bench.cleanup import _destroy

    class Unclosable:
        def close(self) -> None:
            raise OSError("ssh transport already gone")

    doc: dict[str, Any] = {}
    _destroy("bench-x", Unclosable(), doc)  # type: ignore[arg-type]
    assert faked["destroyed"] == ["bench-x"]
    assert doc["destroy_seconds"] == DESTROY and "destroy_error" not in doc


def test_bootstrap_breakdown_of_an_unknown_layout_does_not_mask_the_error() -> None:
    from types import SimpleNamespace

    from lab.bench.figures import _bootstrap_figures
    from lab.timings import Timings

    lab = SimpleNamespace(plan=SimpleNamespace(layouts={}))
    out = _bootstrap_figures(Timings(Path("/nonexistent"), "r"), 0, lab, "nope")  # type: ignore[arg-type]
    assert out["error"].startswith("KeyError")


# The real thing, smallest settings ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.nightly
def test_smoke_smallest_bench_on_a_tiny_lab(lab_host: ImageStore, tmp_path: Path) -> None:
    """`ganeti-lab bench --smallest --output FILE`, the command itself, on a real tiny lab."""
    import subprocess
    import sys

    from lab import virt
    from lab.leases import LeaseBook

    out_file = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "lab.cli", "bench", "--smallest",
                           "--output", str(out_file)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)  # stdout is the one JSON document, nothing else
    assert json.loads(out_file.read_text()) == doc
    assert "| figure | seconds |" in proc.stderr  # the summary table goes to stderr
    assert doc["settings"]["smallest"] is True
    assert "interrupted" not in doc
    assert {"schema", "run_id", "host", "images", "lab", "baseline", "ratios", "scaling",
            "total_seconds"} <= set(doc)

    host = doc["host"]
    assert host["cores"] == os.cpu_count()
    assert host["accelerator"]["name"] in ("kvm", "tcg")
    assert host["accelerator"]["reason"]

    images = doc["images"]
    assert images["cold_build_seconds"] is None
    assert images["cold_build_skipped"] == "--smallest"
    assert isinstance(images["warm_build_seconds"], float)

    lab = doc["lab"]
    assert "error" not in lab, lab["error"]
    assert lab["hypervisors"] == 1
    # Figures that contain others are at least their sum (0.01 s: each is rounded).
    assert lab["cold_start_to_ssh_seconds"] >= lab["prepare_seconds"] + lab["up_seconds"] - 0.01
    assert "SSH on every machine" in lab["up_steps"], lab["up_steps"]
    assert any(step.startswith("boot ") for step in lab["up_steps"]), lab["up_steps"]
    assert lab["up_seconds"] >= sum(lab["up_steps"].values()) - 0.01 * len(lab["up_steps"])
    assert len(lab["per_test_reset_samples"]) == bench.RESET_SAMPLES
    assert lab["per_test_reset_seconds"] == bench.median(lab["per_test_reset_samples"])
    assert all(v["ok"] for v in lab["verify_after_restore"].values())
    (cluster,) = lab["bootstrap"]["clusters"].values()
    assert lab["bootstrap_one_cluster_seconds"] >= (
        cluster["init_seconds"] + cluster["verify_seconds"] - 0.01)
    (health,) = lab["health_check_seconds"].values()
    assert lab["restore_to_healthy_seconds"] >= health - 0.01
    assert cluster["node_add_seconds"] == {}  # the tiny lab's cluster has one node
    assert lab["bootstrap_two_clusters_seconds"] is None
    assert lab["bootstrap_two_clusters_skipped"]
    assert "left_behind" not in lab

    assert doc["baseline"] == {"skipped": True, "reason": "--smallest"}
    assert doc["scaling"] == {"skipped": True, "reason": "--smallest"}
    assert doc["ratios"]["skipped"] is True

    assert virt.find(bench.LAB_NAME).empty()
    assert LeaseBook().get(bench.LAB_NAME) is None


def _bench_doc(**figures: float) -> dict[str, Any]:
    """A benchmark document holding only the given ``section__figure`` seconds."""
    doc: dict[str, Any] = {"kind": "ganeti-lab benchmark", "run_id": "r", "host": {"cores": 2}}
    for key, seconds in figures.items():
        section, figure = key.split("__")
        doc.setdefault(section, {})[figure] = seconds
    return doc


def test_a_run_against_an_earlier_one_and_the_goals() -> None:
    from lab.bench import reference

    ours = _bench_doc(lab__per_test_reset_seconds=10.0, lab__cold_start_to_ssh_seconds=100.0,
                      lab__bootstrap_one_cluster_seconds=400.0)
    earlier = _bench_doc(lab__per_test_reset_seconds=20.0, lab__cold_start_to_ssh_seconds=200.0,
                         images__cold_build_seconds=300.0)
    figures = reference.compare(ours, earlier, "earlier.json")["figures"]
    reset = figures["per-test reset (median)"]
    assert (reset["reference_over_ours"], reset["goal_seconds"], reset["goal_met"]) == (
        2.0, 5.0, False)
    cold = figures["cold start of the default lab to SSH, settled"]
    assert (cold["reference_over_ours"], cold["goal_met"]) == (2.0, True)
    assert figures["one-cluster bootstrap to a clean verify"]["missing"] == "the reference"
    assert figures["image build, cold cache"]["missing"] == "this run"
    assert figures["restore to a healthy cluster"]["goal_met"] is None  # not measured
    table = {row[0]: row[1:] for row in reference.rows(
        reference.compare(ours, earlier, "earlier.json"))}
    assert table["per-test reset (median)"] == ("10.0", "20.0", "2.0x", "<= 5 s: not met")
    assert table["image build, cold cache"] == ("-", "300.0", "not in this run", "")


def test_the_summary_shows_the_comparison() -> None:
    from lab.bench import reference
    from lab.bench.summary import markdown

    doc = _bench_doc(lab__per_test_reset_seconds=4.0)
    doc["against"] = reference.compare(doc, _bench_doc(lab__per_test_reset_seconds=8.0), "e.json")
    text = markdown(doc)
    assert "| figure | ours (s) | reference (s) | reference / ours | goal |" in text
    assert "| per-test reset (median) | 4.0 | 8.0 | 2.0x | <= 5 s: met |" in text
    doc["against"] = {"skipped": True, "reason": "no reference document"}
    assert "Against an earlier run: skipped: no reference document" in markdown(doc)


def test_the_default_reference_is_the_newest_committed_document() -> None:
    from lab.bench import reference

    newest = reference.default_reference()
    assert newest is not None and newest.parent.name == "docs"
    assert newest == sorted(newest.parent.glob("bench-*.json"))[-1]
    assert reference.load(newest)["kind"] == "ganeti-lab benchmark"


def test_a_bad_reference_is_refused_before_anything_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lab.errors import LabError

    ran: list[object] = []
    monkeypatch.setattr(bench, "host_section", lambda store: ran.append(store) or {})
    not_bench = tmp_path / "other.json"
    not_bench.write_text('{"kind": "something else"}')
    for path, message in ((tmp_path / "nope.json", "cannot read the reference"),
                          (not_bench, "is not a ganeti-lab benchmark document")):
        args = argparse.Namespace(against=str(path))
        with pytest.raises(LabError, match=message) as info:
            bench.run_bench(args)
        assert str(path) in str(info.value) and "--against" in (info.value.hint or "")
    assert ran == []


def test_a_run_is_compared_with_the_newest_committed_document(
        faked: dict[str, list[str]]) -> None:
    from lab.bench import reference

    doc = bench.run_bench(_args(skip_cold_build=True))
    against = doc["against"]
    assert against["reference"] == str(reference.default_reference())
    reset = against["figures"]["per-test reset (median)"]
    assert reset["ours_seconds"] == doc["lab"]["per_test_reset_seconds"]
    assert reset["reference_over_ours"] > 0 and reset["goal_seconds"] == 5.0


def test_the_bootstrap_row_splits_node_adds_into_client_and_job() -> None:
    from lab.bench.summary import _cluster_parts

    split = {"node2.lab": {"before_first_job_seconds": 33.1, "jobs_queued_seconds": 2.5,
                           "jobs_ran_seconds": 23.6},
             "node3.lab": {"before_first_job_seconds": 52.4, "jobs_queued_seconds": 3.9,
                           "jobs_ran_seconds": 49.1}}
    cluster = {"init_seconds": 65.7, "verify_seconds": 68.8,
               "node_add_seconds": {"node2.lab": 62.3, "node3.lab": 89.2}}
    assert _cluster_parts({"clusters": {"c1": cluster}}) == \
        " (init 66, node adds 62-89 each, verify 69)"
    assert _cluster_parts({"clusters": {"c1": {**cluster, "ganeti_jobs": split}}}) == \
        " (init 66, node adds 62-89 (client 33-52, Ganeti's job 24-49) each, verify 69)"


def test_the_baseline_can_run_without_the_lab_section(faked: dict[str, list[str]]) -> None:
    from lab.bench.summary import rows

    doc = bench.run_bench(_args(skip_cold_build=True, skip_lab=True, skip_scaling=True))
    assert doc["lab"] == {"skipped": True, "reason": "--skip-lab"}
    assert doc["settings"]["skip_lab"] is True
    assert doc["baseline"]["total_seconds"] > 0, doc["baseline"].get("error")
    assert _FakeLab.made == [bench.BASELINE_NAME]
    cold_start = [v for k, v in rows(doc) if k.startswith("lab cold start to SSH")]
    assert cold_start == ["skipped: --skip-lab"]
