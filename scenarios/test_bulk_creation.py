"""Bulk instance creation through RAPI, the ways operators submit it, side by side; and how
labels steer `hail`'s placement.

Runbook: on an empty cluster, create N instances in each submission mode (one by one; all at
once; all at once with opportunistic locking; one multi-allocation request; placed by hail;
all on one node and one volume group), recording per job the submit latency, queue wait, run
time and outcome with Ganeti's reason, and per mode the time to first and last success and
instances per minute; start the next mode from the layout's snapshot again. Then, one
labelling case at a time, let hail place instances and record where they landed. Last, ext4's
lazy initialisation against eager: instances made one by one on one node, each filesystem
mounted as its first boot would, on the session's lab (the host's page cache absorbs the
writes) and on a lab whose volume group's disk is uncached (every write reaches the host's
disk). The report's "Creation modes", "Placement by hail" and "ext4 initialisation" tables
hold the figures.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab import topology
from lab.bringup import bring_up
from lab.ganeti import bulk, lazy_init
from lab.ganeti.bootstrap import form_layout
from lab.ganeti.cluster import Cluster
from lab.ganeti.instances import InstanceFactory
from lab.ganeti.rapi import JobFailed
from lab.images import ImageStore
from lab.lab import Lab, destroy
from lab.pytest_plugin import SizeProfile
from lab.timings import Timings

CI_ROOM = "longer than the room CI has left under emulation (README, What CI runs)"
pytestmark = [pytest.mark.lab(layout="one-cluster")]
MODES_TABLE, PLACEMENT_TABLE = "Creation modes", "Placement by hail"
INIT_TABLE = "ext4 initialisation"
UNCACHED_TOPOLOGY, UNCACHED_LAB = "tiny-uncached", "uncached"
# Lazy's later creations a fifth slower than eager's: beyond the spread of creation job times
# one after another on one node here (within about 10%, the first one apart).
SLOWDOWN = 1.2


@pytest.fixture
def roomy(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster with room for many one-vCPU instances per node (logged)."""
    bulk.make_room(cluster)
    yield cluster


def _start_over(instances: InstanceFactory, timings: Timings, why: str) -> None:
    """The next mode or case starts from the empty cluster again: the layout's snapshot
    restored (seconds; removing each instance is a Ganeti job), the room made again."""
    with timings.phase(f"start over after {why}") as phase:
        phase.metric("how", instances.start_over(why))
        bulk.make_room(instances.cluster)


@pytest.mark.nightly(reason=CI_ROOM)
def test_creation_modes_side_by_side(lab_reset: object, roomy: Cluster,
                                     instances: InstanceFactory, timings: Timings,
                                     lab_profile: SizeProfile) -> None:
    count = lab_profile.pick(small=2, full=50)
    limit = roomy.rapi.info().get("max_running_jobs")
    for mode in bulk.MODES:
        with timings.phase(f"create {count} {mode}", table=MODES_TABLE) as phase:
            created = bulk.create(instances, mode, count)
            for key, value in created.jobs.summary().items():
                phase.metric(key, value)
            for node, held in bulk.placement(roomy, created.names).items():
                phase.metric(f"on {node.split('.')[0]}", held)
            phase.metric("max running jobs", limit)
            created.jobs.record(phase)
        # Every job ended; a failure carries Ganeti's reason.
        assert all(o.final for o in created.jobs.outcomes)
        assert all(o.reason for o in created.jobs.failures())
        if mode == bulk.ONE_NODE:
            assert bulk.placement(roomy, created.succeeded)[roomy.plan.nodes[0]] == len(
                created.succeeded)
        _start_over(instances, timings, f"the {mode} instances")
        assert roomy.rapi.instances() == []
    with timings.phase("gnt-cluster verify"):
        verify = roomy.verify()
    assert verify.ok, verify.output


@pytest.mark.nightly(reason=CI_ROOM)
def test_labels_steer_hail(lab_reset: object, roomy: Cluster, instances: InstanceFactory,
                           timings: Timings, lab_profile: SizeProfile) -> None:
    nodes = roomy.plan.nodes
    # One more than there are nodes: the exclusion case must refuse the last one.
    count = lab_profile.pick(small=len(nodes) + 1, full=4 * len(nodes))
    for case in bulk.LABEL_CASES:
        labels = bulk.apply_labels(roomy, case)
        with timings.phase(f"hail places {count} with {case}", table=PLACEMENT_TABLE) as phase:
            # One by one: hail sees every earlier instance where it landed.
            created = bulk.create(instances, bulk.ONE_BY_ONE, count, iallocator=bulk.HAIL,
                                  tags=list(labels.instance_tags))
            spread = bulk.placement(roomy, created.succeeded)
            for node, held in spread.items():
                phase.metric(f"on {node.split('.')[0]}", held)
            phase.metric("failed", len(created.jobs.failures()))
        if labels.node is not None:
            assert spread[labels.node] == 0, (case, spread)
        if case == bulk.EXCLUSION:
            assert max(spread.values()) == 1, spread
            failed = created.jobs.failures()
            assert len(failed) == count - len(nodes)
            assert all("FailTags" in (o.reason or "") for o in failed), failed
        else:
            assert not created.jobs.failures(), created.jobs.failures()
        # The restore takes the labels off with the instances.
        _start_over(instances, timings, case)


