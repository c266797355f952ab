"""Moving instances between two Ganeti clusters with Ganeti's own `move-instance`, through both
clusters' RAPI, the way an operator does it; and knowing, when a move fails, what state it left
on each side.

``prepare`` readies a pair of clusters in one call; ``move`` moves one instance and proves it
arrived whole (disk checksums, memory, vCPUs, NICs, OS; tags re-applied: 3.0's tool does not
carry them); ``inspect`` and ``recover`` handle a move that failed. Ganeti's own report of a
move ("Import successful") is never the proof: on 3.0.2 the destination reports success with
an empty disk (ganeti/ganeti#1681, LAB-NOTES "Inter-cluster move").

The tool runs on the source cluster's master, from the Ganeti that node runs, with the CA files
(certificate part only) and password files in a root-only directory there.
"""

from __future__ import annotations

import logging
import re
import secrets
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from lab import secrets as lab_secrets
from lab.errors import GanetiFailure, LabError
from lab.ganeti import versions
from lab.ganeti.bootstrap import add_rapi_user
from lab.ganeti.cluster import Cluster
from lab.ganeti.instances import disk_checksum
from lab.ganeti.rapi import RapiError
from lab.remote import Machine, Result
from lab.waiting import wait_for

log = logging.getLogger("lab.ganeti.moves")

MOVER_USER = "lab-mover"
WORK_DIR = "/root/ganeti-lab-move"        # on the tool's host, root only
DOMAIN_SECRET = "/var/lib/ganeti/cluster-domain-secret"
TOOL_TIMEOUT = 3600.0
# Upstream issues the lab meets on this path (LAB-NOTES "Inter-cluster move").
RENEW_CRYPTO_BUG = "ganeti/ganeti#1275"
CN_MISMATCH_BUG = "ganeti/ganeti#1681"
# The tool's log lines start with Python logging's asctime.
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}):")


class MoveError(GanetiFailure):
    """A move did not end with the instance whole on the destination and gone from the source.
    ``state`` says what each cluster was left with; ``figures`` what the move got to (its
    outcome that state's summary), for the record."""

    def __init__(self, message: str, state: MoveState | None, output: str = "",
                 hint: str | None = None, figures: MoveFigures | None = None) -> None:
        self.state, self.output, self.figures = state, output, figures
        super().__init__(message, hint)


class MoveToolCrashed(MoveError):
    """`move-instance` died with a Python traceback instead of moving or refusing."""


class MoveDataLost(MoveError):
    """The destination holds the instance, but not the source's data."""


# Preparing a pair of clusters ------------------------------------------------------------------


@dataclass
class Route:
    """A prepared way from ``source`` to ``dest``: the tool runs on ``host`` (the source's
    master) with ``work`` holding each side's pinned certificate and password file."""

    source: Cluster
    dest: Cluster
    host: Machine
    series: str                       # the Ganeti the tool comes from (the host's)
    work: str = WORK_DIR

    def ca_file(self, cluster: Cluster) -> str:
        return f"{self.work}/{cluster.plan.fqdn}.pem"

    def password_file(self, cluster: Cluster) -> str:
        return f"{self.work}/{cluster.plan.fqdn}.password"

    @property
    def tool(self) -> str:
        return f"/usr/share/ganeti/{self.series}/move-instance"

    def reverse(self) -> Route:
        """The way back, prepared the same way (cheap once both sides are prepared)."""
        return prepare(self.dest, self.source)


def prepare(source: Cluster, dest: Cluster) -> Route:
    """Ready ``source`` and ``dest`` for `move-instance` from one to the other, as an operator
    would, and prove each part:

    - a RAPI user with write access on both clusters' RAPI (which listens on each cluster IP);
    - each side's RAPI certificate pinned, the certificate part only (rapi.pem also holds the
      private key, which never leaves its cluster);
    - one cluster domain secret on every node of both clusters, checked by checksum;
    - the destination's node names reverse-resolvable on the source's nodes (3.1's fix for
      ganeti/ganeti#1681 names the receiver's certificate that way) and the destination's
      nodes resolvable from the source.
    """
    password = _mover_password(source, dest)
    host = source.master
    route = Route(source, dest, host, versions.active(host))
    host.succeed(f"install -d -m 0700 {WORK_DIR}")
    for cluster in (source, dest):
        pem = (cluster.state_dir / "rapi-ca.pem").read_text()
        if "PRIVATE KEY" in pem:
            raise LabError(f"{cluster.state_dir / 'rapi-ca.pem'} holds a private key",
                           "keep only the certificate part in the pinned CA file")
        host.write_file(route.ca_file(cluster), pem, 0o600)
        host.write_file(route.password_file(cluster), password + "\n", 0o600)
    share_domain_secret(source, dest)
    _check_names(source, dest)
    log.info("%s -> %s: ready for move-instance (Ganeti %s's tool on %s)", source.name,
             dest.name, route.series, host.name)
    return route


