"""Fixtures the scenarios share. The lab's own fixtures (lab, cluster, clusters, lab_reset,
timings, lab_profile) come from the ganeti-lab pytest plugin (lab/pytest_plugin.py); what a
scenario builds on them lives here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab.ganeti.cluster import Cluster
from lab.ganeti.instances import InstanceFactory


@pytest.fixture
def instances(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[InstanceFactory]:
    """Instances with the lab's defaults (`instances.create("plain")`, or `.submit(jobs, ...)`
    into a JobSet); what the test made is gone before the next test (a snapshot restore)."""
    factory = InstanceFactory(cluster)
    yield factory
    factory.clean_up(by=request.node.nodeid)
