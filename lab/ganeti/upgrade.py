"""Changing a cluster's Ganeti version the way Debian and Ganeti document it: the packages of
the new version on every node first, then `gnt-cluster upgrade --to=SERIES` on the master,
which drains the queue, stops the daemons everywhere, backs up /var/lib/ganeti, relinks
/etc/ganeti/{lib,share} on every node, converts the configuration and starts the daemons
again. Going back is the same command with the older series (one minor version at most), and
the top-level `ganeti` package back to the older version.

Packages come from the service box's repository only (``/etc/apt/sources.list.d/
lab-repo.list``, written when nodes are prepared): apt is given that one source and lists of
its own, so stale lists in the image can never send it to the internet.
"""

from __future__ import annotations

import logging
import re
import shlex
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lab.errors import GanetiFailure, LabError
from lab.ganeti import gnt, versions
from lab.ganeti.cluster import Cluster
from lab.remote import Machine

if TYPE_CHECKING:
    from lab.timings import Phase, Timings

log = logging.getLogger("lab.ganeti.upgrade")

UPGRADE_SECONDS = 1800.0
INSTALL_SECONDS = 900.0
INTENT = "/var/lib/ganeti/intent-to-upgrade"
PACKAGES = ("ganeti-{series}", "ganeti-haskell-{series}", "ganeti-htools-{series}")
_LAB_REPO_ONLY = ("-o Dir::Etc::sourcelist=sources.list.d/lab-repo.list "
                  "-o Dir::Etc::sourceparts=- -o Dir::State::lists=/var/lib/apt/lab-repo-lists")
_APT = ("DEBIAN_FRONTEND=noninteractive apt-get -q -y " + _LAB_REPO_ONLY
        + " -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold")
_APT_CACHE = "apt-cache " + _LAB_REPO_ONLY
_NOT_INSTALLED = re.compile(r"Ganeti version (\S+) not installed on nodes (.+)")
# What 3.1's configuration upgrade changes for good (NEWS, LAB-NOTES "Offline upgrade",
# lib/tools/cfgupgrade.py): the kvm hypervisor's disk_discard "default" becomes "ignore" (3.1
# has no "default"), and the xen hypervisors' xen_cmd is dropped (3.1 knows only xl). The
# downgrade keeps disk_discard and puts xen_cmd back as "xl", where 3.0 started with "xm".
CHANGED_BY_31 = frozenset({"disk_discard", "xen_cmd"})
XEN_CMD_AFTER_DOWNGRADE = "xl"
XEN_HYPERVISORS = frozenset({"xen-pvm", "xen-hvm"})


class UpgradeRefused(GanetiFailure):
    """`gnt-cluster upgrade` refused to start: the cluster was left as it was."""

    def __init__(self, cluster: str, series: str, nodes: list[str], output: str) -> None:
        super().__init__(
            f"cluster {cluster}: Ganeti refused to upgrade to {series}: it is not installed "
            f"on {', '.join(nodes)}",
            f"install the {series} packages on {', '.join(nodes)} "
            f"(lab.ganeti.upgrade.install_series), then upgrade again")
        self.series, self.nodes, self.output = series, nodes, output


@dataclass(frozen=True)
class Intent:
    """A half-done upgrade, as /var/lib/ganeti/intent-to-upgrade records it on the master."""
    from_version: str
    to_series: str
    pid: int
    running: bool

    def __str__(self) -> str:
        state = "still running" if self.running else "its process is gone"
        return (f"upgrade from {self.from_version} to {self.to_series} (pid {self.pid}, "
                f"{state})")


def repo_version(m: Machine, package: str, series: str) -> str:
    """The version of ``package`` for Ganeti ``series`` that the lab's repository serves."""
    m.succeed("mkdir -p /var/lib/apt/lab-repo-lists/partial && " + _APT + " update",
              timeout=300)
    out = m.succeed(f"{_APT_CACHE} madison {shlex.quote(package)}")
    offered = [row.split("|")[1].strip() for row in out.splitlines() if row.count("|") >= 2]
    matching = [v for v in offered if v.startswith(f"{series}.")]
    if not matching:
        raise LabError(f"{m.name}: the lab's package repository serves no {package} for "
                       f"Ganeti {series} (it has {', '.join(offered) or 'none'})",
                       "add it to lab/images/recipes/repo.packages and rebuild the service "
                       "image (`ganeti-lab images build`)")
    return matching[0]


def install_series(cluster: Cluster, series: str, nodes: list[Machine] | None = None, *,
                   timings: Timings | None = None, parent: Phase | None = None
                   ) -> dict[str, float]:
    """Install Ganeti ``series`` from the lab's repository on ``nodes`` (all of the cluster's)
    at once: its versioned packages and the top-level `ganeti` package of that version (a
    downgrade when going back). Returns each node's seconds, recorded as a phase per node
    under ``parent`` when ``timings`` is given."""
    targets = nodes if nodes is not None else cluster.nodes

    def install(m: Machine) -> float:
        started = time.monotonic()
        version = repo_version(m, "ganeti", series)
        wanted = [f"ganeti={version}"] + [p.format(series=series) + f"={version}"
                                          for p in PACKAGES]
        m.succeed(f"{_APT} install --allow-downgrades --no-install-recommends "
                  + " ".join(shlex.quote(w) for w in wanted), timeout=INSTALL_SECONDS)
        found = m.succeed("dpkg-query -W -f '${Version}' ganeti").strip()
        if found != version:
            raise LabError(f"{m.name}: ganeti {found} installed, {version} asked for",
                           "read the apt output above")
        seconds = time.monotonic() - started
        if timings is not None:
            timings.record(f"install Ganeti {series} packages on {m.name}", seconds,
                           parent=parent, version=version)
        return seconds

    return cluster.lab.on_all(install, targets)


