"""Whole-lab snapshots: one consistent cut of every machine, restored in seconds.

Save pauses every domain, takes an internal (disk + memory) snapshot of each, then resumes them
all, so no machine runs ahead of the others inside the cut. Restore reverts every domain to its
paused state, resumes them together, resynchronises guest clocks (a reverted guest wakes up at
the snapshot's time) and waits until every machine answers.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import libvirt
import libvirt_qemu

from lab import agent, reimage, virt
from lab.errors import LabError

if TYPE_CHECKING:
    from lab.lab import Lab

log = logging.getLogger("lab.snapshots")

# How long a restored machine's guest agent may take to answer before its clock is set over
# SSH instead (it answers within about a second of the resume).
AGENT_WAIT = 30.0


@dataclass
class Snapshot:
    name: str
    created: str
    seconds: float
    machines: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Restored:
    """A restore and where its time went."""
    snapshot: Snapshot
    revert_seconds: float   # libvirt: every domain back at the cut (memory read back), paused
    answer_seconds: float   # resumed until every machine answers, its clock set
    reached: dict[str, str] = field(default_factory=dict)  # machine: "agent" or "ssh"

    @property
    def seconds(self) -> float:
        return round(self.revert_seconds + self.answer_seconds, 2)


def _index(lab: Lab) -> dict[str, Snapshot]:
    path = lab.dir / "snapshots.json"
    if not path.exists():
        return {}
    return {k: Snapshot(**v) for k, v in json.loads(path.read_text()).items()}


def _write_index(lab: Lab, index: dict[str, Snapshot]) -> None:
    path = lab.dir / "snapshots.json"
    path.write_text(json.dumps({k: asdict(v) for k, v in index.items()}, indent=2))


def _domains(conn: libvirt.virConnect, lab: Lab) -> list[libvirt.virDomain]:
    try:
        return [conn.lookupByName(m.domain) for m in lab.plan.machines]
    except libvirt.libvirtError as exc:
        raise LabError(f"lab {lab.name} is not fully defined in libvirt: {exc}",
                       "bring it up again (`ganeti-lab up`) or destroy it") from None


def _on_each(domains: list[libvirt.virDomain],
             action: Callable[[libvirt.virDomain], object]) -> None:
    """``action`` on every domain at once: libvirt runs jobs of different domains in
    parallel, and each writes or reads back its own memory image (seconds per domain).
    Every action ends before the first failure is raised."""
    with ThreadPoolExecutor(max_workers=len(domains) or 1) as pool:
        futures = [pool.submit(action, dom) for dom in domains]
    for future in futures:
        future.result()


# Names the QEMU monitor takes as they are (the lab's own and what a user names with the CLI).
_MONITOR_SAFE = re.compile(r"[A-Za-z0-9._+-]+")


def _revert(dom: libvirt.virDomain, name: str) -> None:
    """Bring ``dom`` back to its snapshot ``name``, paused.

    A running domain loads the snapshot in its own QEMU process (the monitor's `loadvm`, the
    domain paused around it). libvirt's own revert of a running domain stops its QEMU and
    starts a new one that loads the snapshot (libvirt 9.0: "shutting down, reason=from
    snapshot" in the domain's log), about 2 s of every restore here before any memory is
    read. A domain that does not run (a lab at rest) is reverted by libvirt, which starts it.
    """
    if not dom.isActive() or not _MONITOR_SAFE.fullmatch(name):
        dom.revertToSnapshot(dom.snapshotLookupByName(name, 0),
                             libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED)
        return
    dom.snapshotLookupByName(name, 0)  # libvirt knows it: the same error as its revert
    if dom.state()[0] != libvirt.VIR_DOMAIN_PAUSED:
        dom.suspend()
    reply = libvirt_qemu.qemuMonitorCommand(
        dom, f'loadvm "{name}"', libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
    if reply.strip():  # the monitor says nothing when the load worked
        raise libvirt.libvirtError(f"{dom.name()}: loadvm {name}: {reply.strip()}")


def list_snapshots(lab: Lab) -> list[Snapshot]:
    return sorted(_index(lab).values(), key=lambda s: s.created)


def has(lab: Lab, name: str) -> bool:
    return name in _index(lab)


def save(lab: Lab, name: str, meta: dict[str, Any] | None = None, replace: bool = True
         ) -> Snapshot:
    index = _index(lab)
    if name in index:
        if not replace:
            raise LabError(f"lab {lab.name} already has a snapshot {name!r}",
                           "delete it first or choose another name")
        delete(lab, name)
        index = _index(lab)
    started = time.monotonic()
    xml = f"<domainsnapshot><name>{name}</name><description>ganeti-lab</description>" \
          "</domainsnapshot>"
    with virt.connect() as conn:
        domains = _domains(conn, lab)
        paused = []
        try:
            for dom in domains:
                if dom.isActive() and dom.state()[0] != libvirt.VIR_DOMAIN_PAUSED:
                    dom.suspend()
                    paused.append(dom)
            _on_each(domains, lambda dom: dom.snapshotCreateXML(xml, 0))
        except libvirt.libvirtError as exc:
            raise LabError(f"snapshot {name!r} of lab {lab.name} failed: {exc}",
                           "internal snapshots need qcow2 disks and a running libvirtd") from None
        finally:
            for dom in paused:
                dom.resume()
    if paused:
        # The guests stood still while their memory was written (seconds, more with more
        # machines), so their clocks are behind by that long: a health check or Ganeti right
        # after the save would see the skew (CI: 6 s after a layout snapshot).
        resync_clocks(lab, domains={dom.name() for dom in paused})
    _keep_state_files(lab, name)
    snap = Snapshot(name, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    round(time.monotonic() - started, 2), [m.name for m in lab.plan.machines],
                    meta or {})
    index[name] = snap
    _write_index(lab, index)
    log.info("lab %s: snapshot %s saved in %.2f s", lab.name, name, snap.seconds)
    return snap


def restore(lab: Lab, name: str, ssh_timeout: float = 180.0) -> Restored:
    index = _index(lab)
    if name not in index:
        raise LabError(f"lab {lab.name} has no snapshot {name!r}",
                       f"existing: {', '.join(index) or 'none'}; save one with "
                       "`ganeti-lab snapshot save NAME`")
    gone = reimage.reimaged_since(lab, index[name].created)
    if gone:
        raise LabError(f"snapshot {name!r} of lab {lab.name} was saved before "
                       + ", ".join(f"{m} was re-imaged ({when})" for m, when in gone.items())
                       + ": it cannot bring the old root disk back",
                       "save a new snapshot after the re-image, or destroy the lab and bring "
                       "it up again")
    lab.close()  # every SSH session dies with the state it belonged to
    started = time.monotonic()
    with virt.connect() as conn:
        domains = _domains(conn, lab)
        try:
            _on_each(domains, lambda dom: _revert(dom, name))
        except libvirt.libvirtError as exc:
            raise LabError(f"restoring snapshot {name!r} of lab {lab.name} failed: {exc}",
                           "list snapshots with `ganeti-lab snapshot list`") from None
        reverted = time.monotonic()
        try:
            for dom in domains:
                if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                    dom.resume()
        except libvirt.libvirtError as exc:
            raise LabError(f"resuming lab {lab.name} after restoring snapshot {name!r} failed: "
                           f"{exc}", "see `ganeti-lab status` for each machine's state") from None
    _restore_state_files(lab, name)
    reached = resync_clocks(lab, ssh_timeout)
    done = Restored(index[name], round(reverted - started, 2),
                    round(time.monotonic() - reverted, 2), reached)
    log.info("lab %s: snapshot %s restored in %.2f s (revert %.2f s, machines answered %.2f s "
             "later, through %s)", lab.name, name, done.seconds, done.revert_seconds,
             done.answer_seconds, _how_reached(reached))
    return done


# Files of the lab's state directory that describe the machines' state, so they travel with
# each snapshot: SSH host keys (Ganeti's node add replaces them) and which cluster layout the
# machines run, and whether a test left something in it (both written by lab.ganeti.bootstrap).
STATE_FILES = ("known_hosts", "layout", "layout-changed")
# What the lab knows of its clusters (RAPI credentials and the pinned certificate, the
# formation verify): a restore brings back the clusters of that moment, and with them what
# the lab knew of them. Snapshots saved before this rule have no copy: the current is kept.
STATE_DIRS = ("clusters",)


def _state_copy(lab: Lab, name: str, state_file: str) -> Path:
    return lab.dir / "snapshots" / f"{name}.{state_file}"


def _keep_state_files(lab: Lab, name: str) -> None:
    for state_file in STATE_FILES:
        current, copy = lab.dir / state_file, _state_copy(lab, name, state_file)
        copy.parent.mkdir(exist_ok=True)
        if current.exists():
            shutil.copy(current, copy)
        else:
            copy.unlink(missing_ok=True)
    for state_dir in STATE_DIRS:
        current, copy = lab.dir / state_dir, _state_copy(lab, name, state_dir)
        shutil.rmtree(copy, ignore_errors=True)
        if current.is_dir():
            shutil.copytree(current, copy)  # modes kept: the secrets stay 0600


def _restore_state_files(lab: Lab, name: str) -> None:
    for state_file in STATE_FILES:
        current, copy = lab.dir / state_file, _state_copy(lab, name, state_file)
        if copy.exists():
            shutil.copy(copy, current)
        elif state_file != "known_hosts":  # snapshots older than this rule kept only that
            current.unlink(missing_ok=True)
    for state_dir in STATE_DIRS:
        current, copy = lab.dir / state_dir, _state_copy(lab, name, state_dir)
        if copy.is_dir():
            shutil.rmtree(current, ignore_errors=True)
            shutil.copytree(copy, current)


def resync_clocks(lab: Lab, timeout: float = 180.0, domains: set[str] | None = None
                  ) -> dict[str, str]:
    """Set each guest's clock (or only those of ``domains``) from the host's: Ganeti rejects
    nodes with clock skew. The clock set is the proof that the machine answers. Returns how
    each machine was reached: "agent" (its guest agent, no SSH handshake: lab/agent.py), or
    "ssh" for a domain without the agent's channel or whose agent did not answer."""
    targets = [p.name for p in lab.plan.machines if domains is None or p.domain in domains]

    def over_ssh(m: Any) -> str:
        # The command is built once connected: it carries the host's time.
        m.wait_for_ssh(timeout=timeout,
                       command=lambda: f"date -u -s @{time.time():.3f} >/dev/null")
        return "ssh"

    with agent.agents(lab.plan, targets) as found:
        def fix(m: Any) -> str:
            guest = found[m.name]
            if guest is None:
                return over_ssh(m)
            try:
                guest.wait(min(AGENT_WAIT, timeout))
                guest.set_clock()
                return "agent"
            except agent.AgentUnavailable as exc:
                log.warning("%s; setting its clock over SSH instead", exc)
                return over_ssh(m)

        return lab.on_all(fix, [lab.machine(name) for name in targets])


def _how_reached(reached: dict[str, str]) -> str:
    ssh = sorted(m for m, how in reached.items() if how == "ssh")
    if not ssh:
        return "their guest agents"
    return f"SSH for {', '.join(ssh)}" + (", guest agents for the others"
                                            if len(ssh) < len(reached) else "")


def delete(lab: Lab, name: str) -> None:
    index = _index(lab)
    with virt.connect() as conn:
        for dom in _domains(conn, lab):
            try:
                dom.snapshotLookupByName(name, 0).delete(0)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
                    raise
    index.pop(name, None)
    for state_file in STATE_FILES:
        _state_copy(lab, name, state_file).unlink(missing_ok=True)
    for state_dir in STATE_DIRS:
        shutil.rmtree(_state_copy(lab, name, state_dir), ignore_errors=True)
    _write_index(lab, index)
