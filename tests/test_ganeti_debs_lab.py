"""--ganeti-debs for real: a tiny lab of its own boots the hypervisor image layered with a
contributor's Ganeti packages (Debian's 3.0 rebuilt as +lab1, tests/conftest.py), forms its
cluster on them, and is never reused by a run that asks for Debian's Ganeti. It boots the
image tests/test_image_build.py layered when that test ran first (CI's order)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import topology
from lab.bringup import bring_up
from lab.ganeti.bootstrap import form_layout
from lab.images import ImageStore, current_images
from lab.images.local_debs import LocalDebs, LocalDebsError, check_lab_reuse
from lab.lab import Lab, destroy
from lab.timings import Timings

NAME = "ganeti-debs"
MARKER = "/usr/share/doc/ganeti-3.0/LAB-LOCAL-BUILD"


@pytest.mark.nightly(reason="boots and bootstraps a tiny lab of its own (about 6 minutes "
                            "alone; CI has no room left)")
def test_a_lab_forms_its_cluster_on_the_contributors_packages(
        lab_host: ImageStore, rebuilt_ganeti_debs: Path, timings: Timings) -> None:
    debs = LocalDebs.load(rebuilt_ganeti_debs)
    with timings.phase("layered hypervisor image (built if missing)"):
        store = current_images(lab_host, local_debs=debs)
    destroy(NAME, force=True)
    lab = Lab.prepare(topology.load("tiny"), NAME, store, local_debs=debs)
    try:
        with timings.phase("tiny lab up on the layered image"):
            bring_up(lab)
        node = lab.machine("node1")
        installed = dict(line.split(" ", 1) for line in node.succeed(
            "dpkg-query -W -f '${Package} ${Version}\\n' ganeti ganeti-3.0").splitlines())
        assert installed == {d.package: d.version for d in debs.debs}, installed
        assert "+lab1" in node.succeed(f"cat {MARKER}")

        with timings.phase("form the cluster on the local packages"):
            cluster = form_layout(lab, "single")["solo"]
        # The formation ran and passed its own gnt-cluster verify.
        assert "Software version: 3.0.2" in cluster.gnt("gnt-cluster version")
        assert cluster.gnt("gnt-node list --no-headers -o name").split() == [
            lab.plan.machine("node1").fqdn]

        with pytest.raises(LocalDebsError, match=rf"lab {NAME} was built with local Ganeti "
                                                 r"packages .*asks for Debian's Ganeti"):
            check_lab_reuse(lab.name, lab.dir, None)
    finally:
        lab.destroy()
