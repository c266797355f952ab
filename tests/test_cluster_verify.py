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


NAMES = ["node1.lab", "node2.lab", "node3.lab"]
SUMS = "abc  ssconf_node_list\ndef  config.data\n"


class Node:
    """A node whose copy of the cluster's files catches up with the master's after
    ``behind`` checks; as the master, its own ssconf lists every node after ``stale`` reads."""

    def __init__(self, name: str, behind: int, stale: int = 0, candidate: bool = True,
                 after_redist: bool = False, copy_fixes: bool = False) -> None:
        self.name, self.behind, self.stale, self.candidate = name, behind, stale, candidate
        self.after_redist, self.copy_fixes, self.copied = after_redist, copy_fixes, False
        self.checks, self.reads, self.inputs = 0, 0, []

    redists = 0

    def succeed(self, command: str, timeout: float = 300.0, input: str | None = None) -> str:
        if command == "gnt-cluster redist-conf":
            Node.redists += 1
            return ""
        if "tar -cf - ssconf_*" in command:
            return "UEFDS0VE"
        if command.startswith("base64 -d | tar -C /var/lib/ganeti"):
            assert input == "UEFDS0VE"
            self.copied = True
            return ""
        assert command.startswith("gnt-node list --no-headers")
        return "".join(f"{n}|N|{'Y' if n != 'node3.lab' or self.candidate else 'N'}\n"
                       for n in NAMES)

    def run(self, command: str, timeout: float = 300.0, input: str | None = None,
            announce: bool = True) -> Result:
        if "cat ssconf_node_list" in command:
            self.reads += 1
            listed = NAMES if self.reads > self.stale else NAMES[:-1]
            return Result(self.name, command, 0, "\n".join(listed + listed) + "\n", "", 0.1)
        if command.endswith("md5sum ssconf_* config.data"):
            return Result(self.name, command, 0, SUMS, "", 0.1)
        assert "md5sum --quiet -c -" in command
        self.inputs.append(input)
        self.checks += 1
        caught_up = (self.checks > self.behind or (self.after_redist and Node.redists > 0)
                     or (self.copy_fixes and self.copied))
        return Result(self.name, command, 0 if caught_up else 1, "", "", 0.1)


def _cluster(nodes: dict[str, Node]) -> Cluster:
    plan = SimpleNamespace(name="c1", fqdn="c1.lab", master="node1.lab",
                           nodes=[f"{n}.lab" for n in nodes])
    lab = SimpleNamespace(machine=lambda name: nodes[name],
                          on_all=lambda fn, ms: {m.name: fn(m) for m in ms})
    return Cluster(lab, plan)  # type: ignore[arg-type]


def test_formation_waits_until_every_node_has_the_masters_files() -> None:
    nodes = {n.name: n for n in (Node("node1", 0), Node("node2", 2),
                                 Node("node3", 0, candidate=False))}
    nodes["node1"].candidate = False  # the master answers gnt-node list: node3 is no candidate
    _cluster(nodes).wait_ssconf_current(list(nodes.values()), timeout=30)  # type: ignore[arg-type]
    # The master is the reference, never checked against itself; node2 was checked until
    # its copy matched. A candidate compares config.data too, node3 (no candidate) only ssconf.
    assert (nodes["node1"].checks, nodes["node2"].checks, nodes["node3"].checks) == (0, 3, 3)
    assert nodes["node2"].inputs[-1] == SUMS
    assert nodes["node3"].inputs[-1] == "abc  ssconf_node_list\n"


def test_a_master_whose_own_ssconf_lacks_a_node_is_waited_for() -> None:
    nodes = {n.name: n for n in (Node("node1", 0, stale=2), Node("node2", 0), Node("node3", 0))}
    _cluster(nodes).wait_ssconf_current(list(nodes.values()), timeout=30)  # type: ignore[arg-type]
    # Nobody was compared with the master's copy until that copy listed every node.
    assert nodes["node1"].reads == 3 and nodes["node2"].checks == 1


