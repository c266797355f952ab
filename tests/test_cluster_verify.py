"""`Cluster.verify` reading Ganeti's output: which errors are final and which are the transient
kind emulation causes (run again, logged). The master is a recording stand-in; real verify
runs are in tests/test_ganeti_clusters.py."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from lab.errors import LabError
from lab.ganeti.cluster import Cluster
from lab.remote import Result

CLEAN = "Thu Nov 26 06:18:00 2026 * Verifying cluster config\n"
BEHIND = ("Thu Nov 26 06:18:28 2026   - ERROR: cluster : File /var/lib/ganeti/config.data found "
          "with 2 different checksums (variant 1 on node2.lab, node3.lab; variant 2 on node1.lab, "
          "node4.lab)\n")
TIMEOUT = ("Thu Nov 26 06:18:28 2026   - ERROR: node node3.lab: while contacting node: Error 28: "
           "SSL connection timeout\n")
BROKEN = "Thu Nov 26 06:18:28 2026   - ERROR: node node2.lab: missing bridges: br0\n"


class Master:
    name = "node1"

    def __init__(self, verify_outputs: list[str]) -> None:
        self.outputs = verify_outputs
        self.commands: list[str] = []

    def run(self, command: str, timeout: float = 300.0) -> Result:
        self.commands.append(command)
        out = self.outputs.pop(0) if command == "gnt-cluster verify" else ""
        return Result(self.name, command, 1 if "ERROR" in out else 0, out, "", 0.1)

    def succeed(self, command: str, timeout: float = 300.0) -> str:
        result = self.run(command, timeout)
        assert result.ok
        return result.stdout


def cluster_with(master: Master) -> Cluster:
    plan = SimpleNamespace(name="c1", fqdn="c1.lab", master="node1.lab")
    lab = SimpleNamespace(machine=lambda name: master)
    return Cluster(lab, plan)  # type: ignore[arg-type]


def test_a_node_behind_gets_the_files_again_then_verify_runs_again(
        caplog: pytest.LogCaptureFixture) -> None:
    master = Master([CLEAN + BEHIND, CLEAN])
    with caplog.at_level(logging.WARNING):
        result = cluster_with(master).verify()
    assert result.ok
    assert master.commands == ["gnt-cluster verify", "gnt-cluster redist-conf",
                               "gnt-cluster verify"]
    assert "older copy of the cluster's files" in caplog.text
    assert "config.data found with 2 different checksums" in caplog.text


def test_an_rpc_timeout_runs_verify_again_without_redistributing() -> None:
    master = Master([TIMEOUT, CLEAN])
    assert cluster_with(master).verify().ok
    assert master.commands == ["gnt-cluster verify", "gnt-cluster verify"]


def test_a_real_error_is_final_at_once() -> None:
    master = Master([BROKEN + BEHIND])
    result = cluster_with(master).verify()
    assert not result.ok
    assert result.errors == [BROKEN.rstrip("\n"), BEHIND.rstrip("\n")]
    assert master.commands == ["gnt-cluster verify"]


def test_transient_errors_that_stay_are_reported_after_the_last_attempt() -> None:
    master = Master([BEHIND, BEHIND])
    result = cluster_with(master).verify(attempts=2)
    assert not result.ok
    assert result.errors == [BEHIND.rstrip("\n")]
    assert master.commands.count("gnt-cluster verify") == 2


def test_the_formation_verify_is_kept_with_the_cluster_and_read_back(tmp_path) -> None:
    master = Master([CLEAN + BEHIND])
    plan = SimpleNamespace(name="c1", fqdn="c1.lab", master="node1.lab")
    lab = SimpleNamespace(machine=lambda name: master, dir=tmp_path)
    cluster = Cluster(lab, plan)  # type: ignore[arg-type]
    with pytest.raises(LabError, match="no readable record of the verify that formed"):
        cluster.formation_verify()
    verdict = cluster.verify(attempts=1)
    cluster.record_formation_verify(verdict)
    again = Cluster(lab, plan).formation_verify()  # type: ignore[arg-type]
    assert again == verdict and not again.ok and len(again.errors) == 1
    (tmp_path / "clusters" / "c1" / "formation-verify.json").write_text("{half")
    with pytest.raises(LabError, match="form the layout again"):
        cluster.formation_verify()
