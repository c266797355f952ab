"""Smoke scenario, as an operator would run it: instances with real data on `plain`, `file`
and `sharedfile` created through RAPI all at once (the plain and file ones one job each, the
sharedfile ones in one multi-allocation request); each disk checked where it lives (the lab
OS's filesystem, known data written, a disk exported and imported unchanged); every instance
started; the sharedfile ones live-migrated and failed over with their data intact; then
everything removed at once and the cluster verified.

Each step is a timed phase; the creations are one job set (waited for through RAPI's long
poll), whose per-job queue and run times are metrics of their phase.
"""

from __future__ import annotations

import pytest

from lab.ganeti.cluster import Cluster
from lab.ganeti.instances import (
    InstanceFactory,
    disk_checksum,
    disk_locations,
    read_marker,
    seeded_checksum,
    write_data,
)
from lab.ganeti.jobs import JobSet
from lab.pytest_plugin import SizeProfile
from lab.timings import Timings

pytestmark = pytest.mark.lab(layout="one-cluster")

JOB_TIMEOUT = 900
# Which lab OS variant each template's instances get: both the eager and the lazy
# filesystem initialisation are made in every run.
VARIANT = {"plain": "eager", "file": "lazy", "sharedfile": "lazy"}
DATA_MIB = 2


def _primary(cluster: Cluster, name: str) -> str:
    return str(cluster.rapi.instance(name)["pnode"])


def test_instances_through_rapi(lab_reset: object, cluster: Cluster, timings: Timings,
                                lab_profile: SizeProfile, instances: InstanceFactory) -> None:
    per_template = lab_profile.pick(small=1, full=3)
    nodes = sorted(n["name"] for n in cluster.rapi.nodes())
    assert len(nodes) >= 2, f"the smoke scenario needs two nodes, cluster has {nodes}"
    specs = {template: [{"template": template, "os": f"lab+{VARIANT[template]}",
                         "pnode": nodes[(k * per_template + i) % len(nodes)]}
                        for i in range(per_template)]
             for k, template in enumerate(VARIANT)}

    with timings.phase("create instances through RAPI", count=len(VARIANT) * per_template
                       ) as phase:
        jobs = JobSet(cluster.rapi, timeout=JOB_TIMEOUT)
        made = {}
        for template in ("plain", "file"):
            for spec in specs[template]:
                options = {k: v for k, v in spec.items() if k != "template"}
                made[instances.submit(jobs, template, **options)] = spec
        made.update(zip(instances.submit_multi_alloc(jobs, specs["sharedfile"]),
                        specs["sharedfile"], strict=True))
        jobs.wait()
        jobs.record(phase)
        jobs.raise_for_failures()
    assert sorted(o.label for o in jobs.outcomes if o.job_id is not None) == sorted(
        [*made, "multi-alloc"]), "every instance has its own creation job"

    states = cluster.instance_states()
    # Where each disk lives: one Ganeti lookup per instance while none of them moves.
    located = disk_locations(cluster, list(made))
    for name, spec in made.items():
        assert states[name]["disk_template"] == spec["template"]
        assert states[name]["pnode"] == spec["pnode"]
        assert states[name]["status"] == "ADMIN_down"
        # The lab OS made a filesystem, eager or lazy as asked.
        assert read_marker(cluster, name, located[name]) == {
            "instance": name, "variant": VARIANT[spec["template"]], "hypervisor": "fake"}

    with timings.phase("write known data", count=len(made)):
        expected = seeded_checksum(DATA_MIB, "lab-seed", cluster.master)
        checksums = {}
        for name, spec in made.items():
            before = disk_checksum(cluster, name, where=located[name])
            assert write_data(cluster, name, mib=DATA_MIB, seed="lab-seed",
                              where=located[name]) == expected, spec["template"]
            checksums[name] = disk_checksum(cluster, name, where=located[name])
            assert checksums[name] != before, f"writing data did not change {name}'s disk"

    exported = next(name for name, spec in made.items() if spec["template"] == "plain")
    with timings.phase("export and import a disk through the lab OS"):
        # The OS definition's export and import move the disk's bytes unchanged.
        where = located[exported]
        copy = "/root/export-import.copy"
        cluster.lab.machine(where.node).succeed(
            f"EXPORT_DISK_PATH={where.path} /usr/share/ganeti/os/lab/export | "
            f"IMPORT_DISK_PATH={copy} /usr/share/ganeti/os/lab/import && "
            f"test $(sha256sum < {copy} | cut -d' ' -f1) = {checksums[exported]}; "
            f"rm -f {copy}")

    with timings.phase("start instances", count=len(made)) as phase:
        starts = JobSet(cluster.rapi, timeout=JOB_TIMEOUT)
        for name in made:
            starts.submit(name, lambda name=name: cluster.rapi.startup_instance(name))
        starts.wait()
        starts.record(phase)
        starts.raise_for_failures()
    states = cluster.instance_states()
    assert {name: states[name]["status"] for name in made} == dict.fromkeys(made, "running")

    moving = [(name, spec["pnode"]) for name, spec in made.items()
              if spec["template"] == "sharedfile"]
    with timings.phase("live-migrate sharedfile instances", count=len(moving)):
        for name, pnode in moving:
            target = next(n for n in nodes if n != pnode)
            cluster.rapi.migrate_instance(name, mode="live", target_node=target).wait(
                timeout=JOB_TIMEOUT)
            assert _primary(cluster, name) == target
    with timings.phase("fail over sharedfile instances", count=len(moving)):
        for name, pnode in moving:
            cluster.rapi.failover_instance(name, target_node=pnode).wait(timeout=JOB_TIMEOUT)
            assert _primary(cluster, name) == pnode
            assert cluster.rapi.instance(name)["status"] == "running"
    for name, _ in moving:
        assert disk_checksum(cluster, name) == checksums[name], f"{name}'s disk changed"

    with timings.phase("remove instances", count=len(made)):
        assert sorted(instances.remove_all()) == sorted(made)
    left = {i["name"] for i in cluster.rapi.instances()}
    assert not left & set(made), f"instances left behind: {left}"
    with timings.phase("verify the cluster"):
        verify = cluster.verify()
    assert verify.ok, verify.output
