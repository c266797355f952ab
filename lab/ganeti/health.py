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

from lab.errors import GanetiFailure
from lab.ganeti import upgrade
from lab.ganeti.cluster import Cluster
from lab.ganeti.nodes import SHARED_MOUNT
from lab.ganeti.rapi import RapiError
from lab.remote import Machine
from lab.waiting import WaitTimeout, wait_for

MAX_SKEW = 5.0  # seconds; SSH under emulation adds up to about a second
NODED_PORT = 1811
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
    """One look at the cluster; every problem found, not only the first."""
    started = time.monotonic()
    # The three looks at once: each waits on a different daemon or machine (RAPI and luxid,
    # the master's shell, every node's shell), seconds apiece under emulation.
    with ThreadPoolExecutor(max_workers=2) as pool:
        master_view = pool.submit(_master_view, cluster)
        reachable = pool.submit(_nodes_reachable, cluster)
        node_views = cluster.lab.on_all(lambda m: _node_view(cluster, m), cluster.nodes)
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
        nodes = {n["name"]: n for n in cluster.rapi.nodes(bulk=True)}
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


def _nodes_reachable(cluster: Cluster) -> list[str]:
    master = cluster.master_name
    others = [n for n in cluster.plan.nodes if n != master]
    if not others:
        return []
    probe = "; ".join(
        f"timeout 5 bash -c '</dev/tcp/'{shlex.quote(n)}'/{NODED_PORT}' 2>/dev/null "
        f"|| echo {shlex.quote(n)}" for n in others)
    result = cluster.master.run(probe, timeout=60)
    if result.exit_status is None:
        return [f"{master}: reaching the other nodes' daemons timed out"]
    return [f"{node}: node daemon unreachable from the master {master}"
            for node in result.stdout.split()]


def _node_view(cluster: Cluster, m: Machine) -> list[str]:
    shared = "sharedfile" in cluster.plan.disk_templates
    mount = f"; mountpoint -q {SHARED_MOUNT} && echo mounted || echo unmounted" if shared else ""
    is_master = m.name == cluster.master.name
    intent = (f"; if test -e {upgrade.INTENT}; then echo half-done; fi" if is_master
              else "")
    before = time.time()
    out = m.succeed(f"date +%s.%N{mount}{intent}", timeout=30).split()
    after = time.time()
    problems = []
    if out[-1:] == ["half-done"]:
        out.pop()
        half_done = upgrade.pending(cluster)
        problems.append(f"an {half_done or 'upgrade'} is half-done ({upgrade.INTENT}); "
                        "`gnt-cluster upgrade --resume` on the master completes it")
    skew = float(out[0]) - (before + after) / 2
    if abs(skew) > MAX_SKEW + (after - before) / 2:
        problems.append(f"clock {skew:+.1f} s off the host's")
    if shared and out[1:] != ["mounted"]:
        problems.append(f"{SHARED_MOUNT} is not mounted")
    return problems
