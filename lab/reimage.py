"""Re-imaging a hypervisor, as the operators' "rebootstrap from scratch": its root disk is
replaced by a fresh copy of the image it was built from, and it boots as a new machine.

Nothing of the old root disk survives except what the lab puts back: the machine's identity
and login key (from the kernel command line, as at every boot) and what settling gave it (names,
root SSH between nodes, the shared mount, the local repository). Its second disk, which holds
the volume group, is kept. It gets new host keys from the lab (its seed disk, lab.hostkeys),
and the keys it prints on its serial console, a log written on the host, must be those: no key
is taken from whatever first answers on the network.

Snapshots taken before a re-image cannot bring the old root disk back: restoring one is
refused with a clear error (lab.snapshots), never a silent mix of old and new disks.

    reimage(lab, "node3")
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import libvirt

from lab import hostkeys, power, virt
from lab.errors import HarnessError
from lab.ganeti.nodes import prepare_node_again
from lab.settle import write_hosts
from lab.waiting import WaitTimeout, wait_for

if TYPE_CHECKING:
    from lab.lab import Lab

log = logging.getLogger("lab.reimage")

HOSTKEY_MARK = "lab-hostkey: "
RECORD = "reimaged.json"


class ReimageError(HarnessError):
    """A machine could not be re-imaged."""


def reimage(lab: Lab, machine: str, timeout: float = power.BOOT_SECONDS) -> float:
    """Replace ``machine``'s root disk with a fresh copy of its image, boot it, trust its new
    host keys from its console and settle it again; returns the seconds it took."""
    plan = lab.plan.machine(machine)  # names the machines a lab has when it has none such
    if plan.role != "hypervisor":
        raise ReimageError(f"{machine} is the lab's {plan.role} box: it holds the lab's DNS, "
                           "DHCP, shared storage and package repository, and is not re-imaged",
                           "re-image a hypervisor, or destroy and bring the lab up again")
    started = time.monotonic()
    console = Path(lab.plan.console_dir) / f"{machine}.log"
    with virt.connect() as conn:
        dom = conn.lookupByName(plan.domain)
        root = _root_volume(conn, dom, machine)
        capacity = root.info()[1]
        backing = _backing_path(root, machine)
        pool = root.storagePoolLookupByVolume()
        name = root.name()
        if dom.isActive():
            dom.destroy()
        # The snapshots of this domain live inside the disk that goes away.
        for snap in dom.listAllSnapshots():
            snap.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
        root.delete(0)
        pool.createXML(
            f"<volume><name>{escape(name)}</name><capacity unit='B'>{capacity}</capacity>"
            "<target><format type='qcow2'/></target>"
            f"<backingStore><path>{escape(backing)}</path><format type='qcow2'/>"
            "</backingStore></volume>", 0)
        _record(lab, machine)
        # A new machine gets new host keys, handed over on its seed disk (lab.hostkeys).
        new_keys = hostkeys.make(lab.dir / "hostkeys" / machine)
        if plan.seed:
            virt.put_lab_volume(plan.seed, hostkeys.seed_image(lab.dir / "hostkeys" / machine))
        if console.exists():  # the old machine's console; the new one starts its own log
            console.replace(console.with_name(f"{machine}.before-reimage.log"))
        dom.create()
    log.info("%s: root disk replaced by a fresh copy of %s; booting", machine, backing)
    keys = _console_host_keys(console, machine, timeout)
    if plan.seed and sorted(keys) != sorted(new_keys):
        raise ReimageError(f"{machine} booted with other host keys than the lab handed it "
                           f"(console: {keys}; seed: {new_keys})",
                           "the image's lab-firstboot takes the seed disk's keys on a fresh "
                           "root disk: rebuild the images (`ganeti-lab images build`)")
    m = lab.machine(machine)
    m.replace_host_keys("\n".join(keys))
    m.wait_for_ssh(timeout=max(30.0, timeout - (time.monotonic() - started)))
    # Settled as a bring-up settles a hypervisor: the lab's names, then Ganeti's preparation.
    write_hosts(lab, [m])
    prepare_node_again(lab, machine)
    return time.monotonic() - started


def reimaged_since(lab: Lab, created: str) -> dict[str, str]:
    """Machines re-imaged at or after ``created`` (an ISO time, as snapshots record it)."""
    path = lab.dir / RECORD
    if not path.exists():
        return {}
    record: dict[str, str] = json.loads(path.read_text())
    return {m: when for m, when in record.items() if when >= created}


def _record(lab: Lab, machine: str) -> None:
    path = lab.dir / RECORD
    record = json.loads(path.read_text()) if path.exists() else {}
    record[machine] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    path.write_text(json.dumps(record, indent=2))


def _root_volume(conn: libvirt.virConnect, dom: libvirt.virDomain,
                 machine: str) -> libvirt.virStorageVol:
    for disk in ElementTree.fromstring(dom.XMLDesc(0)).iterfind("devices/disk"):
        target, source = disk.find("target"), disk.find("source")
        if target is not None and target.get("dev") == "vda" and source is not None:
            return conn.storageVolLookupByPath(source.get("file") or "")
    raise ReimageError(f"{machine} has no root disk (vda) in its domain definition",
                       "the lab's domain changed behind its back: recreate the lab")


def _backing_path(volume: libvirt.virStorageVol, machine: str) -> str:
    path = ElementTree.fromstring(volume.XMLDesc(0)).findtext("backingStore/path")
    if not path:
        raise ReimageError(f"{machine}'s root disk has no backing image to copy afresh",
                           "the lab's disks were made outside ganeti-lab: recreate the lab")
    return path


def _console_host_keys(console: Path, machine: str, timeout: float) -> list[str]:
    """The host keys the new machine printed on its console (lab-firstboot), once the list
    stops growing."""
    previous: list[str] = []

    def settled_keys() -> list[str] | None:
        text = console.read_bytes().decode(errors="replace") if console.exists() else ""
        keys = [line.split(HOSTKEY_MARK, 1)[1].strip() for line in text.splitlines()
                if HOSTKEY_MARK in line]
        stable = keys if keys and keys == previous else None
        previous[:] = keys
        return stable

    try:
        return wait_for(f"{machine}'s host keys on its console", settled_keys, timeout=timeout,
                        first_pause=2.0, interval=2.0, retry_on=())
    except WaitTimeout:
        raise ReimageError(f"{machine} printed no host keys on its console within "
                           f"{timeout:.0f} s", f"read {console}; the image's lab-firstboot "
                           "prints them at every boot") from None
