"""The pure parts of the upgrade, roll and load helpers: how an instance is moved, how a load
is spread, which parameters changed, how downtime is counted. The scenarios run them on a real
cluster (scenarios/test_upgrade.py, scenarios/test_roll_and_deploy.py)."""

from __future__ import annotations

import threading
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

from lab.ganeti import roll, upgrade
from lab.ganeti.load import KINDS, mix
from lab.ganeti.rapi import RapiError

NODES = ["node1.lab", "node2.lab", "node3.lab", "node4.lab"]


@pytest.mark.parametrize(("template", "running", "how"), [
    ("sharedfile", True, "live migration"),
    ("sharedfile", False, "failover"),
    ("drbd", True, "live migration"),
    ("plain", True, "move"),
    ("plain", False, "move"),
    ("file", True, "move"),
])
def test_how_an_instance_leaves_its_node(template: str, running: bool, how: str) -> None:
    assert roll.how_to_move(template, running) == how


def test_a_load_for_one_node_holds_every_kind_there() -> None:
    placed = mix(["node1.lab"])
    assert [(p.template, p.running) for p in placed] == KINDS
    assert {p.pnode for p in placed} == {"node1.lab"}


def test_a_load_spread_over_every_node_gives_each_node_every_kind() -> None:
    placed = mix(NODES, len(NODES))
    assert len(placed) == len(KINDS) * len(NODES)
    per_node = Counter((p.pnode, p.template, p.running) for p in placed)
    assert set(per_node.values()) == {1}
    assert len(per_node) == len(NODES) * len(KINDS)


def test_a_small_load_puts_one_of_each_kind_on_a_different_node() -> None:
    placed = mix(NODES)
    assert [p.pnode for p in placed] == NODES
    assert {(p.template, p.running) for p in placed} == set(KINDS)


def test_changed_params_names_only_what_differs() -> None:
    before = {"kvm": {"disk_discard": "default", "acpi": True}, "fake": {"migration_mode": "live"}}
    after = {"kvm": {"disk_discard": "ignore", "acpi": True}, "fake": {"migration_mode": "live"},
             "xen-pvm": {"xen_cmd": "xl"}}
    assert upgrade.changed_params(before, after) == {"disk_discard", "xen_cmd"}
    assert upgrade.changed_params(after, after) == set()


def test_the_downgrade_keeps_31s_values_and_puts_xen_cmd_back_as_xl() -> None:
    """cfgupgrade --downgrade (3.1): 3.1 dropped xen_cmd; going back re-adds it as "xl"."""
    on_31 = {"kvm": {"disk_discard": "ignore", "acpi": True}, "xen-pvm": {"root_path": "/"},
             "xen-hvm": {"acpi": True}}
    back = {"kvm": {"disk_discard": "ignore", "acpi": True},
            "xen-pvm": {"root_path": "/", "xen_cmd": "xl"},
            "xen-hvm": {"acpi": True, "xen_cmd": "xl"}}
    assert upgrade.downgrade_problems(on_31, back) == []
    back["xen-hvm"]["xen_cmd"] = "xm"
    back["kvm"]["disk_discard"] = "default"
    assert upgrade.downgrade_problems(on_31, back) == [
        "kvm disk_discard: 'default' after the downgrade, 'ignore' expected",
        "xen-hvm xen_cmd: 'xm' after the downgrade, 'xl' expected"]
    del back["xen-pvm"]["xen_cmd"]
    assert "xen-pvm xen_cmd: None after the downgrade, 'xl' expected" in (
        upgrade.downgrade_problems(on_31, back))


def test_a_refused_upgrade_names_the_nodes_and_the_fix() -> None:
    exc = upgrade.UpgradeRefused("c1.lab", "3.1", ["node4.lab"], "…")
    assert "not installed on node4.lab" in str(exc)
    assert "install the 3.1 packages on node4.lab" in str(exc)


class _Rapi:
    """Answers the downtime poll from a script of listings, one per poll."""

    def __init__(self, script: list[list[dict[str, Any]] | None]) -> None:
        self.script, self.done = script, threading.Event()

    def instances(self, bulk: bool = True) -> list[dict[str, Any]]:
        if len(self.script) == 1:
            self.done.set()
        listing = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if listing is None:
            raise RapiError("GET", "/2/instances", None, "connection refused")
        return listing


def test_downtime_counts_polls_an_instance_that_should_run_was_seen_down() -> None:
    up = {"name": "a.lab", "admin_state": "up", "oper_state": True}
    down = {"name": "a.lab", "admin_state": "up", "oper_state": False}
    stopped = {"name": "b.lab", "admin_state": "down", "oper_state": False}
    rapi = _Rapi([[up, stopped], [down, stopped], [down, stopped], None, [up, stopped]])
    ticks = iter(range(1000))  # each poll is one second after the one before
    watch = roll.Downtime(SimpleNamespace(rapi=rapi), interval=0.01,  # type: ignore[arg-type]
                          clock=lambda: float(next(ticks)))
    with watch.watching():
        assert rapi.done.wait(10)
    # Two polls saw it down, one interval each; the unanswered poll is not downtime.
    assert watch.down["a.lab"] == 2.0
    assert "b.lab" not in watch.down  # stopped on purpose: not downtime
    assert watch.unseen == 1.0
    assert watch.polls >= 4


def _privsep_cluster(master: str = "node1") -> Any:
    machines = [SimpleNamespace(name=n.split(".")[0]) for n in NODES[:2]]
    return SimpleNamespace(master=SimpleNamespace(name=master), nodes=machines)


def test_a_daemon_under_another_user_or_missing_is_named() -> None:
    from lab.ganeti.privsep import DaemonProcess, daemon_problems

    def on(node: str, *daemons: tuple[str, str]) -> list[DaemonProcess]:
        return [DaemonProcess(node, d, user, 0 if user == "root" else 999, 999)
                for d, user in daemons]

    base = [("ganeti-noded", "root"), ("ganeti-mond", "root")]
    master = [("ganeti-confd", "gnt-confd"), ("ganeti-luxid", "gnt-masterd"),
              ("ganeti-wconfd", "gnt-masterd"), ("ganeti-rapi", "gnt-rapi")]
    found = on("node1", *base, *master) + on("node2", *base)
    assert daemon_problems(_privsep_cluster(), found) == []
    found = on("node1", *base, ("ganeti-luxid", "gnt-masterd"), ("ganeti-wconfd", "root"),
               ("ganeti-rapi", "gnt-rapi")) + on("node2", *base[:1])
    assert daemon_problems(_privsep_cluster(), found) == [
        "node1: ganeti-confd is not running",
        "node2: ganeti-mond is not running",
        "node1: ganeti-wconfd runs as root (uid 0), expected gnt-masterd"]


def test_qemu_processes_are_found_by_their_instance_name() -> None:
    from lab.ganeti.privsep import QemuProcess, qemu_processes

    ps = ("  812  2001  2001  2001 /usr/bin/qemu-system-x86_64 -name inst3.lab,debug-threads=on"
          " -m 128\n"
          "  813     0     0     0 /usr/bin/qemu-system-x86_64 -name inst4.lab -m 128\n")
    node = SimpleNamespace(succeed=lambda command: ps)
    assert qemu_processes(node) == [  # type: ignore[arg-type]
        QemuProcess("inst3.lab", 812, (2001, 2001, 2001)),
        QemuProcess("inst4.lab", 813, (0, 0, 0))]
