"""A cluster's health after a snapshot restore, in seconds rather than a full verify's minute:
what a restore can get wrong, and nothing more.

- no upgrade is half-done (`gnt-cluster upgrade` killed part-way leaves its intent file);
- the master's daemons answer: RAPI, and a node query through it (luxid);
- every node of the plan is in the cluster and online;
- every node's daemon is reachable from the master (its port, over the cluster network);
- no job is queued, waiting or running;
- every node's clock is within ``MAX_SKEW`` of the host's (a reverted guest wakes at the
  snapshot's time until the lab resets it);
- the shared file storage is mounted on every node (when the cluster enables `sharedfile`).

`gnt-cluster verify` (``Cluster.verify``) stays the full check and is timed apart.
"""

from __future__ import annotations

import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from lab import agent
from lab.agent import AgentUnavailable, GuestAgent
from lab.errors import GanetiFailure
from lab.ganeti import upgrade
from lab.ganeti.cluster import Cluster
from lab.ganeti.nodes import SHARED_MOUNT
from lab.ganeti.rapi import RapiError
from lab.remote import Machine
from lab.waiting import WaitTimeout, wait_for

MAX_SKEW = 5.0  # seconds
NODED_PORT = 1811
PROBE_TIMEOUT = 20  # seconds for every node daemon probe from the master
UNFINISHED_JOBS = ("queued", "waiting", "running", "canceling")


class UnhealthyCluster(GanetiFailure):
    """A cluster failed its health check."""


@dataclass
class Health:
    cluster: str
    problems: list[str]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.problems


def check(cluster: Cluster) -> Health:
    """One look at the cluster; every problem found, not only the first. The nodes are looked
    at through their guest agents (no SSH handshake, seconds each right after a restore under
    emulation: lab/agent.py), over SSH where a machine has none."""
    started = time.monotonic()
    # The looks at once: each waits on a different daemon or machine (RAPI and luxid, the
    # master, every node), seconds apiece under emulation.
    with agent.agents(cluster.lab.plan, [m.name for m in cluster.nodes]) as agents, \
            ThreadPoolExecutor(max_workers=2) as pool:
        master_view = pool.submit(_master_view, cluster)
        reachable = pool.submit(_nodes_reachable, cluster, agents[cluster.master.name])
        node_views = cluster.lab.on_all(
            lambda m: _node_view(cluster, _facts(cluster, m, agents[m.name])), cluster.nodes)
    problems = master_view.result() + reachable.result()
    for node, found in node_views.items():
        problems += [f"{node}: {p}" for p in found]
    return Health(cluster.name, problems, round(time.monotonic() - started, 2))


def ensure_healthy(cluster: Cluster, timeout: float = 60.0) -> Health:
    """Check until healthy (a restored cluster may finish a job it was in); raise naming every
    problem of the last look when ``timeout`` passes."""
    last: list[Health] = []

    def probe() -> Health | None:
        health = check(cluster)
        last[:] = [health]
        return health if health.ok else None

    try:
        return wait_for(f"cluster {cluster.name} to be healthy", probe, timeout=timeout,
                        interval=2.0,
                        describe=lambda: "; ".join(last[0].problems) if last else "nothing")
    except WaitTimeout:
        problems = last[0].problems if last else ["no check finished"]
        raise UnhealthyCluster(
            f"cluster {cluster.name} is not healthy after {timeout:.0f} s:\n  "
            + "\n  ".join(problems),
            "restore the layout snapshot again, or run `gnt-cluster verify` on the master for "
            "the full picture") from None


