"""Instances with real data: made with the lab's defaults, filled with known data, and their
disks checksummed on the node that holds them, without starting them.

The lab's OS definition (``lab+lazy`` / ``lab+eager``, baked into the hypervisor image) puts
a real ext4 filesystem with a marker on disk 0; ``write_data`` adds a file of known content to
that filesystem; ``disk_checksum`` reads the whole disk's sha256 where it lives. Equal
checksums before and after a move, an upgrade or a roll are the proof that nothing was lost.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from lab import snapshots
from lab.errors import GanetiFailure, LabError
from lab.ganeti.bootstrap import (
    current_layout,
    ensure_layout,
    layout_snapshot,
    mark_layout_changed,
)
from lab.ganeti.cluster import Cluster
from lab.ganeti.jobs import JobSet
from lab.ganeti.rapi import Job, RapiError, instance_creation
from lab.remote import Machine

log = logging.getLogger("lab.ganeti.instances")

LAB_OS = "lab+lazy"
DISK_MIB = 64            # the instance policy's minimum (lab/ganeti/bootstrap.py): quick checksums
MEMORY_MIB = 128
JOB_TIMEOUT = 900


class InstanceDataError(GanetiFailure):
    """An instance's disk could not be reached or read."""


@dataclass(frozen=True)
class DiskLocation:
    node: str      # the node's short name (a lab machine)
    path: str      # the disk's device or file on that node


def disk_location(cluster: Cluster, instance: str, index: int = 0) -> DiskLocation:
    """Where disk ``index`` of ``instance`` lives on its primary node (any template).

    `gnt-instance activate-disks` is Ganeti's own answer ("node:disk/N:path"); it also makes
    the disk reachable when the instance is down (a plain LV, a DRBD device)."""
    out = cluster.gnt(f"gnt-instance activate-disks {shlex.quote(instance)}", timeout=600)
    for line in out.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) == 3 and parts[1] == f"disk/{index}":
            return DiskLocation(parts[0].split(".")[0], parts[2])
    raise InstanceDataError(f"{cluster.name}: Ganeti did not say where disk {index} of "
                            f"{instance} is:\n{out.strip()}",
                            f"`gnt-instance info {instance}` on the master shows its disks")


def disk_locations(cluster: Cluster, instances: list[str], index: int = 0
                   ) -> dict[str, DiskLocation]:
    """``disk_location`` of several instances at once: their activate-disks jobs run side by
    side in Ganeti (each locks only its instance and that instance's nodes)."""
    if not instances:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(instances))) as pool:
        found = list(pool.map(lambda name: disk_location(cluster, name, index), instances))
    return dict(zip(instances, found, strict=True))


def disk_checksum(cluster: Cluster, instance: str, index: int = 0,
                  where: DiskLocation | None = None) -> str:
    """sha256 of the whole disk, read on the node that holds it. ``where`` (from
    ``disk_location``) spares a Ganeti job (tens of seconds under emulation) when the caller
    already knows it and the instance has not moved since."""
    where = where or disk_location(cluster, instance, index)
    node = cluster.lab.machine(where.node)
    out = node.succeed(f"sha256sum {shlex.quote(where.path)}", timeout=1800)
    return out.split()[0]


def write_data(cluster: Cluster, instance: str, mib: int = 4, seed: str | None = None,
               where: DiskLocation | None = None) -> str:
    """Put a file of known content (``mib`` MiB derived from ``seed``) into the instance's
    filesystem on disk 0, with the instance down; returns the file's sha256.

    The content is generated on the node from the seed, so nothing large crosses SSH."""
    seed = seed or instance
    info = cluster.rapi.instance(instance)
    if info.get("hypervisor") != "fake" and info.get("oper_state"):
        raise InstanceDataError(f"{instance} is running on {info.get('pnode')}: its filesystem "
                                "must not be mounted twice", "shut the instance down first")
    where = where or disk_location(cluster, instance)
    node = cluster.lab.machine(where.node)
    make = _known_content(mib, seed)
    return node.succeed(_on_mounted(where.path, (
        "mkdir -p \"$mnt/var/lib/lab\"; "
        f"{make} > \"$mnt/var/lib/lab/data\"; sync \"$mnt/var/lib/lab/data\"; "
        "sha256sum \"$mnt/var/lib/lab/data\" | cut -d' ' -f1")), timeout=600).strip()