def _mover_password(source: Cluster, dest: Cluster) -> str:
    """The mover's password, the same on both clusters, kept in the source's state directory
    (a layout snapshot restores it with the users file it matches)."""
    path = source.state_dir / "rapi-mover.secret"
    if path.exists():
        password = path.read_text().strip()
    else:
        password = secrets.token_urlsafe(24)
        path.write_text(password)
        path.chmod(0o600)
    lab_secrets.register(password, "rapi password of the move tool", user=MOVER_USER)
    for cluster in (source, dest):
        users = cluster.master.read_file("/var/lib/ganeti/rapi/users")
        if not any(line.split()[:1] == [MOVER_USER] for line in users.splitlines()):
            add_rapi_user(cluster, MOVER_USER, password, "write")
    return password


def domain_secret_checksums(cluster: Cluster) -> dict[str, str]:
    """sha256 of the cluster domain secret on every node of ``cluster``."""
    found = cluster.lab.on_all(lambda m: m.succeed(f"sha256sum {DOMAIN_SECRET}").split()[0],
                               cluster.nodes)
    return {m.name: found[m.name] for m in cluster.nodes}


def share_domain_secret(source: Cluster, dest: Cluster) -> str:
    """Give ``dest`` the source's cluster domain secret; returns its checksum, proven equal
    on every node of both clusters.

    Ganeti's way, `gnt-cluster renew-crypto --cluster-domain-secret=FILE`, prints success
    and changes nothing when no --new-* option is given (ganeti/ganeti#1275, 3.0.2 and
    3.1.0~rc2; scenarios/test_moves_between_clusters.py proves it). The lab uses upstream's
    own workaround (ganeti/ganeti#1696): write the file on the master by hand, then
    `gnt-cluster redist-conf` copies it to the other nodes."""
    wanted = source.master.succeed(f"sha256sum {DOMAIN_SECRET}").split()[0]
    if set(domain_secret_checksums(dest).values()) != {wanted}:
        log.warning("%s: renew-crypto --cluster-domain-secret alone does nothing (%s); "
                    "writing %s's secret on the master by hand and running redist-conf "
                    "(upstream's workaround, ganeti/ganeti#1696)", dest.name, RENEW_CRYPTO_BUG,
                    source.name)
        secret = source.master.read_file(DOMAIN_SECRET)
        lab_secrets.register(secret.strip(), f"cluster domain secret of {source.name}")
        staged = f"{DOMAIN_SECRET}.lab-new"
        dest.master.write_file(staged, secret, 0o400)
        dest.master.succeed(f"chown --reference={DOMAIN_SECRET} {staged} && "
                            f"chmod --reference={DOMAIN_SECRET} {staged} && "
                            f"mv {staged} {DOMAIN_SECRET}")
        dest.gnt("gnt-cluster redist-conf", timeout=900)
    for cluster in (source, dest):
        sums = domain_secret_checksums(cluster)
        behind = sorted(node for node, digest in sums.items() if digest != wanted)
        if behind:
            raise LabError(f"{cluster.name}: the cluster domain secret on {', '.join(behind)} "
                           f"differs from {source.name}'s",
                           "run `gnt-cluster redist-conf` on its master, then check "
                           f"`sha256sum {DOMAIN_SECRET}` on every node")
    return wanted


def _check_names(source: Cluster, dest: Cluster) -> None:
    """The names the move needs resolve where it needs them."""
    for node in source.nodes:
        for fqdn in dest.plan.nodes:
            ip = dest.lab.plan.machine(fqdn.split(".")[0]).lab_ip
            found = node.run(f"getent hosts {shlex.quote(ip)}", announce=False)
            names = found.stdout.split()[1:] if found.ok else []
            if fqdn not in names:
                raise LabError(f"{node.name} cannot reverse-resolve {ip} to {fqdn} (got "
                               f"{' '.join(names) or 'nothing'})",
                               "give the lab's DNS a PTR record for every node (lab/settle.py)")


