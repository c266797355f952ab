"""Creating many instances through RAPI the ways operators submit them, and where `hail` puts
them under labels (tags, drained, offline, vm_capable=no).

``create(factory, mode, count)`` submits ``count`` creations in one of ``MODES`` and waits for
all of them (a failure is recorded with Ganeti's reason and never stops the others);
``placement`` reads where they landed; ``apply_labels`` puts one labelling case on a cluster and
``remove_labels`` takes it off again (a restore of the layout's snapshot does too).
"""

from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from lab.errors import LabError
from lab.ganeti.cluster import Cluster
from lab.ganeti.instances import InstanceFactory
from lab.ganeti.jobs import JobSet

log = logging.getLogger("lab.ganeti.bulk")

HAIL = "hail"
JOB_TIMEOUT = 3600.0
# hail counts vCPUs against the nodes' CPUs (ipolicy vcpu-ratio, 4 upstream); the lab's
# nodes have one or two, so a few one-vCPU instances would already fail with FailCPU.
VCPU_RATIO = 32

# How the creations are submitted, and how their nodes are chosen.
ONE_BY_ONE = "one by one"                      # submit, wait, next; nodes in turn
AT_ONCE = "all at once"                        # every job submitted before any ends; nodes in turn
OPPORTUNISTIC = "all at once, opportunistic"   # hail, opportunistic_locking (needs an allocator)
MULTI_ALLOC = "multi-alloc"                    # one /2/instances-multi-alloc request, hail
BY_HAIL = "all at once, placed by hail"        # hail chooses each node
ONE_NODE = "all on one node"                   # every instance on one node and one volume group
MODES = (ONE_BY_ONE, AT_ONCE, OPPORTUNISTIC, MULTI_ALLOC, BY_HAIL, ONE_NODE)


@dataclass
class Created:
    mode: str
    names: list[str]
    jobs: JobSet

    @property
    def succeeded(self) -> list[str]:
        ok = {o.label for o in self.jobs.outcomes if o.ok}
        return [n for n in self.names if n in ok]


def create(factory: InstanceFactory, mode: str, count: int, *, template: str = "plain",
           nodes: list[str] | None = None, iallocator: str | None = None,
           **options: object) -> Created:
    """Create ``count`` instances in ``mode`` and wait for every job. Where the mode does not
    place them by hail, ``iallocator`` does, or else nodes in turn from ``nodes`` (default:
    every node of the cluster)."""
    if mode not in MODES:
        raise LabError(f"no creation mode {mode!r}", f"choose one of: {', '.join(MODES)}")
    cluster = factory.cluster
    nodes = nodes or cluster.plan.nodes
    jobs = JobSet(cluster.rapi, timeout=JOB_TIMEOUT)
    names: list[str] = []

    def placed(i: int) -> dict[str, object]:
        allocator = HAIL if mode in (OPPORTUNISTIC, BY_HAIL) else iallocator
        if allocator:
            extra: dict[str, object] = {"iallocator": allocator}
            if mode == OPPORTUNISTIC:
                extra["opportunistic_locking"] = True
            return extra
        return {"pnode": nodes[0] if mode == ONE_NODE else nodes[i % len(nodes)]}

    if mode == MULTI_ALLOC:
        names = factory.submit_multi_alloc(
            jobs, [{"template": template, **options} for _ in range(count)], iallocator=HAIL)
    elif mode == ONE_BY_ONE:
        for i in range(count):
            names.append(factory.submit(jobs, template, **placed(i), **options))
            jobs.wait()
    else:
        # Names first (each lookup is a RAPI call), then every submission from its own thread
        # so no job waits for another's submission round trip.
        planned = [factory.reserve_name() for _ in range(count)]
        with ThreadPoolExecutor(max_workers=min(16, count)) as pool:
            list(pool.map(lambda i: factory.submit(jobs, template, name=planned[i],
                                                   **placed(i), **options), range(count)))
        names = planned
    jobs.wait()
    for failed in jobs.failures():
        log.warning("%s: %s (%s) failed: %s", cluster.name, failed.label, mode, failed.reason)
    return Created(mode, names, jobs)


def make_room(cluster: Cluster) -> None:
    """Let the cluster hold many one-vCPU instances per node (the instance policy's
    vcpu-ratio raised to ``VCPU_RATIO``, logged with the command)."""
    cluster.gnt(f"gnt-cluster modify --ipolicy-vcpu-ratio={VCPU_RATIO}")


