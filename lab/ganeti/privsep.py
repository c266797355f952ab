"""Ganeti's privilege separation as the nodes show it: which user each daemon runs as, whether
Ganeti's files have the owners and modes Ganeti itself wants, who can read the cluster's
private keys, and which uid each kvm instance's qemu runs under with a uid pool.

Ganeti's own list of its paths (``ganeti.tools.ensure_dirs.GetPaths``, what `ensure-dirs`
enforces) is the reference for files: the check runs on the node with the node's Ganeti.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from lab.errors import GanetiFailure
from lab.ganeti.cluster import Cluster
from lab.remote import Machine

# The users Ganeti's daemons run as on Debian (daemon-util's _daemon_usergroup, as seen on
# 3.0.2 nodes: LAB-NOTES); noded, mond and kvmd run as root by design.
DAEMON_USERS = {
    "ganeti-noded": "root", "ganeti-mond": "root", "ganeti-kvmd": "root",
    "ganeti-luxid": "gnt-masterd", "ganeti-wconfd": "gnt-masterd", "ganeti-confd": "gnt-confd",
    "ganeti-rapi": "gnt-rapi", "ganeti-metad": "gnt-metad",
}
ROOT_DAEMONS = frozenset(d for d, user in DAEMON_USERS.items() if user == "root")
# What must run: the node daemon and the monitoring daemon everywhere, the master's daemons on
# the master. Others start on demand (metad) or are started on the other master candidates by
# ganeti-watcher (confd), which the lab's images do not run from cron.
EVERY_NODE = frozenset({"ganeti-noded", "ganeti-mond"})
ON_THE_MASTER = EVERY_NODE | {"ganeti-confd", "ganeti-wconfd", "ganeti-luxid", "ganeti-rapi"}

# The cluster's secrets, and the daemon users that need to read each one (the masterd user
# reads them all: it runs the jobs that distribute them).
PRIVATE = {
    "/var/lib/ganeti/server.pem": {"gnt-masterd"},
    "/var/lib/ganeti/client.pem": {"gnt-masterd"},
    "/var/lib/ganeti/rapi.pem": {"gnt-masterd", "gnt-rapi"},
    "/var/lib/ganeti/cluster-domain-secret": {"gnt-masterd"},
    "/var/lib/ganeti/hmac.key": {"gnt-masterd", "gnt-confd"},
    "/var/lib/ganeti/config.data": {"gnt-masterd", "gnt-confd"},
    "/var/lib/ganeti/rapi/users": {"gnt-masterd", "gnt-rapi"},
}
DAEMON_ACCOUNTS = ("gnt-masterd", "gnt-confd", "gnt-rapi", "gnt-metad")


# Ganeti's luxid writes the job queue's serial number with atomicWriteFile
# (src/Ganeti/JQueue.hs, the same in 3.1.1's source): a new file, 0600 and of luxid's group,
# renamed over the old one. So after any job submission the master's copy differs from what
# ensure-dirs wants (the copies on other candidates are written by noded, as wanted).
# scenarios/test_privilege_separation.py proves it with a strict xfail.
JOB_QUEUE_SERIAL = "/var/lib/ganeti/queue/serial"
SERIAL_AS_LUXID_WRITES = "gnt-masterd:gnt-luxid 0600, Ganeti wants gnt-masterd:gnt-daemons 0640"
SERIAL_BUG = (
    "Ganeti 3.0.2 (3.1.1's source is the same; no upstream issue found): luxid writes the job "
    "queue's serial number with atomicWriteFile (src/Ganeti/JQueue.hs), a new 0600 file of its "
    "own group renamed over the old one, so after any job submission the master's "
    f"{JOB_QUEUE_SERIAL} is {SERIAL_AS_LUXID_WRITES} (lib/tools/ensure_dirs.py)")


# A node added to a cluster starts its monitoring daemon for the first time through
# node-daemon-setup and daemon-util, whose ensure-dirs runs before mond has ever written its
# log; mond (root) then creates the log with its own group, and it stays so until a later
# daemon start runs ensure-dirs again (the master's is fixed by the lab's RAPI restart).
MOND_LOG = "/var/log/ganeti/monitoring-daemon.log"
MOND_LOG_AS_FIRST_START_LEAVES_IT = "root:root 0600, Ganeti wants root:gnt-masterd 0600"
MOND_LOG_BUG = (
    "Ganeti 3.0.2: on a node just added, node-daemon-setup starts ganeti-mond through "
    "daemon-util, whose ensure-dirs runs before mond has written its log; mond then creates "
    f"{MOND_LOG} as {MOND_LOG_AS_FIRST_START_LEAVES_IT} (lib/tools/ensure_dirs.py), until a "
    "later daemon start runs ensure-dirs again")


def luxid_serial(cluster: Cluster) -> str:
    """The problem line ``file_problems`` gives for the master's serial as luxid writes it."""
    return f"{cluster.master.name}: {JOB_QUEUE_SERIAL}: {SERIAL_AS_LUXID_WRITES}"


def first_mond_logs(cluster: Cluster) -> list[str]:
    """The problem lines ``file_problems`` gives for the mond logs of the added nodes."""
    return [f"{m.name}: {MOND_LOG}: {MOND_LOG_AS_FIRST_START_LEAVES_IT}"
            for m in cluster.nodes if m is not cluster.master]


def known_bugs(cluster: Cluster) -> set[str]:
    """Lines of ``file_problems`` that are Ganeti bugs proven by strict xfails of their own
    (scenarios/test_privilege_separation.py)."""
    return {luxid_serial(cluster), *first_mond_logs(cluster)}


class PrivsepViolation(GanetiFailure):
    """What a node shows breaks Ganeti's privilege separation."""