@pytest.mark.xfail(strict=True, raises=JobFailed, reason=(
    "Ganeti 3.0.2 bug: `gnt-cluster modify --default-iallocator-params=no-capacity-checks` "
    "stores True for the flag, and every later hail run fails (\"can only concatenate str "
    "(not \\\"bool\\\") to str\"); RAPI's PUT /2/modify with a null value works (LAB-NOTES)"))
def test_default_iallocator_params_from_the_command_line(
        lab_reset: object, roomy: Cluster, instances: InstanceFactory) -> None:
    roomy.gnt("gnt-cluster modify --default-iallocator-params=no-capacity-checks")
    try:
        instances.create("plain", iallocator=bulk.HAIL)
    except JobFailed as exc:
        assert "can only concatenate str (not \"bool\") to str" in str(exc), exc
        raise


def _lazy_against_eager(factory: InstanceFactory, timings: Timings, count: int,
                        disk_mib: int) -> dict[str, lazy_init.Series]:
    """Both lab OS variants one after the other on the factory's cluster, each a row of the
    report's table; the next series starts over without the earlier one's instances."""
    found = {}
    for variant in lazy_init.VARIANTS:
        with timings.phase(f"{count} x lab+{variant} one by one on one node",
                           table=INIT_TABLE) as phase:
            series = lazy_init.series(factory, variant, count, disk_mib=disk_mib)
            for key, value in series.figures().items():
                phase.metric(key, value)
        found[variant] = series
        with timings.phase(f"start over after the lab+{variant} instances") as phase:
            phase.metric("how", factory.start_over(f"the lab+{variant} series"))
    eager, lazy = found["eager"], found["lazy"]
    assert not [c.outcome.reason for s in found.values() for c in s.creations
                if not c.outcome.ok]
    # Each variant is what it says: eager zeroes every inode table before mkfs returns; lazy
    # leaves them, and the kernel zeroes them once the filesystem is mounted.
    assert sum(c.zeroed_at_creation for c in eager.creations) == eager.groups_total > 0
    assert sum(c.zeroed_at_creation for c in lazy.creations) < lazy.groups_total
    assert lazy.zeroed_after_idle > sum(c.zeroed_at_creation for c in lazy.creations)
    eager_later = eager.figures()["later runs median s"]
    lazy_later = lazy.figures()["later runs median s"]
    with timings.phase("lazy against eager", table=INIT_TABLE) as phase:
        phase.metric("disk cache", lazy.disk_cache)
        ratio = (round(lazy_later / eager_later, 2) if isinstance(lazy_later, float)
                 and isinstance(eager_later, float) and eager_later else None)
        phase.metric("lazy later / eager later", ratio)
        phase.metric("slowdown", None if ratio is None else
                     "seen" if ratio >= SLOWDOWN else "not seen on this machine")
    return found


@pytest.mark.nightly(reason=CI_ROOM)
def test_ext4_lazy_or_eager_on_the_session_lab(lab_reset: object, cluster: Cluster,
                                               instances: InstanceFactory, timings: Timings,
                                               lab_profile: SizeProfile) -> None:
    _lazy_against_eager(instances, timings, lab_profile.pick(small=3, full=8), disk_mib=256)


@pytest.mark.nightly(reason="boots and bootstraps a tiny lab of its own with an uncached "
                            "data disk (about 5 minutes before the measurement)")
def test_ext4_lazy_or_eager_with_every_write_on_the_host_disk(
        lab_host: ImageStore, timings: Timings, lab_profile: SizeProfile) -> None:
    destroy(UNCACHED_LAB, force=True)
    lab = Lab.prepare(topology.load(UNCACHED_TOPOLOGY), UNCACHED_LAB, lab_host)
    try:
        with timings.phase(f"{UNCACHED_TOPOLOGY} lab up and its cluster formed"):
            bring_up(lab)
            solo = form_layout(lab, "single")["solo"]
        assert lab.plan.machine("node1").disk_cache == "none"
        factory = InstanceFactory(solo)
        _lazy_against_eager(factory, timings, lab_profile.pick(small=3, full=10),
                            disk_mib=lab_profile.pick(small=256, full=1024))
    finally:
        lab.destroy()
