"""Does ext4's lazy initialisation slow down the creations that follow it?

The operators' question (SEED-TALK): creating many instances one after another on one
hypervisor and one volume group was slow, traced to `mkfs.ext4` returning before its
initialisation was done. The lab OS formats an instance's disk either way: ``eager`` writes
the inode tables and the journal before mkfs returns; ``lazy`` leaves the inode tables to the
kernel's ``ext4lazyinit`` thread, which zeroes them while the filesystem is mounted.

``series`` creates instances one by one on one node with one variant and, after each, does
to the disk what the instance's first boot does: mounts its filesystem read-write and keeps
it mounted. The lab's instances run on Ganeti's fake hypervisor, which boots no guest, so the
lab mounts the filesystem on the node itself; the kernel thread and its writes are real. Per
creation it records the job's figures, the bytes the node wrote to the volume group's disk
while the job ran, and how many of the filesystem's block groups had their inode table zeroed
when the job ended; after the series, what the node wrote while nothing else ran.

Whether the writes reach a real disk is the lab's choice, not the guest's: a topology's
``disk_cache`` (lab.topology) is "unsafe" by default (the host's page cache absorbs them) and
"none" or "directsync" for a lab that measures real I/O pressure.
"""

from __future__ import annotations

import logging
import re
import shlex
import statistics
import time
from dataclasses import dataclass, field

from lab.errors import LabError
from lab.ganeti.instances import InstanceFactory
from lab.ganeti.jobs import JobOutcome, JobSet
from lab.remote import Machine

log = logging.getLogger("lab.ganeti.lazy_init")

VARIANTS = ("eager", "lazy")
# Where the lab keeps the filesystems of the instances it plays the guest of.
GUEST_MOUNTS = "/run/ganeti-lab/guests"
JOB_TIMEOUT = 1800.0
SECTOR = 512
# "Group 3: (Blocks 24577-32768) csum 0x1a2b [INODE_UNINIT, ITABLE_ZEROED]"; the header's
# "Group descriptor size:" is not a group.
GROUP_LINE = re.compile(r"Group \d+: ")


@dataclass
class Creation:
    name: str
    outcome: JobOutcome
    written_mib: float       # the node wrote to the volume group's disk while the job ran
    groups: int              # block groups of the new filesystem
    zeroed_at_creation: int  # of them with their inode table zeroed when the job ended


@dataclass
class Series:
    variant: str
    node: str
    disk_mib: int
    disk_cache: str
    creations: list[Creation] = field(default_factory=list)
    idle_seconds: float = 0.0
    idle_written_mib: float = 0.0   # written after the series, while only the kernel worked
    zeroed_after_idle: int = 0      # inode tables zeroed, over all filesystems, after that
    groups_total: int = 0

    @property
    def run_seconds(self) -> list[float]:
        return [c.outcome.run_seconds or 0.0 for c in self.creations]

    def figures(self) -> dict[str, float | int | str | None]:
        """The series in numbers: the first creation against the ones after it."""
        runs = self.run_seconds
        later = runs[1:]
        first = runs[0] if runs else None
        median_later = statistics.median(later) if later else None
        return {
            "variant": self.variant,
            "disk cache": self.disk_cache,
            "disk MiB": self.disk_mib,
            "creations": len(self.creations),
            "failed": sum(1 for c in self.creations if not c.outcome.ok),
            "first run s": _r(first),
            "later runs median s": _r(median_later),
            "later / first": _r(median_later / first) if first and median_later else None,
            "written per creation MiB": _r(statistics.mean(
                c.written_mib for c in self.creations)) if self.creations else None,
            "itables zeroed at creation": sum(c.zeroed_at_creation for c in self.creations),
            "itables": self.groups_total,
            "idle s": _r(self.idle_seconds),
            "written while idle MiB": _r(self.idle_written_mib),
            "itables zeroed after idle": self.zeroed_after_idle,
        }