def _master_view(cluster: Cluster) -> list[str]:
    try:
        cluster.rapi.version()
        nodes = {n["name"]: n for n in cluster.rapi.query("node", ["name", "offline"])}
        jobs = cluster.rapi.jobs(bulk=True)
    except RapiError as exc:
        return [f"RAPI at {cluster.plan.ip}: {exc.message}"]
    problems = [f"{name}: not in the cluster" for name in cluster.plan.nodes
                if name not in nodes]
    problems += [f"{name}: offline" for name, node in nodes.items() if node.get("offline")]
    unfinished = [f"{job.get('id')} ({job.get('status')})" for job in jobs
                  if isinstance(job, dict) and job.get("status") in UNFINISHED_JOBS]
    if unfinished:
        problems.append(f"jobs not finished: {', '.join(unfinished)}")
    return problems


def _nodes_reachable(cluster: Cluster, guest: GuestAgent | None) -> list[str]:
    master = cluster.master_name
    others = [n for n in cluster.plan.nodes if n != master]
    if not others:
        return []
    # One shell for every probe (each program started costs under emulation), the whole
    # bounded: a node that is down fails its connect within seconds (no ARP answer).
    each = (f"for n in {' '.join(shlex.quote(n) for n in others)}; do "
            f"(exec 3<>/dev/tcp/$n/{NODED_PORT}) 2>/dev/null || echo $n; done")
    probe = ["/usr/bin/timeout", str(PROBE_TIMEOUT), "bash", "-c", each]
    if guest is not None:
        try:
            result = guest.run(probe, timeout=PROBE_TIMEOUT + 30)
        except AgentUnavailable as exc:
            return [f"{master}: {exc}"]
    else:
        result = cluster.master.run(shlex.join(probe), timeout=PROBE_TIMEOUT + 30)
    if not result.ok:  # 124: timeout stopped the probes (None: the SSH command timed out)
        return [f"{master}: reaching the other nodes' daemons took over {PROBE_TIMEOUT} s"]
    return [f"{node}: node daemon unreachable from the master {master}"
            for node in result.stdout.split()]


@dataclass(frozen=True)
class _NodeFacts:
    skew: float           # the node's clock minus the host's, seconds
    uncertainty: float    # how much of the skew the look itself may account for
    mounted: bool | None  # the shared file storage (None: the cluster has none)
    intent: bool          # an upgrade's intent file (the master only)


def _facts(cluster: Cluster, m: Machine, guest: GuestAgent | None) -> _NodeFacts:
    shared = "sharedfile" in cluster.plan.disk_templates
    is_master = m.name == cluster.master.name
    if guest is not None:
        # The agent's clock read takes milliseconds: no uncertainty worth adding.
        skew = guest.clock_skew()
        mounted = None
        if shared:
            mounts = (guest.read("/proc/self/mounts") or b"").decode().splitlines()
            mounted = SHARED_MOUNT in [fields[1] for line in mounts
                                       if len(fields := line.split()) > 1]
        return _NodeFacts(skew, 0.0, mounted,
                          is_master and guest.read(upgrade.INTENT) is not None)
    mount = f"; mountpoint -q {SHARED_MOUNT} && echo mounted || echo unmounted" if shared else ""
    intent = (f"; if test -e {upgrade.INTENT}; then echo half-done; fi" if is_master
              else "")
    before = time.time()
    out = m.succeed(f"date +%s.%N{mount}{intent}", timeout=30).split()
    after = time.time()
    half_done = out[-1:] == ["half-done"]
    if half_done:
        out.pop()
    return _NodeFacts(float(out[0]) - (before + after) / 2, (after - before) / 2,
                      out[1:] == ["mounted"] if shared else None, half_done)


def _node_view(cluster: Cluster, facts: _NodeFacts) -> list[str]:
    problems = []
    if facts.intent:
        half_done = upgrade.pending(cluster)
        problems.append(f"an {half_done or 'upgrade'} is half-done ({upgrade.INTENT}); "
                        "`gnt-cluster upgrade --resume` on the master completes it")
    if abs(facts.skew) > MAX_SKEW + facts.uncertainty:
        problems.append(f"clock {facts.skew:+.1f} s off the host's")
    if facts.mounted is False:
        problems.append(f"{SHARED_MOUNT} is not mounted")
    return problems