@dataclass(frozen=True)
class DaemonProcess:
    node: str
    daemon: str
    user: str
    uid: int
    gid: int


def daemons(cluster: Cluster) -> list[DaemonProcess]:
    """Every Ganeti daemon process on every node, with its effective user, uid and gid."""
    names = ",".join(DAEMON_USERS)

    def listed(m: Machine) -> list[DaemonProcess]:
        out = m.succeed(f"ps -C {shlex.quote(names)} -o comm=,euser:32=,euid=,egid= || true")
        found = []
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 4:
                found.append(DaemonProcess(m.name, parts[0], parts[1], int(parts[2]),
                                           int(parts[3])))
        return found

    rows = cluster.lab.on_all(listed, cluster.nodes)
    return sorted((p for ps in rows.values() for p in ps), key=lambda p: (p.node, p.daemon))


def daemon_problems(cluster: Cluster, found: list[DaemonProcess]) -> list[str]:
    """What differs from Ganeti's design: a daemon missing, or under another user."""
    problems = []
    master = cluster.master.name
    for m in cluster.nodes:
        expected = ON_THE_MASTER if m.name == master else EVERY_NODE
        running = {p.daemon for p in found if p.node == m.name}
        for daemon in sorted(expected - running):
            problems.append(f"{m.name}: {daemon} is not running")
    for p in found:
        want = DAEMON_USERS[p.daemon]
        if p.user != want:
            problems.append(f"{p.node}: {p.daemon} runs as {p.user} (uid {p.uid}), "
                            f"expected {want}")
    return problems


# Run on a node with that node's Ganeti: every path Ganeti's ensure-dirs enforces, compared
# with what is there (a file allowed to be missing may be).
_FILES_CHECK = r"""
import grp, json, os, pwd, stat, sys
from ganeti.tools import ensure_dirs
bad = []
def name(uid, gid):
    return pwd.getpwuid(uid).pw_name + ":" + grp.getgrgid(gid).gr_name
for entry in ensure_dirs.GetPaths():
    path, kind, mode, uid, gid = entry[:5]
    if not os.path.exists(path):
        if kind != ensure_dirs.FILE or entry[5]:
            bad.append([path, "missing"])
        continue
    targets = [path]
    if kind == ensure_dirs.QUEUE_DIR:
        targets = [os.path.join(path, f) for f in os.listdir(path)
                   if os.path.isfile(os.path.join(path, f))]
    for target in targets:
        st = os.lstat(target)
        if stat.S_IMODE(st.st_mode) != mode or (st.st_uid, st.st_gid) != (uid, gid):
            bad.append([target, "%s %04o, Ganeti wants %s %04o" % (
                name(st.st_uid, st.st_gid), stat.S_IMODE(st.st_mode), name(uid, gid), mode)])
json.dump(bad, sys.stdout)
"""


def file_problems(cluster: Cluster, machines: list[Machine] | None = None) -> list[str]:
    """Ganeti's files whose owner, group or mode differ from what its ensure-dirs wants, on
    ``machines`` (every node of the cluster when None)."""
    def check(m: Machine) -> list[list[str]]:
        out = m.succeed("PYTHONPATH=/etc/ganeti/share python3 -", input=_FILES_CHECK)
        return list(json.loads(out))

    found = cluster.lab.on_all(check, machines or cluster.nodes)
    # Once per file: ensure-dirs lists the queue's serial both by name and in the queue dir.
    return list(dict.fromkeys(f"{node}: {path}: {what}" for node, rows in sorted(found.items())
                              for path, what in rows))


def readable_secrets(m: Machine) -> dict[str, set[str]]:
    """For each of the cluster's secrets on ``m``, the daemon users that can read it."""
    probes = " ".join(
        f"runuser -u {user} -- test -r {shlex.quote(path)} && echo {user}:{path};"
        for path in PRIVATE for user in DAEMON_ACCOUNTS)
    found: dict[str, set[str]] = {path: set() for path in PRIVATE}
    for line in m.succeed(f"{probes} true").splitlines():
        user, _, path = line.partition(":")
        if path in found:
            found[path].add(user)
    return found


def secret_problems(cluster: Cluster) -> list[str]:
    """Daemon users that can read a secret they have no need for, or cannot read one they
    need (only where the file exists: hmac.key and rapi.pem are on candidates)."""
    def check(m: Machine) -> list[str]:
        present = m.succeed("ls " + " ".join(PRIVATE) + " 2>/dev/null || true").split()
        problems = []
        for path, readers in readable_secrets(m).items():
            if path not in present:
                continue
            for user in sorted(readers - PRIVATE[path]):
                problems.append(f"{m.name}: {user} can read {path}, which it does not need")
            for user in sorted(PRIVATE[path] - readers):
                problems.append(f"{m.name}: {user} cannot read {path}, which it needs")
        return problems

    return [p for found in cluster.lab.on_all(check, cluster.nodes).values() for p in found]


@dataclass(frozen=True)
class QemuProcess:
    instance: str
    pid: int
    uids: tuple[int, int, int]   # real, effective, saved


def qemu_processes(m: Machine) -> list[QemuProcess]:
    """The qemu processes of Ganeti's kvm instances on ``m`` (matched by their `-name`, not
    by the process name, which `qemu-system-x86_64` truncates)."""
    out = m.succeed("ps -eo pid=,ruid=,euid=,suid=,args= | grep -- ' -name ' | grep -v grep "
                    "|| true")
    found = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 5 or "-name" not in parts:
            continue
        name = parts[parts.index("-name") + 1].split(",")[0]
        found.append(QemuProcess(name, int(parts[0]),
                                 (int(parts[1]), int(parts[2]), int(parts[3]))))
    return found