def series(factory: InstanceFactory, variant: str, count: int, *, node: str | None = None,
           disk_mib: int = 256, idle_seconds: float = 30.0) -> Series:
    """Create ``count`` plain instances of lab OS ``variant`` one by one on ``node`` (default:
    the cluster's first), each filesystem mounted as its guest would mount it before the next
    creation starts; then let the node sit idle ``idle_seconds`` and count what it wrote.
    Every guest filesystem is unmounted before this returns; the instances stay (the
    factory's) for the caller to remove."""
    if variant not in VARIANTS:
        raise LabError(f"no lab OS variant {variant!r}", f"choose one of: {', '.join(VARIANTS)}")
    cluster = factory.cluster
    node = node or cluster.plan.nodes[0]
    machine = cluster.lab.machine(node.split(".")[0])
    cache = cluster.lab.plan.machine(machine.name).disk_cache
    disk = _volume_group_disk(machine, cluster.plan.vg_name)
    result = Series(variant, node, disk_mib, cache)
    mounted: dict[str, str] = {}  # mount point -> the logical volume mounted there
    try:
        for _ in range(count):
            before_lvs = _logical_volumes(machine, cluster.plan.vg_name)
            written_before = _sectors_written(machine, disk)
            jobs = JobSet(cluster.rapi, timeout=JOB_TIMEOUT)
            name = factory.submit(jobs, "plain", pnode=node, os=f"lab+{variant}",
                                  disk_mib=disk_mib)
            (outcome,) = jobs.wait()
            written = (_sectors_written(machine, disk) - written_before) * SECTOR / 2**20
            if not outcome.ok:
                log.warning("%s: creating %s (%s) failed: %s", cluster.name, name, variant,
                            outcome.reason)
                result.creations.append(Creation(name, outcome, written, 0, 0))
                continue
            added = _logical_volumes(machine, cluster.plan.vg_name) - before_lvs
            if len(added) != 1:
                raise LabError(f"{machine.name}: creating {name} added {sorted(added) or 'no'} "
                               f"logical volumes to {cluster.plan.vg_name}, where a plain "
                               "instance's one disk is one", "look at `lvs` on the node")
            (lv,) = added
            groups, zeroed = _inode_tables(machine, lv)
            result.creations.append(Creation(name, outcome, written, groups, zeroed))
            result.groups_total += groups
            mounted[_boot_as_guest(machine, name, lv)] = lv
            log.info("%s: %s (lab+%s) created in %.1f s on %s, %.1f MiB written, %d of %d "
                     "inode tables zeroed", cluster.name, name, variant,
                     outcome.run_seconds or 0.0, node, written, zeroed, groups)
        idle_before = _sectors_written(machine, disk)
        started = time.monotonic()
        time.sleep(idle_seconds)
        result.idle_seconds = time.monotonic() - started
        result.idle_written_mib = (_sectors_written(machine, disk) - idle_before) \
            * SECTOR / 2**20
        result.zeroed_after_idle = sum(_inode_tables(machine, lv)[1] for lv in mounted.values())
    finally:
        for mnt in reversed(mounted):
            machine.run(f"umount {shlex.quote(mnt)} && rmdir {shlex.quote(mnt)}", timeout=300)
    return result


def _boot_as_guest(machine: Machine, name: str, lv: str) -> str:
    """Mount the instance's filesystem read-write, as its first boot would; the mount starts
    ext4lazyinit on a lazily made filesystem."""
    mnt = f"{GUEST_MOUNTS}/{name}"
    machine.succeed(f"mkdir -p {shlex.quote(mnt)} && mount -o rw {shlex.quote(lv)} "
                    f"{shlex.quote(mnt)}")
    return mnt


def _volume_group_disk(machine: Machine, vg: str) -> str:
    """The kernel name of the disk under volume group ``vg`` (e.g. vdb)."""
    out = machine.succeed(f"pvs --noheadings -o pv_name --select vg_name={shlex.quote(vg)}")
    pvs = out.split()
    if len(pvs) != 1:
        raise LabError(f"{machine.name}: volume group {vg} lies on {pvs or 'no disk'}, not on "
                       "one disk", "give the hypervisor one data disk for its volume group")
    return pvs[0].removeprefix("/dev/")


def _sectors_written(machine: Machine, disk: str) -> int:
    # /sys/block/<disk>/stat: the seventh field counts 512-byte sectors written.
    return int(machine.succeed(f"cat /sys/block/{shlex.quote(disk)}/stat").split()[6])


def _logical_volumes(machine: Machine, vg: str) -> set[str]:
    out = machine.succeed(f"lvs --noheadings -o lv_path {shlex.quote(vg)}")
    return {line.strip() for line in out.splitlines() if line.strip()}


def _inode_tables(machine: Machine, device: str) -> tuple[int, int]:
    """(block groups, those flagged ITABLE_ZEROED) of the ext4 filesystem on ``device``."""
    return inode_tables(machine.succeed(f"dumpe2fs {shlex.quote(device)} 2>/dev/null",
                                        timeout=300))


def inode_tables(dumpe2fs: str) -> tuple[int, int]:
    """(block groups, those flagged ITABLE_ZEROED) in the output of `dumpe2fs`."""
    groups = [line for line in dumpe2fs.splitlines() if GROUP_LINE.match(line)]
    return len(groups), sum(1 for line in groups if "ITABLE_ZEROED" in line)


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


__all__ = ["GUEST_MOUNTS", "VARIANTS", "Creation", "Series", "inode_tables", "series"]