def placement(cluster: Cluster, names: list[str]) -> dict[str, int]:
    """How many of ``names`` each node of the cluster holds as primary (every node listed)."""
    wanted = set(names)
    found = Counter(i["pnode"] for i in cluster.rapi.instances() if i["name"] in wanted)
    return {node: found.get(node, 0) for node in cluster.plan.nodes}


# Labels ----------------------------------------------------------------------------------------

NO_LABELS = "no labels"
LOCATION = "location tags (htools:nlocation)"       # affects hail's score only
EXCLUSION = "exclusion tags (htools:iextags)"       # one instance per tag value and node
DRAINED = "a drained node"
OFFLINE = "an offline node"
NOT_VM_CAPABLE = "a node with vm_capable=no"
LABEL_CASES = (NO_LABELS, LOCATION, EXCLUSION, DRAINED, OFFLINE, NOT_VM_CAPABLE)
# The tag prefixes the cases use; instance tags of the exclusion case: "service:<x>".
LOCATION_PREFIX, EXCLUSION_PREFIX = "rack", "service"


@dataclass
class Labelling:
    case: str
    node: str | None = None             # the node the case sets apart, if any
    instance_tags: tuple[str, ...] = ()  # tags each new instance gets
    role_before: str = "regular"        # the set-apart node's role before the case
    tags: list[tuple[str, str | None, list[str]]] = field(default_factory=list)  # put on


def apply_labels(cluster: Cluster, case: str, node: str | None = None) -> Labelling:
    """Apply one labelling case to ``cluster``; ``remove_labels`` (or a restore of the
    layout's snapshot) takes it off. ``node`` (default: the last node) is the one a node-level
    case sets apart; the location case gives the first half of the nodes the tag ``rack:a``,
    the rest ``rack:b``."""
    if case not in LABEL_CASES:
        raise LabError(f"no labelling case {case!r}", f"choose one of: {', '.join(LABEL_CASES)}")
    rapi, nodes = cluster.rapi, cluster.plan.nodes
    node = node or nodes[-1]
    labelling = Labelling(case, role_before=rapi.node_role(node))
    if case == LOCATION:
        tag = f"htools:nlocation:{LOCATION_PREFIX}"
        rapi.add_tags("cluster", None, [tag]).wait()
        labelling.tags.append(("cluster", None, [tag]))
        half = len(nodes) // 2
        for i, n in enumerate(nodes):
            node_tag = f"{LOCATION_PREFIX}:{'a' if i < half else 'b'}"
            rapi.add_tags("node", n, [node_tag]).wait()
            labelling.tags.append(("node", n, [node_tag]))
    elif case == EXCLUSION:
        tag = f"htools:iextags:{EXCLUSION_PREFIX}"
        rapi.add_tags("cluster", None, [tag]).wait()
        labelling.tags.append(("cluster", None, [tag]))
        labelling.instance_tags = (f"{EXCLUSION_PREFIX}:web",)
    elif case in (DRAINED, OFFLINE):
        labelling.node = node
        role = "drained" if case == DRAINED else "offline"
        rapi.set_node_role(node, role, force=True).wait(timeout=900)
    elif case == NOT_VM_CAPABLE:
        labelling.node = node
        cluster.gnt(f"gnt-node modify --vm-capable=no {node}")
    log.info("%s: labelled: %s%s", cluster.name, case, f" ({node})" if labelling.node else "")
    return labelling


def remove_labels(cluster: Cluster, labelling: Labelling) -> None:
    """Take off what ``apply_labels`` put on."""
    rapi = cluster.rapi
    for kind, name, tags in reversed(labelling.tags):
        rapi.delete_tags(kind, name, tags).wait()
    node = labelling.node
    if node is not None and labelling.case in (DRAINED, OFFLINE):
        rapi.set_node_role(node, labelling.role_before, force=True).wait(timeout=900)
    elif node is not None and labelling.case == NOT_VM_CAPABLE:
        cluster.gnt(f"gnt-node modify --vm-capable=yes {node}")


__all__ = ["LABEL_CASES", "MODES", "Created", "Labelling", "apply_labels", "create",
           "make_room", "placement", "remove_labels"]
