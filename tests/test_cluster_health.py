"""The health check's reading of what it sees: each problem a restore can cause is named, the
same whether the nodes are looked at through their guest agents or over SSH (a lab whose
domains have no agent channel). Stand-ins play the master, the nodes, their agents and RAPI
here; a real restore runs the check before every `lab_reset` test
(tests/test_ganeti_clusters.py, scenarios/)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from lab.ganeti import health, upgrade
from lab.ganeti.cluster import Cluster
from lab.ganeti.nodes import SHARED_MOUNT
from lab.ganeti.rapi import RapiError
from lab.remote import Result

NODES = ["node1.lab", "node2.lab", "node3.lab"]


class Node:
    def __init__(self, name: str, skew: float = 0.0, mounted: bool = True,
                 unreachable: tuple[str, ...] = (), intent: str | None = None) -> None:
        self.name, self.skew, self.mounted, self.unreachable = name, skew, mounted, unreachable
        self.intent = intent  # the content of /var/lib/ganeti/intent-to-upgrade, if any

    def succeed(self, command: str, timeout: float = 300.0) -> str:
        assert command.startswith("date +%s.%N")
        out = f"{time.time() + self.skew:.3f}\n" + ("mounted" if self.mounted else "unmounted")
        if self.intent is not None and upgrade.INTENT in command:
            out += "\nhalf-done"
        return out

    def run(self, command: str, timeout: float = 300.0, announce: bool = True) -> Result:
        if command == f"cat {upgrade.INTENT}":
            return Result(self.name, command, 0 if self.intent else 1, self.intent or "", "",
                          0.1)
        if command.startswith("kill -0 "):
            return Result(self.name, command, 1, "", "no such process", 0.1)
        out = "\n".join(n for n in self.unreachable if n in command)
        return Result(self.name, command, 0, out, "", 0.1)


class Guest:
    """A node's guest agent: what the node knows, read without SSH."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def clock_skew(self) -> float:
        return self.node.skew

    def read(self, path: str) -> bytes | None:
        if path == "/proc/self/mounts":
            shared = f"service.lab:/srv/ganeti-shared {SHARED_MOUNT} nfs4 rw 0 0\n"
            return ("/dev/vda1 / ext4 rw 0 0\n" + (shared if self.node.mounted else "")
                    ).encode()
        if path == upgrade.INTENT:
            return None if self.node.intent is None else self.node.intent.encode()
        raise AssertionError(f"unexpected read of {path}")

    def run(self, argv: list[str], timeout: float = 60.0) -> Result:
        return Result(self.node.name, " ".join(argv), 0,
                      "\n".join(n for n in self.node.unreachable if n in argv[-1]), "", 0.1)


@pytest.fixture(autouse=True, params=["agent", "ssh"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs both ways: the nodes' guest agents, and SSH where there are none."""
    @contextlib.contextmanager
    def agents(plan: SimpleNamespace, names: list[str]) -> Iterator[dict[str, Guest | None]]:
        yield {n: Guest(plan.stand_ins[n]) if request.param == "agent" else None
               for n in names}

    monkeypatch.setattr(health.agent, "agents", agents)
    return str(request.param)


class Rapi:
    def __init__(self, nodes: list[dict[str, Any]], jobs: list[dict[str, Any]],
                 down: bool = False) -> None:
        self._nodes, self._jobs, self.down = nodes, jobs, down

    def version(self) -> int:
        if self.down:
            raise RapiError("GET", "/version", None, "connection refused")
        return 2

    def query(self, resource: str, fields: list[str]) -> list[dict[str, Any]]:
        assert resource == "node" and set(fields) <= {"name", "offline"}
        return self._nodes

    def jobs(self, bulk: bool = False) -> list[dict[str, Any]]:
        return self._jobs


def make_cluster(machines: dict[str, Node], rapi: Rapi) -> Cluster:
    lab = SimpleNamespace(
        plan=SimpleNamespace(stand_ins=machines),
        machine=lambda short: machines[short],
        on_all=lambda fn, ms: {m.name: fn(m) for m in ms})
    plan = SimpleNamespace(name="c1", fqdn="c1.lab", ip="10.0.0.100", master=NODES[0],
                           nodes=NODES, disk_templates=["plain", "sharedfile"])
    cluster = Cluster(lab, plan)  # type: ignore[arg-type]
    cluster._rapi = rapi  # type: ignore[assignment]
    return cluster


def healthy_nodes() -> list[dict[str, Any]]:
    return [{"name": n, "offline": False} for n in NODES]


def test_a_healthy_cluster_has_no_problems() -> None:
    machines = {n.split(".")[0]: Node(n.split(".")[0]) for n in NODES}
    found = health.check(make_cluster(machines, Rapi(healthy_nodes(), [{"id": 1,
                                                                          "status": "success"}])))
    assert found.ok, found.problems


def test_every_problem_is_named() -> None:
    machines = {"node1": Node("node1", unreachable=("node3.lab",)),
                "node2": Node("node2", skew=-3600.0),
                "node3": Node("node3", mounted=False)}
    nodes = healthy_nodes()[:2]
    nodes[1]["offline"] = True
    rapi = Rapi(nodes, [{"id": 7, "status": "running"}, {"id": 6, "status": "success"}])
    problems = health.check(make_cluster(machines, rapi)).problems
    assert "node3.lab: not in the cluster" in problems
    assert "node2.lab: offline" in problems
    assert "jobs not finished: 7 (running)" in problems
    assert "node3.lab: node daemon unreachable from the master node1.lab" in problems
    assert any(p.startswith("node2: clock -3600") for p in problems), problems
    assert "node3: /srv/ganeti/shared-file-storage is not mounted" in problems
    assert len(problems) == 6, problems


def test_rapi_down_is_one_problem_and_the_wait_names_it() -> None:
    machines = {n.split(".")[0]: Node(n.split(".")[0]) for n in NODES}
    cluster = make_cluster(machines, Rapi(healthy_nodes(), [], down=True))
    assert health.check(cluster).problems == ["RAPI at 10.0.0.100: connection refused"]
    with pytest.raises(health.UnhealthyCluster) as info:
        health.ensure_healthy(cluster, timeout=0.5)
    assert "cluster c1.lab is not healthy" in str(info.value)
    assert "RAPI at 10.0.0.100: connection refused" in str(info.value)


def test_a_half_done_upgrade_is_named_with_the_way_out() -> None:
    machines = {n.split(".")[0]: Node(n.split(".")[0]) for n in NODES}
    machines["node1"].intent = "3.0.2,3.1,4242"
    machines["node2"].intent = "3.0.2,3.1,4242"  # only the master's file counts
    problems = health.check(make_cluster(machines, Rapi(healthy_nodes(), []))).problems
    assert problems == [
        "node1: an upgrade from 3.0.2 to 3.1 (pid 4242, its process is gone) is half-done "
        "(/var/lib/ganeti/intent-to-upgrade); `gnt-cluster upgrade --resume` on the master "
        "completes it"]