def remove_series(m: Machine, series: str) -> None:
    """Take Ganeti ``series``'s packages off a node, as a node that never had them."""
    if versions.active(m) == series:
        raise LabError(f"{m.name} runs Ganeti {series}; its packages cannot be removed",
                       "remove a series the node does not run")
    m.succeed("DEBIAN_FRONTEND=noninteractive dpkg --purge "
              + " ".join(p.format(series=series) for p in reversed(PACKAGES)), timeout=600)


def upgrade(cluster: Cluster, series: str, *, resume: bool = False) -> str:
    """`gnt-cluster upgrade --to=SERIES` (or ``--resume``) on the master; its output. Ganeti's
    refusal because a node lacks the series is ``UpgradeRefused`` naming those nodes."""
    command = "gnt-cluster upgrade --resume" if resume else f"gnt-cluster upgrade --to={series}"
    try:
        out = cluster.gnt(command, timeout=UPGRADE_SECONDS)
    except gnt.GntFailed as exc:
        refused = _NOT_INSTALLED.search(exc.output_tail or "")
        if refused:
            raise UpgradeRefused(cluster.name, refused.group(1),
                                 [n.strip() for n in refused.group(2).split(",")],
                                 exc.output_tail or "") from exc
        raise
    cluster.forget_rapi()  # RAPI was restarted
    left = pending(cluster)
    if left is not None:
        raise LabError(f"cluster {cluster.name}: `{command}` exited 0 but left an {left}",
                       "run `gnt-cluster upgrade --resume` on the master")
    return out


def pending(cluster: Cluster) -> Intent | None:
    """The half-done upgrade the master records, if any."""
    m = cluster.master
    result = m.run(f"cat {INTENT}", announce=False)
    if not result.ok:
        return None
    # utils.EscapeAndJoin: old version, new version, pid, joined by commas.
    fields = result.stdout.strip().split(",")
    if len(fields) != 3 or not fields[2].isdigit():
        raise LabError(f"{m.name}: {INTENT} is malformed ({result.stdout.strip()!r})",
                       "inspect it; `gnt-cluster upgrade --resume` ignores such a file")
    running = m.run(f"kill -0 {fields[2]}", announce=False).ok
    return Intent(fields[0], fields[1], int(fields[2]), running)


def start_and_kill(cluster: Cluster, series: str, at: str = "Switching to version",
                   timeout: float = UPGRADE_SECONDS) -> str:
    """Start `gnt-cluster upgrade --to=SERIES` on the master and kill it (SIGKILL) as soon as
    it prints ``at`` (one of its steps); returns what it printed. The kill is done on the
    master itself, so it lands right at that step, not a round trip later."""
    log_file = "/root/lab-upgrade.log"
    script = (f"rm -f {log_file}; gnt-cluster upgrade --to={shlex.quote(series)} "
              f">{log_file} 2>&1 & pid=$!; "
              f"until grep -qF {shlex.quote(at)} {log_file}; do "
              f"kill -0 $pid 2>/dev/null || {{ echo ENDED; exit 3; }}; sleep 0.2; done; "
              f"kill -9 $pid; echo KILLED")
    result = cluster.master.run(script, timeout=timeout)
    printed = cluster.master.run(f"cat {log_file}", announce=False).stdout
    if "KILLED" not in result.stdout:
        raise LabError(f"cluster {cluster.name}: the upgrade ended before printing {at!r}",
                       f"its output:\n{printed}")
    return printed


def cluster_hvparams(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return dict(cluster.rapi.info()["hvparams"])


def downgrade_problems(on_31: dict[str, dict[str, Any]], back: dict[str, dict[str, Any]]
                       ) -> list[str]:
    """How the hypervisor parameters after `gnt-cluster upgrade --to=3.0` differ from what
    cfgupgrade's downgrade makes of 3.1's: every value kept, and xen_cmd back as "xl" for each
    xen hypervisor 3.1 had parameters for. One line per difference."""
    problems = []
    for hv in sorted(set(on_31) | set(back)):
        old, new = on_31.get(hv, {}), back.get(hv, {})
        re_added = {"xen_cmd"} if hv in XEN_HYPERVISORS and hv in on_31 else set()
        for key in sorted(set(old) | set(new) | re_added):
            wanted = XEN_CMD_AFTER_DOWNGRADE if key in re_added else old.get(key)
            if new.get(key) != wanted:
                problems.append(f"{hv} {key}: {new.get(key)!r} after the downgrade, "
                                f"{wanted!r} expected")
    return problems


def changed_params(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]
                   ) -> set[str]:
    """The names of the hypervisor parameters whose values differ between two readings."""
    names = set()
    for hv in set(before) | set(after):
        old, new = before.get(hv, {}), after.get(hv, {})
        names |= {k for k in set(old) | set(new) if old.get(k) != new.get(k)}
    return names
