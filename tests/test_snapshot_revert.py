"""How a restore brings each domain back: a running domain loads the snapshot in its own QEMU
process (libvirt's revert would stop it and start another); a stopped one, or a name the
monitor would not take as it is, goes through libvirt. libvirt is a recording stand-in here;
the real restores run in tests/test_lab_lifecycle.py and before every lab test."""

from __future__ import annotations

import libvirt
import pytest

from lab import snapshots


class Domain:
    def __init__(self, active: bool = True, paused: bool = False,
                 reply: str = "") -> None:
        self.active, self.paused, self.reply, self.events = active, paused, reply, []

    def name(self) -> str:
        return "glab-t--node1"

    def isActive(self) -> bool:
        return self.active

    def state(self) -> list[int]:
        return [libvirt.VIR_DOMAIN_PAUSED if self.paused else libvirt.VIR_DOMAIN_RUNNING, 0]

    def suspend(self) -> None:
        self.events.append("suspend")
        self.paused = True

    def snapshotLookupByName(self, name: str, flags: int) -> str:
        return f"snapshot {name}"

    def revertToSnapshot(self, snap: str, flags: int) -> None:
        assert flags == libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED
        self.events.append(f"libvirt revert to {snap}")


@pytest.fixture
def monitor(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    commands: list[str] = []

    def command(dom: Domain, cmd: str, flags: int) -> str:
        assert flags == snapshots.libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
        assert dom.paused, "loadvm on a running guest"
        commands.append(cmd)
        dom.events.append(cmd)
        return dom.reply

    monkeypatch.setattr(snapshots.libvirt_qemu, "qemuMonitorCommand", command)
    return commands


def test_a_running_domain_loads_the_snapshot_in_its_own_process(monitor: list[str]) -> None:
    dom = Domain()
    snapshots._revert(dom, "cluster-two-clusters-3.0-3.1")  # type: ignore[arg-type]
    assert dom.events == ["suspend", 'loadvm "cluster-two-clusters-3.0-3.1"']
    assert dom.paused  # resumed by restore, with the others


def test_a_paused_domain_is_not_paused_twice(monitor: list[str]) -> None:
    dom = Domain(paused=True)
    snapshots._revert(dom, "booted")  # type: ignore[arg-type]
    assert dom.events == ['loadvm "booted"']


def test_a_stopped_domain_and_an_odd_name_go_through_libvirt(monitor: list[str]) -> None:
    stopped = Domain(active=False)
    snapshots._revert(stopped, "at-rest")  # type: ignore[arg-type]
    odd = Domain()
    snapshots._revert(odd, 'my "best" state')  # type: ignore[arg-type]
    assert stopped.events == ["libvirt revert to snapshot at-rest"]
    assert odd.events == ['libvirt revert to snapshot my "best" state']
    assert monitor == []


def test_what_the_monitor_says_is_a_failure(monitor: list[str]) -> None:
    dom = Domain(reply="Error: Snapshot 'booted' does not exist in one or more devices\r\n")
    with pytest.raises(libvirt.libvirtError, match="loadvm booted: Error: Snapshot 'booted' "
                                                   "does not exist"):
        snapshots._revert(dom, "booted")  # type: ignore[arg-type]
