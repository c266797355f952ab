"""Roll & deploy: each hypervisor of a running cluster in turn gets a fresh copy of its image,
the way an operator rolls a rack: its instances moved away, the node drained and set offline,
its root disk replaced and booted, the node re-added, its instances moved back. The master
role moves away before its node's turn and back after it.

How an instance moves depends on its disk template: live migration when it runs on storage
every node reaches (sharedfile and the mirrored or external templates), failover when such an
instance is stopped, and `gnt-instance move` (a copy of its disks; Ganeti stops and restarts a
running instance around it) for node-local storage (plain, file).
"""

from __future__ import annotations

import logging
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lab import reimage
from lab.errors import LabError
from lab.ganeti.bootstrap import readd_node
from lab.ganeti.cluster import Cluster
from lab.ganeti.rapi import RapiError

if TYPE_CHECKING:
    from lab.timings import Timings

log = logging.getLogger("lab.ganeti.roll")

MOVE_SECONDS = 1800
# Templates whose disks every node reaches (or mirrors): the instance itself moves, not its data.
SHARED_TEMPLATES = frozenset({"sharedfile", "drbd", "rbd", "blockdev", "ext", "gluster"})


@dataclass(frozen=True)
class Move:
    instance: str
    how: str          # "live migration", "failover" or "move"
    source: str
    target: str
    seconds: float


def how_to_move(template: str, running: bool) -> str:
    if template in SHARED_TEMPLATES:
        return "live migration" if running else "failover"
    return "move"


def move(cluster: Cluster, instance: str, how: str, target: str) -> None:
    """Move ``instance`` to node ``target`` the way ``how`` says (``how_to_move``)."""
    rapi = cluster.rapi
    if how == "live migration":
        rapi.migrate_instance(instance, mode="live", target_node=target).wait(
            timeout=MOVE_SECONDS)
    elif how == "failover":
        rapi.failover_instance(instance, target_node=target).wait(timeout=MOVE_SECONDS)
    elif how == "move":
        # RAPI has no instance move; the command line submits the same opcode.
        cluster.gnt(f"gnt-instance move -f --node={shlex.quote(target)} "
                    f"{shlex.quote(instance)}", timeout=MOVE_SECONDS)
    else:
        raise ValueError(f"no way to move an instance called {how!r}")
    found = rapi.instance(instance)["pnode"]
    if found != target:
        raise LabError(f"{cluster.name}: {how} of {instance} to {target} left it on {found}",
                       "read the job's log (`gnt-job list`, `gnt-job info`) on the master")


def evacuate(cluster: Cluster, node: str, targets: list[str]) -> list[Move]:
    """Move every instance whose primary is ``node`` to ``targets`` (in turn); the moves."""
    if not targets:
        raise LabError(f"{cluster.name}: no node to move {node}'s instances to",
                       "roll a cluster of two nodes or more")
    moves = []
    placed = [i for i in cluster.rapi.instances(bulk=True) if i["pnode"] == node]
    for k, info in enumerate(sorted(placed, key=lambda i: i["name"])):
        how = how_to_move(info["disk_template"], info["status"] == "running")
        target = targets[k % len(targets)]
        started = time.monotonic()
        log.info("%s: %s of %s from %s to %s", cluster.name, how, info["name"], node, target)
        move(cluster, info["name"], how, target)
        moves.append(Move(info["name"], how, node, target, time.monotonic() - started))
    return moves


def take_out(cluster: Cluster, node: str) -> None:
    """Drain the node (no new instances), then set it offline (Ganeti stops talking to it)."""
    q = shlex.quote(node)
    cluster.gnt(f"gnt-node modify -f --drained=yes {q}")
    cluster.gnt(f"gnt-node modify -f --offline=yes {q}")


def bring_back(cluster: Cluster, moves: list[Move]) -> None:
    """Move each instance of ``moves`` back to where it came from, the same way."""
    for m in moves:
        move(cluster, m.instance, m.how, m.source)


@dataclass
class Downtime:
    """Each instance's time not running, as the scenario sees it: RAPI polled every
    ``interval`` seconds; an instance that should run (admin state up) and is not seen running
    in a poll counts as down since the poll before. Polls RAPI did not answer (the master role
    moving) are counted apart, as time nothing could be seen."""
    cluster: Cluster
    # Each poll makes the master ask every node for its instances' state: under emulation,
    # seconds of its CPU. Often enough to see a move's downtime, rarely enough to leave the
    # master to the roll's own jobs.
    interval: float = 10.0
    down: dict[str, float] = field(default_factory=dict)
    unseen: float = 0.0
    polls: int = 0
    clock: Callable[[], float] = time.monotonic
    _stop: threading.Event = field(default_factory=threading.Event)

    def _poll(self) -> None:
        last = self.clock()
        while not self._stop.wait(self.interval):
            now = self.clock()
            try:
                rows = self.cluster.rapi.instances(bulk=True)
            except RapiError:
                self.unseen += now - last
            except Exception as exc:  # the client is replaced when the master role moves
                log.debug("downtime poll: %s", exc)
                self.unseen += now - last
            else:
                self.polls += 1
                for row in rows:
                    if row.get("admin_state") == "up":
                        was = self.down.setdefault(row["name"], 0.0)
                        if not row.get("oper_state"):
                            self.down[row["name"]] = was + (now - last)
            last = now

    @contextmanager
    def watching(self) -> Iterator[Downtime]:
        thread = threading.Thread(target=self._poll, name="lab-downtime", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


def roll_node(cluster: Cluster, node: str, timings: Timings) -> list[Move]:
    """One node's turn: instances away, drained and offline, re-imaged, re-added, instances
    back; the master role away first and back last when ``node`` holds it."""
    short = node.split(".")[0]
    others = [n for n in cluster.plan.nodes if n != node]
    was_master = cluster.master_name == node
    if was_master:
        with timings.phase(f"{short}: master-failover to {others[0]}"):
            cluster.master_failover(others[0])
    with timings.phase(f"{short}: move instances away") as phase:
        moves = evacuate(cluster, node, others)
        phase.metric("instances", len(moves))
    with timings.phase(f"{short}: drain and set offline"):
        take_out(cluster, node)
    with timings.phase(f"{short}: re-image"):
        reimage.reimage(cluster.lab, short)
    with timings.phase(f"{short}: gnt-node add --readd"):
        readd_node(cluster, node)
    with timings.phase(f"{short}: move instances back") as phase:
        bring_back(cluster, moves)
        phase.metric("instances", len(moves))
    if was_master:
        with timings.phase(f"{short}: master-failover back"):
            cluster.master_failover(node)
    return moves
