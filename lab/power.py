"""Power and cabling of one lab machine, as an operator would handle a server in a rack:
a clean shutdown, a start, a reboot, a hard power-off, and pulling or plugging back its
cluster-network cable. Each verb returns once the machine is in the state it asked for
(a started machine answers SSH), or fails naming the machine and what it last saw.

    power.reboot(lab, "node2")
    power.cut_link(lab, "node3")      # node3 is cut off the cluster network...
    power.restore_link(lab, "node3")  # ...and back
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from xml.etree import ElementTree

import libvirt

from lab import virt
from lab.errors import HarnessError
from lab.remote import Unreachable

if TYPE_CHECKING:
    from lab.lab import Lab

log = logging.getLogger("lab.power")

SHUTDOWN_SECONDS = 180.0
BOOT_SECONDS = 600.0


class PowerError(HarnessError):
    """A machine did not reach the power state a verb asked for."""


def state(lab: Lab, machine: str) -> str:
    """libvirt's word for the machine's state: running, shut off, paused, ..."""
    lab.plan.machine(machine)  # a clear error for a machine the lab does not have
    return virt.domain_states(lab.plan)[machine]


def shutdown(lab: Lab, machine: str, timeout: float = SHUTDOWN_SECONDS) -> None:
    """A clean shutdown (ACPI power button), waited for until the machine is off."""
    _domain_call(lab, machine, "shutdown", lambda dom: dom.shutdown())
    _wait_for_state(lab, machine, "shut off", timeout, "after an ACPI shutdown")


def power_off(lab: Lab, machine: str) -> None:
    """Pull the plug: the machine stops at once, with no chance to write anything."""
    _domain_call(lab, machine, "power off", lambda dom: dom.destroy())
    _wait_for_state(lab, machine, "shut off", 30, "after a hard power-off")


def start(lab: Lab, machine: str, timeout: float = BOOT_SECONDS) -> float:
    """Power the machine on and wait until it answers SSH; returns the seconds it took."""
    started = time.monotonic()
    _domain_call(lab, machine, "start", lambda dom: dom.create())
    lab.machine(machine).close()
    lab.machine(machine).wait_for_ssh(timeout=timeout)
    return time.monotonic() - started


def reboot(lab: Lab, machine: str, timeout: float = BOOT_SECONDS) -> float:
    """Reboot from inside (as `reboot` would) and wait until the machine answers SSH with a
    new boot id; returns the seconds it took."""
    m = lab.machine(machine)
    before = _boot_id(lab, machine)
    started = time.monotonic()
    with contextlib.suppress(Unreachable):  # the connection may go down with the machine
        m.run("systemctl reboot", timeout=30)
    m.close()
    deadline = started + timeout
    while time.monotonic() < deadline:
        m.wait_for_ssh(timeout=max(1.0, deadline - time.monotonic()))
        if _boot_id(lab, machine) != before:
            return time.monotonic() - started
        m.close()
        time.sleep(2)
    raise PowerError(f"{machine} did not come back from a reboot within {timeout:.0f} s "
                     f"(state {state(lab, machine)})",
                     f"read its console log ({lab.plan.console_dir}/{machine}.log)")


def cut_link(lab: Lab, machine: str) -> None:
    """Unplug the machine's cluster-network cable (its management link stays up, so the lab
    can still reach it)."""
    _set_link(lab, machine, "down")


def restore_link(lab: Lab, machine: str) -> None:
    """Plug the cluster-network cable back in."""
    _set_link(lab, machine, "up")


def link_state(lab: Lab, machine: str) -> str:
    """``up`` or ``down``: the cluster-network link as libvirt has it."""
    plan = lab.plan.machine(machine)
    with virt.connect() as conn:
        xml = conn.lookupByName(plan.domain).XMLDesc(0)
    link = _cluster_nic(xml, plan.lab_mac, machine).find("link")
    return link.get("state", "up") if link is not None else "up"


# --------------------------------------------------------------------------------------------


def _boot_id(lab: Lab, machine: str) -> str:
    return lab.machine(machine).succeed("cat /proc/sys/kernel/random/boot_id").strip()


def _domain_call(lab: Lab, machine: str, verb: str,
                 call: Callable[[libvirt.virDomain], object]) -> None:
    plan = lab.plan.machine(machine)
    with virt.connect() as conn:
        try:
            dom = conn.lookupByName(plan.domain)
            call(dom)
        except libvirt.libvirtError as exc:
            raise PowerError(f"{machine}: {verb} failed: {exc}",
                             f"check the machine with `ganeti-lab status --name {lab.name}`"
                             ) from None
    log.info("%s: %s", machine, verb)


def _wait_for_state(lab: Lab, machine: str, wanted: str, timeout: float, doing: str) -> None:
    deadline = time.monotonic() + timeout
    current = state(lab, machine)
    while current != wanted:
        if time.monotonic() > deadline:
            raise PowerError(f"{machine} is still {current!r} {timeout:.0f} s {doing}",
                             f"`ganeti-lab status --name {lab.name}`; power.power_off() "
                             "forces it")
        time.sleep(1)
        current = state(lab, machine)


def _cluster_nic(xml: str, mac: str, machine: str) -> ElementTree.Element:
    for nic in ElementTree.fromstring(xml).iterfind("devices/interface"):
        found = nic.find("mac")
        if found is not None and found.get("address", "").lower() == mac.lower():
            return nic
    raise PowerError(f"{machine} has no network interface with the cluster MAC {mac}",
                     "the lab's domain definition changed behind its back: recreate the lab")


def _set_link(lab: Lab, machine: str, wanted: str) -> None:
    plan = lab.plan.machine(machine)
    with virt.connect() as conn:
        dom = conn.lookupByName(plan.domain)
        nic = _cluster_nic(dom.XMLDesc(0), plan.lab_mac, machine)
        link = nic.find("link")
        if link is None:
            link = ElementTree.SubElement(nic, "link")
        link.set("state", wanted)
        try:
            dom.updateDeviceFlags(ElementTree.tostring(nic, encoding="unicode"),
                                  libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            raise PowerError(f"{machine}: setting its cluster link {wanted} failed: {exc}",
                             "the machine must be running") from None
    log.info("%s: cluster-network link %s", machine, wanted)