def read_marker(cluster: Cluster, instance: str,
                where: DiskLocation | None = None) -> dict[str, str]:
    """The marker the lab OS wrote at create (instance, variant, hypervisor)."""
    where = where or disk_location(cluster, instance)
    node = cluster.lab.machine(where.node)
    out = node.succeed(_on_mounted(where.path, "cat \"$mnt/var/lib/lab/marker\"",
                                   read_only=True))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _on_mounted(path: str, body: str, read_only: bool = False) -> str:
    """A script that runs ``body`` with the filesystem of disk ``path`` mounted at $mnt (a
    block device directly, a file through a loop device) and unmounts it whatever happens."""
    disk, mode = shlex.quote(path), "ro" if read_only else "rw"
    return ("set -eu; mnt=$(mktemp -d); "
            "trap 'umount \"$mnt\" 2>/dev/null || true; rmdir \"$mnt\"' EXIT; "
            f"if [ -b {disk} ]; then mount -o {mode} {disk} \"$mnt\"; "
            f"else mount -o loop,{mode} {disk} \"$mnt\"; fi; {body}")


@dataclass
class InstanceFactory:
    """Instances made with the lab's defaults: a name from the lab's DNS plan, a small disk
    within the instance policy, the lab OS, the fake hypervisor unless told otherwise.
    ``clean_up`` (the fixture calls it after the test) has what it made removed."""

    cluster: Cluster
    made: list[str] = field(default_factory=list)
    # Clusters whose instances' names count as taken too: an instance that may move between
    # clusters needs a name free on both.
    neighbours: list[Cluster] = field(default_factory=list)

    def free_name(self) -> str:
        taken = set(self.made) | {i["name"] for c in (self.cluster, *self.neighbours)
                                  for i in c.rapi.instances()}
        for short in self.cluster.lab.plan.instance_names:
            name = f"{short}.lab"
            if name not in taken:
                return name
        raise LabError(f"every instance name of lab {self.cluster.lab.name} is in use",
                       "remove instances, or raise spec.INSTANCE_NAMES")

    def reserve_name(self) -> str:
        """A free name, counted as this factory's from now on (to plan several creations
        before submitting any)."""
        name = self.free_name()
        self.made.append(name)
        return name

    def create(self, template: str = "plain", *, tags: list[str] | None = None,
               **options: Any) -> str:
        """Create one instance and wait for it; returns its name. ``options``: ``name``,
        ``hypervisor`` (fake), ``os`` (lab+lazy), ``disk_mib``, ``memory_mib``, ``start``
        (False), ``pnode`` (the master unless an ``iallocator`` is given), ``snode``, and
        any other field of RAPI's instance creation."""
        name, submit = self._creation(template, **options)
        submit().wait(timeout=JOB_TIMEOUT)
        if tags:
            self.cluster.rapi.add_tags("instance", name, tags).wait(timeout=JOB_TIMEOUT)
        log.info("%s: instance %s (%s)", self.cluster.name, name, template)
        return name

    def submit(self, jobs: JobSet, template: str = "plain", **options: Any) -> str:
        """Submit a creation into ``jobs`` (waited for with the rest); returns the name."""
        name, submit = self._creation(template, **options)
        jobs.submit(name, submit)
        return name

    def submit_multi_alloc(self, jobs: JobSet, specs: list[dict[str, Any]], *,
                           iallocator: str | None = None) -> list[str]:
        """One `/2/instances-multi-alloc` request creating one instance per spec (each spec:
        ``template`` and ``create``'s options; nodes as ``create`` chooses them unless
        ``iallocator`` places them all). ``jobs`` follows the request into each instance's own
        creation job. Returns the names, in the order of ``specs``."""
        # Ganeti takes the allocator for the whole request, never per instance.
        planned = [self._plan(spec.get("template", "plain"),
                              placed_by_allocator=iallocator is not None,
                              **{k: v for k, v in spec.items() if k != "template"})
                   for spec in specs]
        jobs.submit_multi_alloc([instance_creation(name, **fields) for name, fields in planned],
                                iallocator=iallocator)
        return [name for name, _ in planned]

    def _creation(self, template: str, **options: Any) -> tuple[str, Callable[[], Job]]:
        name, fields = self._plan(template, **options)
        return name, lambda: self.cluster.rapi.create_instance(name, **fields)

    def _plan(self, template: str, *, name: str | None = None, hypervisor: str = "fake",
              os: str = LAB_OS, disk_mib: int = DISK_MIB, memory_mib: int = MEMORY_MIB,
              start: bool = False, pnode: str | None = None, snode: str | None = None,
              placed_by_allocator: bool = False, **extra: Any) -> tuple[str, dict[str, Any]]:
        """The name and the creation fields of one instance with the lab's defaults."""
        name = name or self.free_name()
        placed_by_allocator = placed_by_allocator or extra.get("iallocator") is not None
        if pnode is None and not placed_by_allocator:
            pnode = self.cluster.master_name
        if template == "drbd" and snode is None and pnode is not None:
            snode = next(n for n in self.cluster.plan.nodes if n != pnode)
        if name not in self.made:  # before submitting: a half-made instance is removed too
            self.made.append(name)
        disks = [] if template == "diskless" else [{"size": disk_mib}]
        return name, dict(disk_template=template, disks=disks, nics=[{}], os=os,
                          hypervisor=hypervisor, pnode=pnode, snode=snode,
                          beparams={"memory": memory_mib, "vcpus": 1}, start=start, **extra)

    def clean_up(self, by: str) -> None:
        """After the test ``by``: leave what this factory made to the next restore of the
        layout's snapshot when the lab has one (``mark_layout_changed``: a restore is
        seconds, a removal a Ganeti job per instance); remove it otherwise."""
        if not self.made:
            return
        snapshot = self._layout_snapshot()
        if snapshot is None:
            self.remove_all()
            return
        log.info("%s: %s left for the next restore of %s: %s", self.cluster.name, by,
                 snapshot, ", ".join(self.made))
        mark_layout_changed(self.cluster.lab, f"{by} left instances {', '.join(self.made)}")
        self.made.clear()

    def start_over(self, why: str) -> str:
        """The cluster as its layout's snapshot holds it, with none of this factory's
        instances: the snapshot restored (seconds) where the lab has one, else the instances
        removed through Ganeti. A restore also undoes every other change since the snapshot
        (cluster settings, tags, node roles): the caller applies again what it needs.
        Returns how: "restored" or "removed"."""
        if self._layout_snapshot() is None:
            self.remove_all()
            return "removed"
        lab = self.cluster.lab
        mark_layout_changed(lab, why)
        ensure_layout(lab, current_layout(lab))
        self.made.clear()
        # The restore took the guests' TCP state back: the RAPI session starts afresh.
        self.cluster.forget_rapi()
        return "restored"

    def _layout_snapshot(self) -> str | None:
        """The snapshot of the lab's live layout, when the lab has one saved."""
        lab, layout = self.cluster.lab, current_layout(self.cluster.lab)
        snapshot = layout_snapshot(lab, layout) if layout is not None else None
        return snapshot if snapshot is not None and snapshots.has(lab, snapshot) else None

    def remove_all(self) -> list[str]:
        """Remove every instance this factory made that still exists; returns the names."""
        try:
            present = {i["name"] for i in self.cluster.rapi.instances()}
        except RapiError as exc:  # a test that broke its cluster; the next reset restores it
            log.warning("%s: cannot list instances to remove %s: %s", self.cluster.name,
                        ", ".join(self.made), exc)
            return []
        # All submitted at once, as an operator clearing a cluster would: Ganeti runs them
        # side by side up to the cluster's running-job limit (one under emulation).
        jobs = JobSet(self.cluster.rapi, timeout=JOB_TIMEOUT)
        for name in reversed(self.made):
            if name in present:
                jobs.submit(name, lambda name=name: self.cluster.rapi.remove_instance(
                    name, shutdown_timeout=0))
        jobs.wait()
        for failed in jobs.failures():
            log.warning("%s: removing %s failed: %s", self.cluster.name, failed.label,
                        failed.reason)
        removed = [o.label for o in jobs.outcomes if o.ok]
        self.made.clear()
        return removed


def seeded_checksum(mib: int, seed: str, node: Machine) -> str:
    """The sha256 ``write_data`` produces for (``mib``, ``seed``), computed on ``node``."""
    return node.succeed(f"{_known_content(mib, seed)} | sha256sum | cut -d' ' -f1").strip()


def _known_content(mib: int, seed: str) -> str:
    """A shell pipeline printing ``mib`` MiB that depend only on ``seed`` (a keystream)."""
    return (f"openssl enc -aes-128-ctr -nosalt -pass pass:{shlex.quote(seed)} -pbkdf2 "
            f"-in /dev/zero 2>/dev/null | head -c {mib * 2**20}")


__all__ = ["DiskLocation", "InstanceFactory", "disk_checksum", "disk_location",
           "disk_locations", "read_marker", "seeded_checksum", "write_data"]
