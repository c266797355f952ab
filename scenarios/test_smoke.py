"""Smoke scenario, as an operator would run it: instances with real data on `plain` and
`sharedfile` created through RAPI all at once (the plain ones one job each, the sharedfile ones
in one multi-allocation request), the sharedfile ones live-migrated and failed over with their
data intact, then everything removed and the cluster verified.

Each step is a timed phase; the creations are one job set (waited for through RAPI's long
poll), whose per-job queue and run times are metrics of their phase.
"""

from __future__ import annotations

import pytest

from lab.ganeti.cluster import Cluster
from lab.ganeti.instances import (
    InstanceFactory,
    disk_checksum,
    disk_location,
    read_marker,
    write_data,
)
from lab.ganeti.jobs import JobSet
from lab.pytest_plugin import SizeProfile
from lab.timings import Timings

pytestmark = pytest.mark.lab(layout="one-cluster")

JOB_TIMEOUT = 900


def _primary(cluster: Cluster, name: str) -> str:
    return str(cluster.rapi.instance(name)["pnode"])


def test_instances_through_rapi(lab_reset: object, cluster: Cluster, timings: Timings,
                                lab_profile: SizeProfile, instances: InstanceFactory) -> None:
    per_template = lab_profile.pick(small=1, full=3)
    nodes = sorted(n["name"] for n in cluster.rapi.nodes())
    assert len(nodes) >= 2, f"the smoke scenario needs two nodes, cluster has {nodes}"
    plain = [{"template": "plain", "pnode": nodes[i % len(nodes)]} for i in range(per_template)]
    shared = [{"template": "sharedfile", "pnode": nodes[(per_template + i) % len(nodes)]}
              for i in range(per_template)]

    with timings.phase("create instances through RAPI", count=len(plain) + len(shared)) as phase:
        jobs = JobSet(cluster.rapi, timeout=JOB_TIMEOUT)
        made = {instances.submit(jobs, "plain", pnode=spec["pnode"]): spec for spec in plain}
        made.update(zip(instances.submit_multi_alloc(jobs, shared), shared, strict=True))
        jobs.wait()
        jobs.record(phase)
        jobs.raise_for_failures()
    assert sorted(o.label for o in jobs.outcomes if o.job_id is not None) == sorted(
        [*made, "multi-alloc"]), "every instance has its own creation job"
    states = cluster.instance_states()
    located = {name: disk_location(cluster, name) for name in made}
    for name, spec in made.items():
        assert states[name]["disk_template"] == spec["template"]
        assert states[name]["pnode"] == spec["pnode"]
        # The lab OS made a filesystem.
        assert read_marker(cluster, name, located[name])["instance"] == name

    moving = [(name, spec["pnode"]) for name, spec in made.items()
              if spec["template"] == "sharedfile"]
    with timings.phase("write known data", count=len(moving)):
        checksums = {}
        for name, _ in moving:
            write_data(cluster, name, mib=4, where=located[name])
            checksums[name] = disk_checksum(cluster, name, where=located[name])
    with timings.phase("start instances", count=len(made)):
        for name in made:
            cluster.rapi.startup_instance(name).wait(timeout=JOB_TIMEOUT)
            assert cluster.rapi.instance(name)["status"] == "running"

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
    assert cluster.verify().ok
