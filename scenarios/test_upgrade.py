"""Upgrade a loaded 4-node cluster from Ganeti 3.0 to 3.1 and back, as Debian and Ganeti
document it: the packages on every node at once (from the service box's repository, offline),
then `gnt-cluster upgrade --to=3.1` on the master; later `--to=3.0` and the top-level package
back to 3.0.2. After each step the cluster must be the same cluster: every node on the new
version, a clean verify, every instance with its UUID, state, parameters, tags and data, RAPI
answering with the same credentials, new jobs running.

And the ways it goes wrong: a node without the 3.1 packages (Ganeti refuses; nothing
changes), and the upgrade killed half-way (the lab finds the half-done state, `gnt-cluster
upgrade --resume` completes it).
"""

from __future__ import annotations

import pytest

from lab.ganeti import health, upgrade
from lab.ganeti.cluster import Cluster
from lab.ganeti.instances import InstanceFactory
from lab.ganeti.load import Load, kept, mix
from lab.pytest_plugin import SizeProfile
from lab.timings import Timings

# Under emulation on CI's 2 cores the round trip and the killed upgrade take longer than the
# room CI has left (README, "What CI runs"); they run in `ganeti-lab run`, the refusal in CI.
CI_ROOM = "longer than the room CI has left under emulation (README, What CI runs)"
pytestmark = [pytest.mark.lab(layout="one-cluster")]

JOB_TIMEOUT = 900
OLD, NEW = "3.0", "3.1"


def _load(cluster: Cluster, instances: InstanceFactory, timings: Timings,
          lab_profile: SizeProfile) -> tuple[Load, dict[str, dict[str, object]]]:
    """Every node holding instances of the kinds an operator's cluster holds; built by the
    first test and kept as a snapshot for the others."""
    nodes = list(cluster.plan.nodes)
    with timings.phase("load the cluster"):
        load = kept(cluster, instances, mix(nodes, lab_profile.pick(small=1, full=2)),
                    timings=timings)
    return load, load.picture(ignore_hvparams=upgrade.CHANGED_BY_31)


def _prove(cluster: Cluster, series: str, load: Load, before: dict[str, dict[str, object]],
           timings: Timings) -> None:
    """The proofs of an upgrade (or a downgrade) to ``series``."""
    with timings.phase(f"prove the cluster on {series}"):
        found = cluster.versions()
        assert {v.split()[0] for v in found.values()} == {series}, found
        assert len(set(found.values())) == 1, f"nodes run different packages: {found}"
        assert upgrade.pending(cluster) is None
        with timings.phase("gnt-cluster verify"):
            verify = cluster.verify()
        assert verify.ok, verify.output
        # The same instances, as they were; RAPI answers with the credentials it had.
        assert load.picture(ignore_hvparams=upgrade.CHANGED_BY_31) == before
        # New jobs run.
        name = next(iter(load.instances))
        cluster.rapi.add_tags("instance", name, [f"on-{series}"]).wait(timeout=JOB_TIMEOUT)
        assert f"on-{series}" in cluster.rapi.tags("instance", name)
        cluster.rapi.delete_tags("instance", name, [f"on-{series}"]).wait(timeout=JOB_TIMEOUT)


@pytest.mark.nightly(reason=CI_ROOM)
def test_upgrade_a_loaded_cluster_to_31_and_back(lab_reset: object, cluster: Cluster,
                                                 timings: Timings, lab_profile: SizeProfile,
                                                 instances: InstanceFactory) -> None:
    with timings.phase(f"upgrade {OLD} -> {NEW} -> {OLD}", timeline=True):
        load, before = _load(cluster, instances, timings, lab_profile)
        hv_before = upgrade.cluster_hvparams(cluster)

        with timings.phase(f"install the {NEW} packages on every node") as phase:
            upgrade.install_series(cluster, NEW, timings=timings, parent=phase)
        with timings.phase(f"gnt-cluster upgrade --to={NEW}"):
            upgrade.upgrade(cluster, NEW)
        _prove(cluster, NEW, load, before, timings)
        # 3.1 changes two hypervisor defaults for good, and nothing else of the cluster's.
        hv_new = upgrade.cluster_hvparams(cluster)
        changed = upgrade.changed_params(hv_before, hv_new)
        assert changed <= upgrade.CHANGED_BY_31, (hv_before, hv_new)

        with timings.phase(f"gnt-cluster upgrade --to={OLD}"):
            upgrade.upgrade(cluster, OLD)
        with timings.phase(f"put the {OLD} packages back on every node") as phase:
            upgrade.install_series(cluster, OLD, timings=timings, parent=phase)
        _prove(cluster, OLD, load, before, timings)
        # 3.1's new defaults stay; xen_cmd, which 3.1 dropped, comes back as xl.
        hv_back = upgrade.cluster_hvparams(cluster)
        assert upgrade.changed_params(hv_before, hv_back) <= upgrade.CHANGED_BY_31, \
            (hv_before, hv_back)
        problems = upgrade.downgrade_problems(hv_new, hv_back)
        assert not problems, "\n".join(problems)


def test_a_node_without_31_is_refused_and_nothing_changes(lab_reset: object, cluster: Cluster,
                                                          timings: Timings) -> None:
    lacking = cluster.nodes[-1]
    config = "sha256sum /var/lib/ganeti/config.data | cut -d' ' -f1"
    with timings.phase(f"take the {NEW} packages off {lacking.name}"):
        upgrade.remove_series(lacking, NEW)
    others = [m for m in cluster.nodes if m is not lacking]
    with timings.phase(f"install the {NEW} packages on the other nodes") as phase:
        upgrade.install_series(cluster, NEW, others, timings=timings, parent=phase)
    config_before = cluster.master.succeed(config)
    with timings.phase(f"gnt-cluster upgrade --to={NEW}"), \
            pytest.raises(upgrade.UpgradeRefused) as refused:
        upgrade.upgrade(cluster, NEW)
    assert refused.value.nodes == [cluster.lab.plan.machine(lacking.name).fqdn], \
        refused.value.output
    assert lacking.name in str(refused.value)
    # Nothing changed: no node switched, no half-done upgrade, the same configuration, and
    # the cluster answers as before.
    assert {v.split()[0] for v in cluster.versions().values()} == {OLD}
    assert upgrade.pending(cluster) is None
    assert cluster.master.succeed(config) == config_before
    health.ensure_healthy(cluster)


@pytest.mark.nightly(reason=CI_ROOM)
def test_a_killed_upgrade_is_found_and_resumed(lab_reset: object, cluster: Cluster,
                                               timings: Timings, lab_profile: SizeProfile,
                                               instances: InstanceFactory) -> None:
    load, before = _load(cluster, instances, timings, lab_profile)
    with timings.phase(f"install the {NEW} packages on every node") as phase:
        upgrade.install_series(cluster, NEW, timings=timings, parent=phase)
    with timings.phase(f"gnt-cluster upgrade --to={NEW}, killed while switching versions",
                       timeline=True):
        printed = upgrade.start_and_kill(cluster, NEW)
    assert "Switching to version" in printed
    left = upgrade.pending(cluster)
    assert left is not None and left.to_series == NEW and not left.running, left
    # The lab's health check names it: the daemons are stopped, the intent file is there.
    found = health.check(cluster)
    assert any("gnt-cluster upgrade --resume" in p for p in found.problems), found.problems
    with timings.phase("gnt-cluster upgrade --resume"):
        upgrade.upgrade(cluster, NEW, resume=True)
    _prove(cluster, NEW, load, before, timings)