# One move ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstancePicture:
    """What must arrive unchanged: from RAPI, plus every disk's sha256 where it lives."""

    os: str
    disk_template: str
    disk_sizes: tuple[int, ...]
    memory: int
    vcpus: int
    nics: tuple[tuple[str, str, str], ...]   # (mac, mode, link)
    checksums: tuple[str, ...]
    tags: tuple[str, ...] = ()
    admin_up: bool = False

    @classmethod
    def of(cls, cluster: Cluster, instance: str) -> InstancePicture:
        info = cluster.rapi.instance(instance)
        sizes = tuple(int(s) for s in info["disk.sizes"])
        sums = tuple(disk_checksum(cluster, instance, i) for i in range(len(sizes)))
        be = info.get("beparams") or {}
        return cls(os=info["os"], disk_template=info["disk_template"], disk_sizes=sizes,
                   memory=int(be.get("maxmem") or be.get("memory") or 0),
                   vcpus=int(be.get("vcpus") or 0),
                   nics=tuple(zip(info["nic.macs"], info["nic.modes"], info["nic.links"],
                                  strict=True)),
                   checksums=sums, tags=tuple(sorted(info.get("tags") or [])),
                   admin_up=_admin_up(info))

    def differences(self, other: InstancePicture) -> list[str]:
        return [f"{name}: {mine!r} != {theirs!r}"
                for name, mine, theirs in ((f, getattr(self, f), getattr(other, f))
                                           for f in self.__dataclass_fields__)
                if mine != theirs]


def _admin_up(info: dict[str, Any]) -> bool:
    state = info.get("admin_state")
    return state is True or state == "up"


@dataclass
class MoveFigures:
    """One move, as the run record keeps it (seconds; None where the tool never got there)."""

    instance: str
    source: str
    dest: str
    source_version: str
    dest_version: str
    tool_series: str
    disk_template: str
    bytes: int
    seconds: float                        # the tool process, start to end
    fixed_seconds: float | None = None    # until the first disk sends data
    copy_seconds: float | None = None     # first disk sending -> last disk finished
    downtime_seconds: float | None = None  # source shut down -> destination started
    outcome: str = "moved"
    tags_carried: bool | None = None      # by the tool itself (None: never got that far)

    @property
    def mib_per_s(self) -> float | None:
        if not self.copy_seconds:
            return None
        return round(self.bytes / 2**20 / self.copy_seconds, 2)

    def metrics(self) -> dict[str, Any]:
        return {"source": self.source, "destination": self.dest,
                "source version": self.source_version, "destination version": self.dest_version,
                "tool": self.tool_series, "template": self.disk_template,
                "bytes": self.bytes, "seconds": round(self.seconds, 1),
                "fixed seconds": _round(self.fixed_seconds),
                "copy seconds": _round(self.copy_seconds), "MiB/s": self.mib_per_s,
                "downtime seconds": _round(self.downtime_seconds), "outcome": self.outcome,
                "tags carried by the tool": self.tags_carried}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


@dataclass
class ToolRun:
    command: str
    result: Result
    seconds: float
    started: float
    lines: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result.ok

    @property
    def output(self) -> str:
        return self.result.stdout + self.result.stderr

    def crash(self) -> str | None:
        """The exception that ended the tool, if one did: a traceback it never got past to
        its "Instance move results" (a move's own errors are logged with tracebacks too)."""
        lines = self.output.splitlines()
        if "Instance move results:" in self.output or not any(
                line.startswith("Traceback") for line in lines):
            return None
        return next((ln for ln in reversed(lines)
                     if re.match(r"^[\w.]+(Error|Exception)\b", ln)), lines[-1])

    def stamp(self, pattern: str, last: bool = False) -> float | None:
        """When the tool logged a line matching ``pattern`` (epoch seconds)."""
        found = [ln for ln in self.output.splitlines() if re.search(pattern, ln)]
        for line in reversed(found) if last else found:
            if m := _STAMP.match(line):
                return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return None


