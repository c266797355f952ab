"""Roll & deploy a fresh hypervisor image onto a running, loaded cluster, one node at a time:
its instances moved away (live migration where the template allows, failover for a stopped
instance on shared storage, `gnt-instance move` for node-local disks), the node drained and
set offline, its root disk replaced by a fresh copy of the hypervisor image, the node re-added
(`gnt-node add --readd`) and its instances moved back. The master's node is rolled too: the
master role moves away before its turn and back after it.

The cluster stays up throughout, no instance is lost, every disk keeps its data; each
instance's downtime, as RAPI showed it, is recorded. A re-image cannot be undone by a snapshot,
so this runs after every other test of the lab (marker ``reimages``).
"""

from __future__ import annotations

import pytest

from lab.ganeti import roll
from lab.ganeti.cluster import Cluster
from lab.ganeti.instances import InstanceFactory
from lab.ganeti.load import mix, place
from lab.pytest_plugin import SizeProfile
from lab.timings import Timings

# Under emulation on CI's 2 cores this scenario alone takes longer than the room CI has
# left (README, "What CI runs"); it runs in `ganeti-lab run` until #17 makes room.
CI_ROOM = "longer than the room CI has left under emulation (README, What CI runs)"
pytestmark = [pytest.mark.lab(layout="one-cluster", reimages=True),
              pytest.mark.nightly(reason=CI_ROOM)]


def test_roll_a_fresh_image_onto_every_hypervisor(lab_reset: object, cluster: Cluster,
                                                 timings: Timings, lab_profile: SizeProfile,
                                                 instances: InstanceFactory) -> None:
    master = cluster.master_name
    # CI rolls the master's node (every code path: master-failover, each way to move);
    # the nightly run rolls them all, the master's last.
    rolled = lab_profile.pick(small=[master],
                              full=[*[n for n in cluster.plan.nodes if n != master], master])
    with timings.phase("load the cluster") as phase:
        # Each rolled node holds one instance of every kind.
        load = place(cluster, instances, mix(rolled, len(rolled)), phase=phase)
        phase.metric("instances", len(load.instances))
    before = load.picture()
    kinds = {roll.how_to_move(p.template, p.running) for p in load.instances.values()}
    assert kinds == {"live migration", "failover", "move"}, kinds

    watch = roll.Downtime(cluster)
    with timings.phase("roll & deploy", timeline=True) as rolling:
        with watch.watching():
            for node in rolled:
                with timings.phase(f"roll {node.split('.')[0]}"):
                    moves = roll.roll_node(cluster, node, timings)
                assert {m.instance for m in moves} == {
                    name for name, p in load.instances.items() if p.pnode == node}
        for name, seconds in sorted(watch.down.items()):
            rolling.metric(f"downtime {name.split('.')[0]}", round(seconds, 1))
        rolling.metric("seconds RAPI did not answer", round(watch.unseen, 1))
        rolling.metric("downtime polls", watch.polls)

    assert cluster.master_name == master
    assert watch.polls > 0, "RAPI never answered while the nodes rolled"
    # Every instance is where it was, as it was, its data intact.
    assert load.picture(relocate=True) == before
    with timings.phase("gnt-cluster verify"):
        verify = cluster.verify()
    assert verify.ok, verify.output
    reimaged = cluster.lab.dir / "reimaged.json"
    assert all(node.split(".")[0] in reimaged.read_text() for node in rolled)

