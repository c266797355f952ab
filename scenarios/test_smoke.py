"""Smoke scenario, as an operator would run it: instances on `plain` and `sharedfile` created
through RAPI, the sharedfile ones live-migrated and failed over, then everything removed.

Each step is a timed phase; job run times from Ganeti feed the instances/minute figure.
"""

from __future__ import annotations

import pytest

from lab.ganeti.cluster import Cluster
from lab.pytest_plugin import SizeProfile
from lab.timings import Timings

pytestmark = pytest.mark.lab(layout="one-cluster")

DISK_MIB = 256
JOB_TIMEOUT = 900


def _create(cluster: Cluster, name: str, template: str, pnode: str) -> float:
    job = cluster.rapi.create_instance(
        name, disk_template=template, disks=[{"size": DISK_MIB}], nics=[{}], os="noop",
        hypervisor="fake", pnode=pnode, beparams={"memory": 128, "vcpus": 1},
        start=True, ip_check=False, name_check=False)
    job.wait(timeout=JOB_TIMEOUT)
    return job.run_seconds or 0.0


def _primary(cluster: Cluster, name: str) -> str:
    return str(cluster.rapi.instance(name)["pnode"])


def test_instances_through_rapi(lab_reset: object, cluster: Cluster, timings: Timings,
                                lab_profile: SizeProfile) -> None:
    per_template = lab_profile.pick(small=1, full=3)
    nodes = sorted(n["name"] for n in cluster.rapi.nodes())
    assert len(nodes) >= 2, f"the smoke scenario needs two nodes, cluster has {nodes}"
    plans = [(f"inst{i + 1}.lab", template, nodes[i % len(nodes)])
             for i, template in enumerate(["plain"] * per_template
                                          + ["sharedfile"] * per_template)]

    with timings.phase("create instances through RAPI", count=len(plans)) as phase:
        job_seconds = [_create(cluster, name, template, pnode)
                       for name, template, pnode in plans]
        phase.metric("instances_per_minute", round(60 * len(plans) / phase.elapsed(), 2))
        phase.metric("mean_job_seconds", round(sum(job_seconds) / len(job_seconds), 2))
    states = cluster.instance_states()
    for name, template, pnode in plans:
        assert states[name]["disk_template"] == template
        assert states[name]["pnode"] == pnode
        assert states[name]["status"] == "running", states[name]

    shared = [(name, pnode) for name, template, pnode in plans if template == "sharedfile"]
    with timings.phase("live-migrate sharedfile instances", count=len(shared)):
        for name, pnode in shared:
            target = next(n for n in nodes if n != pnode)
            cluster.rapi.migrate_instance(name, mode="live", target_node=target).wait(
                timeout=JOB_TIMEOUT)
            assert _primary(cluster, name) == target
    with timings.phase("fail over sharedfile instances", count=len(shared)):
        for name, pnode in shared:
            cluster.rapi.failover_instance(name, target_node=pnode).wait(timeout=JOB_TIMEOUT)
            assert _primary(cluster, name) == pnode
            assert cluster.rapi.instance(name)["status"] == "running"

    with timings.phase("remove instances", count=len(plans)):
        for name, _, _ in plans:
            cluster.rapi.remove_instance(name).wait(timeout=JOB_TIMEOUT)
    left = {i["name"] for i in cluster.rapi.instances()}
    assert not left & {name for name, _, _ in plans}, f"instances left behind: {left}"
    assert cluster.verify().ok