def tool_command(route: Route, instances: list[str], *, dest_pnode: str | None = None,
                 dest_snode: str | None = None, compress: str | None = None,
                 iallocator: str | None = None, work_around: bool = True,
                 password_file: str | None = None) -> str:
    """The `move-instance` command line. ``work_around``: on the 3.0 tool add
    ``--opportunistic-tries=0``, without which it crashes (``None > 0``; fixed in 3.1)."""
    args = ["python3", route.tool, "--verbose",
            f"--src-ca-file={route.ca_file(route.source)}", f"--src-username={MOVER_USER}",
            f"--src-password-file={route.password_file(route.source)}",
            f"--dest-ca-file={route.ca_file(route.dest)}", f"--dest-username={MOVER_USER}",
            f"--dest-password-file={password_file or route.password_file(route.dest)}"]
    if dest_pnode:
        args.append(f"--dest-primary-node={dest_pnode}")
    if dest_snode:
        args.append(f"--dest-secondary-node={dest_snode}")
    if compress:
        args.append(f"--compress={compress}")
    if iallocator:
        args.append(f"--iallocator={iallocator}")
    if work_around and route.series == "3.0":
        log.warning("move-instance of Ganeti 3.0 crashes without --opportunistic-tries "
                    "(`None > 0`, fixed in 3.1): passing --opportunistic-tries=0")
        args.append("--opportunistic-tries=0")
    args += [route.source.plan.fqdn, route.dest.plan.fqdn, *instances]
    return shlex.join(args)


def run_tool(route: Route, command: str, timeout: float = TOOL_TIMEOUT) -> ToolRun:
    """Run a `move-instance` command on the route's host (its output in the live log)."""
    started, wall = time.monotonic(), time.time()
    result = route.host.run(command, timeout=timeout)
    run = ToolRun(command, result, time.monotonic() - started, wall)
    for line in run.output.splitlines():
        log.info("move-instance: %s", line)
    return run


def move(route: Route, instance: str, *, dest_pnode: str | None = None,
         dest_snode: str | None = None, compress: str | None = None, work_around: bool = True,
         password_file: str | None = None, before: InstancePicture | None = None,
         during: Callable[[], None] | None = None,
         timeout: float = TOOL_TIMEOUT) -> MoveFigures:
    """Move ``instance`` from the route's source to its destination and prove it arrived:
    the same disks (sha256), memory, vCPUs, NICs and OS; running there if it was
    up at the source; gone from the source; its tags re-applied by the lab (3.0's tool does
    not carry them).

    ``dest_pnode`` defaults to the destination's master node. ``during`` runs beside the tool
    (to break a move on purpose). On failure: ``MoveError`` (``MoveToolCrashed``,
    ``MoveDataLost``) whose ``state`` says what each side holds; ``recover`` repairs it.
    """
    # The destination checks the instance's name (no option skips it).
    if not route.dest.master.run(f"getent hosts {shlex.quote(instance)}", announce=False).ok:
        raise LabError(f"{instance} does not resolve on {route.dest.name}'s master",
                       "use a name from the lab's DNS plan (InstanceFactory.free_name)")
    before = before or InstancePicture.of(route.source, instance)
    command = tool_command(route, [instance], dest_pnode=dest_pnode or route.dest.master_name,
                           dest_snode=dest_snode, compress=compress, work_around=work_around,
                           password_file=password_file)
    with _beside(during):
        run = run_tool(route, command, timeout)
    figures = _figures(route, instance, before, run)
    if not run.ok:
        state = inspect(route, instance, before)
        figures.outcome = state.summary
        crash = run.crash()
        kind = MoveToolCrashed if crash else MoveDataLost if state.data_lost else MoveError
        raise kind(f"moving {instance} from {route.source.name} to {route.dest.name} failed "
                   f"({crash or _last_error(run)}): {state.describe()}", state, run.output,
                   state.advice(), figures)
    if before.admin_up:
        wait_running(route.dest, instance)
    after = InstancePicture.of(route.dest, instance)
    # 3.0's tool drops the tags; 3.1's carries them. Re-applying is harmless either way.
    figures.tags_carried = after.tags == before.tags
    if before.tags:
        route.dest.rapi.add_tags("instance", instance, list(before.tags)).wait(timeout=600)
        after = replace(after, tags=tuple(sorted(route.dest.rapi.tags("instance", instance))))
    state = inspect(route, instance, before, after=after)
    differences = before.differences(after)
    if differences or state.source_present:
        figures.outcome = state.summary
        kind = MoveDataLost if any(d.startswith("checksums") for d in differences) else MoveError
        raise kind(f"move-instance said {instance} moved from {route.source.name} to "
                   f"{route.dest.name}, but: {'; '.join(differences) or state.describe()}",
                   state, run.output, state.advice(), figures)
    log.info("%s moved %s -> %s: %.0f s (copy %s s, %s MiB/s), data, memory, vCPUs, NICs and "
             "OS as they were", instance, route.source.name, route.dest.name, figures.seconds,
             _round(figures.copy_seconds), figures.mib_per_s)
    return figures