def test_a_node_ganeti_never_copied_to_gets_a_redist_conf(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(Node, "redists", 0)
    monkeypatch.setattr("lab.ganeti.cluster.REDIST_AFTER", 1.0)
    nodes = {n.name: n for n in (Node("node1", 0), Node("node2", 10**6, after_redist=True),
                                 Node("node3", 0))}
    with caplog.at_level(logging.WARNING):
        _cluster(nodes).wait_ssconf_current(  # type: ignore[arg-type]
            list(nodes.values()), timeout=30)  # type: ignore[arg-type]
    assert Node.redists == 1
    assert "node2 still behind the master" in caplog.text and "redist-conf" in caplog.text


def test_a_node_that_never_catches_up_is_named(monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(Node, "redists", 0)
    nodes = {n.name: n for n in (Node("node1", 0), Node("node2", 10**6))}
    with caplog.at_level(logging.WARNING):
        _cluster(nodes).wait_ssconf_current(  # type: ignore[arg-type]
            list(nodes.values()), timeout=1)  # type: ignore[arg-type]
    assert Node.redists == 1  # Ganeti's own repair was tried, then the master's files
    assert nodes["node2"].copied
    # Then the caller's verify judges; the node is named.
    assert "node2 still behind the master; going on" in caplog.text


def test_an_ssconf_ganeti_never_sends_again_is_copied_from_the_master(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(Node, "redists", 0)
    monkeypatch.setattr("lab.ganeti.cluster.REDIST_AFTER", 1.0)
    nodes = {n.name: n for n in (Node("node1", 0), Node("node2", 0),
                                 Node("node3", 10**6, copy_fixes=True))}
    with caplog.at_level(logging.WARNING):
        _cluster(nodes).wait_ssconf_current(  # type: ignore[arg-type]
            list(nodes.values()), timeout=2)  # type: ignore[arg-type]
    assert Node.redists == 1
    assert nodes["node3"].copied and not nodes["node2"].copied
    assert "node3 still behind after redist-conf; copying the master's ssconf" in caplog.text
    assert "going on" not in caplog.text


def test_a_master_that_never_lists_a_node_is_named(caplog: pytest.LogCaptureFixture) -> None:
    nodes = {n.name: n for n in (Node("node1", 0, stale=10**6), Node("node2", 0),
                                 Node("node3", 0))}
    redists = Node.redists
    with caplog.at_level(logging.WARNING):
        _cluster(nodes).wait_ssconf_current(  # type: ignore[arg-type]
            list(nodes.values()), timeout=1)  # type: ignore[arg-type]
    assert Node.redists == redists + 1  # the master's own copy comes the same way
    assert "node1 (its ssconf lacks node3.lab) still behind the master; going on" in caplog.text


def test_a_master_behind_itself_gets_a_redist_conf_too(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Node, "redists", 0)
    monkeypatch.setattr("lab.ganeti.cluster.REDIST_AFTER", 1.0)
    master = Node("node1", 0, stale=10**6)
    master.run = _catching_up_after_redist(master.run)  # type: ignore[method-assign]
    nodes = {n.name: n for n in (master, Node("node2", 0), Node("node3", 0))}
    _cluster(nodes).wait_ssconf_current(list(nodes.values()), timeout=30)  # type: ignore[arg-type]
    assert Node.redists == 1


def _catching_up_after_redist(run):  # type: ignore[no-untyped-def]
    """A master whose own ssconf lists every node once redist-conf ran."""
    def wrapped(command: str, **kwargs):  # type: ignore[no-untyped-def]
        if "cat ssconf_node_list" in command and Node.redists:
            listed = NAMES + NAMES
            return Result("node1", command, 0, "\n".join(listed) + "\n", "", 0.1)
        return run(command, **kwargs)
    return wrapped


def test_a_failed_formation_keeps_what_explains_it_before_undoing_it(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The "booted" snapshot's restore takes the nodes' logs back: the failure's artifacts
    are collected before it, and the formation's own error is the one raised."""
    from lab.ganeti import bootstrap

    order: list[str] = []
    lab = SimpleNamespace(name="t", dir=tmp_path,
                          plan=SimpleNamespace(default_layout="one", layouts={"one": []}))
    monkeypatch.setattr(bootstrap.snapshots, "has", lambda lab, name: name == "booted")
    monkeypatch.setattr(bootstrap.snapshots, "restore",
                        lambda lab, name: order.append(f"restore {name}"))

    def form(lab: object, layout: str, timings: object) -> None:
        order.append(f"form {layout}")
        raise LabError("cluster1: gnt-cluster verify found errors")

    def collect() -> None:
        order.append("collect")
        raise OSError("disk full")  # a failed collection never hides the formation's error

    monkeypatch.setattr(bootstrap, "form_layout", form)
    with pytest.raises(LabError, match="verify found errors"):
        bootstrap.ensure_layout(lab, "one", before_restore=collect)  # type: ignore[arg-type]
    assert order == ["form one", "collect", "restore booted"]
