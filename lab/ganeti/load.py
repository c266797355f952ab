"""A cluster holding a realistic load, and the picture of it that an upgrade, a move or a roll
must leave unchanged.

A load is instances of the lab's defaults (``InstanceFactory``) on the disk templates and in
the states a scenario asks for, tagged, with known data on disk 0, created as one job set and
started as another. Its picture is what an operator would compare before and after: each
instance's UUID, states, placement, parameters, NICs, disk sizes, tags and disk checksum.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from lab import snapshots
from lab.errors import LabError
from lab.ganeti.bootstrap import current_layout, layout_snapshot, mark_layout_changed
from lab.ganeti.cluster import Cluster
from lab.ganeti.health import ensure_healthy
from lab.ganeti.instances import (
    DiskLocation,
    InstanceFactory,
    disk_checksum,
    disk_locations,
    write_data,
)
from lab.ganeti.jobs import JobSet
from lab.timings import maybe_phase

if TYPE_CHECKING:
    from lab.timings import Phase, Timings

log = logging.getLogger("lab.ganeti.load")

JOB_TIMEOUT = 900
DATA_MIB = 2
# Instance fields of RAPI's bulk listing that say what an instance is and where it runs.
PICTURED = ("uuid", "status", "admin_state", "pnode", "snodes", "os", "disk_template",
            "beparams", "hvparams", "disk.sizes", "nic.macs", "nic.modes", "nic.links", "tags")


@dataclass(frozen=True)
class Placed:
    """One instance of a load: its template, whether it runs, its primary node."""
    template: str
    running: bool
    pnode: str


@dataclass
class Load:
    cluster: Cluster
    instances: dict[str, Placed]
    located: dict[str, DiskLocation] = field(default_factory=dict)

    def picture(self, *, ignore_hvparams: frozenset[str] = frozenset(),
                relocate: bool = False) -> dict[str, dict[str, Any]]:
        """The load as it is now (see the module's doc). ``ignore_hvparams``: hypervisor
        parameters left out (defaults a new Ganeti changes for good). ``relocate``: ask
        Ganeti again where each disk is (after instances moved; a plain move makes new
        volumes)."""
        if relocate or not self.located:
            self.located = disk_locations(self.cluster, list(self.instances))
        rows = {row["name"]: row for row in self.cluster.rapi.instances(bulk=True)}
        found: dict[str, dict[str, Any]] = {}
        for name in self.instances:
            row = rows.get(name)
            if row is None:
                found[name] = {"missing": True}
                continue
            item = {key: row.get(key) for key in PICTURED}
            item["tags"] = sorted(item["tags"] or [])
            item["hvparams"] = {k: v for k, v in (item["hvparams"] or {}).items()
                                if k not in ignore_hvparams}
            item["checksum"] = disk_checksum(self.cluster, name, where=self.located[name])
            found[name] = item
        return found


# What an operator's cluster holds: node-local (plain) and shared (sharedfile) storage,
# running and stopped.
KINDS = [(template, running) for template in ("plain", "sharedfile") for running in (True, False)]


def mix(nodes: list[str], per_kind: int = 1) -> list[Placed]:
    """``per_kind`` instances of every kind (``KINDS``), each kind's spread over ``nodes``
    in turn: with ``per_kind == len(nodes)`` every node holds one instance of every kind."""
    return [Placed(template, running, nodes[(i + k) % len(nodes)])
            for i in range(per_kind) for k, (template, running) in enumerate(KINDS)]


def place(cluster: Cluster, factory: InstanceFactory, placed: list[Placed], *,
          phase: Phase | None = None, tags: tuple[str, ...] = ("lab-load",)) -> Load:
    """Create ``placed`` as one job set (tags set at creation), write known data onto each
    disk, then start the running ones as another job set."""
    jobs = JobSet(cluster.rapi, timeout=JOB_TIMEOUT)
    made: dict[str, Placed] = {}
    for p in placed:
        name = factory.submit(jobs, p.template, pnode=p.pnode,
                              tags=[*tags, f"template:{p.template}"])
        made[name] = p
    jobs.wait()
    if phase is not None:
        jobs.record(phase)
    jobs.raise_for_failures()
    load = Load(cluster, made, disk_locations(cluster, list(made)))
    for name in made:
        write_data(cluster, name, mib=DATA_MIB, seed=name, where=load.located[name])
    starts = JobSet(cluster.rapi, timeout=JOB_TIMEOUT)
    for name, p in made.items():
        if p.running:
            starts.submit(name, lambda name=name: cluster.rapi.startup_instance(name))
    starts.wait()
    starts.raise_for_failures()
    return load


def kept(cluster: Cluster, factory: InstanceFactory, placed: list[Placed], *,
         timings: Timings | None = None) -> Load:
    """The cluster holding ``placed``, built once per lab and kept as a snapshot of its own
    (``<layout snapshot>-load-<digest of placed>``): a later call restores it in seconds
    instead of creating the instances again (minutes under emulation). A kept load older than
    its layout's snapshot (the layout formed again since) is built anew.

    Call it right after ``lab_reset``: the snapshot is of the whole lab. The instances belong
    to the kept state, not to ``factory``: the next test starts from the layout's snapshot
    again, asked for a reset or not."""
    lab = cluster.lab
    layout = current_layout(lab)
    if layout is None:
        raise LabError(f"lab {lab.name} has no layout formed", "use the lab_reset fixture")
    base = layout_snapshot(lab, layout)
    wanted = [asdict(p) for p in placed]
    digest = hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:10]
    name = f"{base}-load-{digest}"
    index = {snap.name: snap for snap in snapshots.list_snapshots(lab)}
    snap = index.get(name)
    if snap is not None and base in index and snap.created >= index[base].created \
            and snap.meta.get("placed") == wanted:
        with maybe_phase(timings, f"restore snapshot {name}"):
            snapshots.restore(lab, name)
            ensure_healthy(cluster)
        record = snap.meta["load"]
        return Load(cluster, {n: Placed(**p) for n, p in record["instances"].items()},
                    {n: DiskLocation(**w) for n, w in record["located"].items()})
    with maybe_phase(timings, "place the load", instances=len(placed)) as phase:
        load = place(cluster, factory, placed, phase=phase)
    factory.made.clear()
    # Saved with the snapshot: whoever restores it holds the load, not the layout's state.
    mark_layout_changed(lab, f"the load of snapshot {name}")
    record = {"instances": {n: asdict(p) for n, p in load.instances.items()},
              "located": {n: asdict(w) for n, w in load.located.items()}}
    with maybe_phase(timings, f"save snapshot {name}"):
        snapshots.save(lab, name, meta={"base": base, "placed": wanted, "load": record})
    log.info("lab %s: load of %d instances kept as snapshot %s", lab.name, len(placed), name)
    return load