@contextmanager
def _beside(action: Callable[[], None] | None) -> Iterator[None]:
    """Run ``action`` in a thread while the body runs; its exception is raised after."""
    if action is None:
        yield
        return
    failure: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="beside-move", daemon=True)
    thread.start()
    yield
    thread.join(timeout=600)
    if failure:
        raise failure[0]


def _last_error(run: ToolRun) -> str:
    """The tool's own last word on the failure, without its log prefix."""
    lines = [ln for ln in run.output.splitlines() if "error" in ln.lower() or "Failed" in ln]
    if not lines:
        return f"exit {run.result.exit_status}"
    return re.sub(r"^\d{4}-\d\d-\d\d \S+: \S+ [A-Z]+ ", "", lines[-1]).strip()


def _figures(route: Route, instance: str, before: InstancePicture, run: ToolRun
             ) -> MoveFigures:
    sending = run.stamp(r"Disk \d+ is now sending data|is sending data on")
    finished = run.stamp(r"finished (sending|receiving) data", last=True)
    down = run.stamp(r"Shutting down instance")
    up = run.stamp(r"Import successful")
    return MoveFigures(
        instance=instance, source=route.source.name, dest=route.dest.name,
        source_version=route.source.version_summary(),
        dest_version=route.dest.version_summary(), tool_series=route.series,
        disk_template=before.disk_template, bytes=sum(before.disk_sizes) * 2**20,
        seconds=run.seconds,
        fixed_seconds=None if sending is None else sending - run.started,
        copy_seconds=None if sending is None or finished is None else finished - sending,
        downtime_seconds=(up - down) if before.admin_up and up and down else None)


def cut_transfer(cluster: Cluster, node: str, after: float = 10.0,
                 timeout: float = 900.0) -> Callable[[], None]:
    """An action for ``move(during=...)`` that breaks the move mid-copy, as a cut link would:
    once the export daemon on ``node`` (the source instance's primary) has run ``after``
    seconds, the socat carrying the disk is killed (SIGKILL). The daemon itself is left alive
    to report the failure: a killed daemon leaves Ganeti's export job running for good (its
    status file keeps the last progress, and nothing checks that the daemon still lives)."""
    m = cluster.lab.machine(node.split(".")[0])
    exporting = shlex.quote("import-export [^ ]+ export ")

    def cut() -> None:
        m.wait_until_succeeds(f"pgrep -f -- {exporting}", timeout=timeout, interval=1.0)
        time.sleep(after)
        m.succeed("pkill -9 -x socat")
        log.warning("%s: cut the disk transfer of a move mid-copy (its socat killed, on "
                    "purpose)", node)

    return cut


# A move that failed ----------------------------------------------------------------------------


@dataclass
class MoveState:
    """What a move left on both sides."""

    instance: str
    source: str
    dest: str
    source_present: bool
    source_running: bool
    source_was_up: bool
    dest_present: bool
    dest_running: bool
    dest_data: str            # "same" | "different" | "all zeros" | "absent"

    @property
    def data_lost(self) -> bool:
        return self.dest_present and self.dest_data != "same" and not self.source_present

    @property
    def summary(self) -> str:
        if not self.source_present and self.dest_present and self.dest_data == "same":
            return "moved"
        if self.source_present and not self.dest_present:
            return "source left down" if self.source_was_up and not self.source_running \
                else "nothing changed"
        if self.source_present and self.dest_present:
            return f"destination copy ({self.dest_data}), source " + \
                ("left down" if self.source_was_up and not self.source_running else "kept")
        if not self.source_present and not self.dest_present:
            return "instance lost on both sides"
        return f"source removed, destination data {self.dest_data}"

    def describe(self) -> str:
        src = "absent" if not self.source_present else (
            "running" if self.source_running else
            "down (it was up before the move)" if self.source_was_up else "down")
        dst = "absent" if not self.dest_present else (
            f"{'running' if self.dest_running else 'down'}, disks {self.dest_data} "
            "compared with the source's")
        return (f"{self.summary}: on source {self.source} {self.instance} is {src}; on "
                f"destination {self.dest} it is {dst}")

    def advice(self) -> str:
        if self.summary == "nothing changed":
            return "nothing to repair; fix the cause and move again"
        if self.source_present:
            return "lab.ganeti.moves.recover() removes the destination copy and restarts " \
                   "the source"
        return "the source is gone: restore the lab's snapshot to get the instance back"


