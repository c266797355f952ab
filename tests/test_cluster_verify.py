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


class Node:
    """A node whose ssconf copy catches up with the master's after ``behind`` checks."""

    def __init__(self, name: str, behind: int) -> None:
        self.name, self.behind, self.checks = name, behind, 0

    def run(self, command: str, timeout: float = 300.0, input: str | None = None,
            announce: bool = True) -> Result:
        if command.startswith("cd /var/lib/ganeti && md5sum ssconf_*"):
            return Result(self.name, command, 0, "abc  ssconf_node_list\n", "", 0.1)
        assert "md5sum --quiet -c -" in command and input == "abc  ssconf_node_list\n"
        self.checks += 1
        return Result(self.name, command, 0 if self.checks > self.behind else 1, "", "", 0.1)


def test_formation_waits_until_every_node_has_the_masters_ssconf() -> None:
    nodes = {n.name: n for n in (Node("node1", 0), Node("node2", 2), Node("node3", 0))}
    plan = SimpleNamespace(name="c1", fqdn="c1.lab", master="node1.lab",
                           nodes=["node1.lab", "node2.lab", "node3.lab"])
    lab = SimpleNamespace(machine=lambda name: nodes[name],
                          on_all=lambda fn, ms: {m.name: fn(m) for m in ms})
    cluster = Cluster(lab, plan)  # type: ignore[arg-type]
    cluster.wait_ssconf_current(list(nodes.values()), timeout=30)  # type: ignore[arg-type]
    # The master is the reference, never checked against itself; node2 was checked until
    # its copy matched.
    assert (nodes["node1"].checks, nodes["node2"].checks, nodes["node3"].checks) == (0, 3, 3)


def test_a_node_that_never_catches_up_is_named() -> None:
    nodes = {n.name: n for n in (Node("node1", 0), Node("node2", 10**6))}
    plan = SimpleNamespace(name="c1", fqdn="c1.lab", master="node1.lab",
                           nodes=["node1.lab", "node2.lab"])
    lab = SimpleNamespace(machine=lambda name: nodes[name],
                          on_all=lambda fn, ms: {m.name: fn(m) for m in ms})
    with pytest.raises(LabError, match="nodes still behind: node2"):
        Cluster(lab, plan).wait_ssconf_current(  # type: ignore[arg-type]
            list(nodes.values()), timeout=1)  # type: ignore[arg-type]
