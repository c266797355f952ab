"""A lab at rest: every machine stopped and its memory freed, while its disks, snapshots,
networks and subnet lease stay. Putting a lab to rest saves its present state as a snapshot
first (``AT_REST``), so waking it brings that state back, or any other snapshot of the lab,
in seconds and without a boot: libvirt starts each machine from the snapshot's memory.
"""

from __future__ import annotations

import logging
import time

import libvirt

from lab import snapshots, virt
from lab.errors import LabError
from lab.lab import Lab, check_not_in_use
from lab.snapshots import Restored, Snapshot

log = logging.getLogger("lab.rest")

AT_REST = "at-rest"
_MARKER = "at-rest"  # in the lab's state directory: the snapshot the lab was put to rest at


def at_rest(lab: Lab) -> str | None:
    """The snapshot a resting lab was put to rest at, or None for a lab that is not at rest."""
    path = lab.dir / _MARKER
    return path.read_text().strip() or None if path.exists() else None


def put_to_rest(lab: Lab, *, snapshot: str = AT_REST, force: bool = False) -> Snapshot:
    """Save the lab's state as ``snapshot``, then stop every machine. The lab then belongs to
    no process (like a kept lab): `ganeti-lab destroy` or a wake takes it."""
    check_not_in_use(lab.name, force)
    states = virt.domain_states(lab.plan)
    if any(state != "running" for state in states.values()):
        raise LabError(f"lab {lab.name} is not running: its machines are {states}",
                       f"wake it first (`ganeti-lab up --name {lab.name} --at SNAPSHOT`)"
                       if at_rest(lab) else "bring it up again, or destroy it")
    started = time.monotonic()
    saved = snapshots.save(lab, snapshot, meta={"at_rest": True})
    lab.close()
    with virt.connect() as conn:
        for m in lab.plan.machines:
            try:
                conn.lookupByName(m.domain).destroy()  # its state is in the snapshot
            except libvirt.libvirtError as exc:
                raise LabError(f"stopping {m.domain} of lab {lab.name} failed: {exc}",
                               f"`virsh destroy {m.domain}`, then `ganeti-lab down` again"
                               ) from None
    (lab.dir / _MARKER).write_text(snapshot)
    lab.keep()
    log.info("lab %s is at rest (snapshot %s saved, %d machines stopped) in %.1f s", lab.name,
             snapshot, len(lab.plan.machines), time.monotonic() - started)
    return saved


def wake(lab: Lab, snapshot: str | None = None, *, force: bool = False) -> Restored:
    """Bring a resting (or running) lab back at ``snapshot`` (default: the one it was put to
    rest at); returns once every machine answers, clocks set."""
    check_not_in_use(lab.name, force)
    snapshot = snapshot or at_rest(lab)
    if snapshot is None:
        raise LabError(f"lab {lab.name} is not at rest, and no snapshot was named",
                       "say which one: `ganeti-lab up --name NAME --at SNAPSHOT` "
                       "(`ganeti-lab snapshot list` shows them)")
    restored = snapshots.restore(lab, snapshot)
    (lab.dir / _MARKER).unlink(missing_ok=True)
    log.info("lab %s woke at snapshot %s in %.1f s", lab.name, snapshot, restored.seconds)
    return restored