def inspect(route: Route, instance: str, before: InstancePicture,
            after: InstancePicture | None = None) -> MoveState:
    """Read what each cluster holds of ``instance`` after a move ended, well or not."""
    src = _instance_or_none(route.source, instance)
    dst = _instance_or_none(route.dest, instance)
    data = "absent"
    if dst is not None:
        if after is None:
            after = _dest_picture(route.dest, instance)
        if after is None:
            data = "unreadable"
        elif after.checksums == before.checksums:
            data = "same"
        elif _all_zero(route.dest, after):
            data = "all zeros"
        else:
            data = "different"
    return MoveState(instance, route.source.name, route.dest.name, src is not None,
                     bool(src and src.get("oper_state")), before.admin_up, dst is not None,
                     bool(dst and dst.get("oper_state")), data)


def _instance_or_none(cluster: Cluster, instance: str) -> dict[str, Any] | None:
    try:
        return cluster.rapi.instance(instance)
    except RapiError as exc:
        if exc.status == 404:
            return None
        raise


def _dest_picture(cluster: Cluster, instance: str) -> InstancePicture | None:
    try:
        return InstancePicture.of(cluster, instance)
    except GanetiFailure as exc:
        log.warning("%s: cannot read %s's disks: %s", cluster.name, instance, exc)
        return None


def _all_zero(cluster: Cluster, picture: InstancePicture) -> bool:
    """Whether disk 0 holds only zeros: its checksum (already read) against that of as many
    zero bytes, computed on the master, so no second Ganeti job locates the disk."""
    size = picture.disk_sizes[0] * 2**20
    zeros = cluster.master.succeed(f"head -c {size} /dev/zero | sha256sum", timeout=1800)
    return picture.checksums[0] == zeros.split()[0]


def recover(route: Route, state: MoveState, before: InstancePicture) -> None:
    """Bring the source back as it was after a failed move: a destination copy that exists
    beside the source is removed (the source is the truth), a source the move left down is
    started again; then its disks are proven unchanged."""
    if not state.source_present:
        raise MoveError(f"{state.instance} is gone from {state.source}: nothing to recover "
                        "from", state, hint=state.advice())
    if state.dest_present:
        log.warning("%s: removing %s's incomplete copy (%s)", route.dest.name, state.instance,
                    state.dest_data)
        route.dest.rapi.remove_instance(state.instance, shutdown_timeout=0).wait(timeout=900)
    if state.source_was_up and not state.source_running:
        log.warning("%s: starting %s, which the failed move left down", route.source.name,
                    state.instance)
        route.source.rapi.startup_instance(state.instance).wait(timeout=900)
    now = InstancePicture.of(route.source, state.instance)
    if now.checksums != before.checksums:
        raise MoveDataLost(f"{route.source.name}: {state.instance}'s disks changed during the "
                           "failed move", state, hint=state.advice())


# Several moves ---------------------------------------------------------------------------------


@dataclass
class Batch:
    moves: list[MoveFigures]
    seconds: float

    @property
    def tool_seconds(self) -> float:
        return sum(m.seconds for m in self.moves)


def move_each(route: Route, instances: dict[str, str], *, at_once: bool,
              pictures: dict[str, InstancePicture] | None = None) -> Batch:
    """Move several instances (name -> destination primary node), one tool process each:
    one after another, or all at once. ``pictures`` (taken beforehand) keeps the checksums
    out of the measured time."""
    pictures = pictures or {name: InstancePicture.of(route.source, name) for name in instances}
    started = time.monotonic()
    if at_once:
        with ThreadPoolExecutor(max_workers=len(instances)) as pool:
            futures = [pool.submit(move, route, name, dest_pnode=node, before=pictures[name])
                       for name, node in instances.items()]
            moves = [f.result() for f in futures]
    else:
        moves = [move(route, name, dest_pnode=node, before=pictures[name])
                 for name, node in instances.items()]
    return Batch(moves, time.monotonic() - started)


def wait_running(cluster: Cluster, instance: str, timeout: float = 300.0) -> None:
    wait_for(f"{instance} running on {cluster.name}",
             lambda: bool(cluster.rapi.instance(instance).get("oper_state")), timeout=timeout)


__all__ = ["Batch", "InstancePicture", "MoveDataLost", "MoveError", "MoveFigures",
           "MoveState", "MoveToolCrashed", "Route", "ToolRun", "domain_secret_checksums",
           "inspect", "move", "move_each", "prepare", "recover", "run_tool",
           "share_domain_secret", "tool_command"]
