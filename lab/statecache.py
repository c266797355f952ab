"""The lab-state cache: a lab's "booted" and cluster-ready states kept on the host, keyed by
content like the images, so a later lab with the same key starts from them in seconds instead
of booting, settling and bootstrapping.

An entry is a whole lab at one snapshot: every machine's disks with their internal snapshots
(memory included), the domain and snapshot definitions, and the lab's state files (its keys,
the machines' host keys, what it knows of its clusters). The key covers what decides that
state: the lab's plan without its name and addresses (topology, image boxes, accelerator,
each cluster's Ganeti version), the code that settles and bootstraps, and the Ganeti patch.

Guests keep their addresses in memory, so an entry is bound to the subnets it was made on,
and a lab starts from it only when its lease holds those same subnets. The lease book gives
each lab subnets no other lab holds, so two labs never share an entry's addresses: a second
lab beside the first gets other subnets, boots, and its state becomes an entry of its own.

Every file of an entry is listed in its manifest with its size and xxh3-128 digest, and an
entry only appears under its final name once whole (written aside, then renamed). A copy out
of the cache checks every digest on the way; an entry that fails is removed, never used, and
the lab boots (its fresh state then stored again).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

import libvirt
import psutil
import xxhash
from filelock import FileLock, Timeout

from lab import reimage, snapshots, virt
from lab.errors import LabError
from lab.images.store import default_cache_dir
from lab.secrets import register_lab_secrets

if TYPE_CHECKING:
    from lab.lab import Lab

log = logging.getLogger("lab.statecache")

ENV = "GANETI_LAB_STATE_CACHE"          # "on" (default) or "off"
DIR_ENV = "GANETI_LAB_STATE_CACHE_DIR"  # default: <image cache>/states
BOOTED = "booted"

# The code whose output an entry holds. A change to any of it makes new keys.
_BOOTED_CODE = ("Vagrantfile", "spec.py", "hostkeys.py", "lab.py", "bringup.py", "settle.py",
                "ganeti/nodes.py", "templates")
_LAYOUT_CODE = (*_BOOTED_CODE, "ganeti/bootstrap.py", "ganeti/cluster.py", "ganeti/certs.py",
                "ganeti/rapi.py", "ganeti/health.py", "ganeti/versions.py", "ganeti/patches.py",
                "ganeti/gnt.py")
# What the plan says that is only the lab's own name and addresses.
_LAB_OWN = ("lab", "prefix", "key", "console_dir", "mgmt_network", "lab_network",
            "mgmt_subnet", "lab_subnet", "mgmt_bridge", "lab_bridge", "topology")
_MACHINE_OWN = ("domain", "cmdline", "seed", "mgmt_ip", "mgmt_mac", "lab_ip", "lab_mac")
# The lab's state files that describe its machines, so they travel with them: the login and
# node keys they trust, their host keys, the snapshots and their copies of these files, what
# the lab knows of its clusters, the live layout, and which machines were re-imaged when. The
# rest is the lab's own (its plan, Vagrant's files, consoles, a Ganeti patch, local packages).
_MACHINE_STATE = ("id_ed25519", "id_ed25519.pub", "node_ed25519", "node_ed25519.pub",
                  "hostkeys", "known_hosts", "snapshots.json", "snapshots", "clusters",
                  "layout", reimage.RECORD)
_CHUNK = 16 << 20
# A volume on its way out of the cache: named in the lab's namespace, so destroying the lab
# removes it too if the copy is cut short.
_PARTIAL = ".from-cache"


def enabled() -> bool:
    """Whether labs start from and store cached states. On unless ``GANETI_LAB_STATE_CACHE``
    says off: the pytest plugin and `ganeti-lab run` say off unless asked (tests prove the
    real boot and bootstrap), and so does the bench for what it measures."""
    value = os.environ.get(ENV, "on").strip().lower()
    if value not in ("on", "off"):
        raise LabError(f"{ENV}={value!r} is neither on nor off",
                       f"set {ENV}=off to bypass the lab-state cache, or on")
    return value == "on"


@contextlib.contextmanager
def setting(value: str, variable: str = ENV) -> Iterator[None]:
    """``variable`` (the cache on or off, or its directory ``DIR_ENV``) set to ``value`` for
    the duration, for this process and what it starts."""
    before = os.environ.get(variable)
    os.environ[variable] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = before


def root() -> Path:
    path = Path(os.environ[DIR_ENV]) if os.environ.get(DIR_ENV) else default_cache_dir() / "states"
    path.mkdir(parents=True, exist_ok=True)
    return path


# Keys -----------------------------------------------------------------------------------------


@functools.cache  # the code does not change under a running process; every key reads it
def _code_digest(files: tuple[str, ...]) -> str:
    base = Path(str(resources.files("lab")))
    digest = hashlib.sha256()
    for name in files:
        path = base / name
        for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if f.is_file() and "__pycache__" not in f.parts:
                digest.update(str(f.relative_to(base)).encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()


def _neutral_plan(lab: Lab) -> dict[str, Any]:
    """The plan without the lab's name and addresses: what two labs of one key share."""
    plan = dataclasses.asdict(lab.plan)
    for name in _LAB_OWN:
        plan.pop(name, None)
    for m in plan["machines"]:
        for name in _MACHINE_OWN:
            m.pop(name, None)
    for clusters in plan["layouts"].values():
        for c in clusters:
            c.pop("ip", None)
    plan["instance_names"] = sorted(plan["instance_names"])
    return plan


def state_key(lab: Lab, state: str, patch: str | None = None) -> dict[str, Any]:
    """What decides ``state`` (``booted``, or a layout snapshot's name) of ``lab``; ``patch``:
    the digest of the Ganeti patch its clusters run, if any."""
    return {
        "state": state,
        "plan": _neutral_plan(lab),
        "code": _code_digest(_BOOTED_CODE if state == BOOTED else _LAYOUT_CODE),
        "patch": patch,
    }


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _subnet_tag(lab: Lab) -> str:
    return "_".join(s.replace("/", "-") for s in (lab.plan.mgmt_subnet, lab.plan.lab_subnet))


def entry_dir(lab: Lab, state: str, patch: str | None = None) -> Path:
    return root() / f"{_digest(state_key(lab, state, patch))}-{_subnet_tag(lab)}"


# Entries --------------------------------------------------------------------------------------


@dataclass
class Entry:
    path: Path
    manifest: dict[str, Any]

    @property
    def state(self) -> str:
        return str(self.manifest["state"])

    @property
    def snapshots(self) -> list[str]:
        return list(self.manifest.get("snapshots", []))

    @property
    def size(self) -> int:
        return sum(int(f["size"]) for f in self.manifest["files"].values())

    def file(self, name: str) -> Path:
        return self.path / name

    def last_used(self) -> str:
        when = dt.datetime.fromtimestamp(self.path.stat().st_mtime, dt.UTC)
        return when.isoformat(timespec="seconds")

    def touch(self) -> None:
        os.utime(self.path)

    def current(self) -> bool:
        """Whether today's code could still make this entry (else no lab ever uses it)."""
        files = _BOOTED_CODE if self.state == BOOTED else _LAYOUT_CODE
        return bool(self.manifest.get("key", {}).get("code") == _code_digest(files))


def _read(path: Path) -> Entry | None:
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        if not isinstance(manifest.get("files"), dict):
            raise ValueError("no file list")
    except (OSError, ValueError) as exc:
        log.warning("state cache: %s is not a whole entry (%s); it is removed", path.name, exc)
        shutil.rmtree(path, ignore_errors=True)
        return None
    return Entry(path, manifest)


def lookup(lab: Lab, state: str, patch: str | None = None) -> Entry | None:
    """The entry of ``state`` for ``lab``'s key and subnets, if the cache holds it whole."""
    path = entry_dir(lab, state, patch)
    return _read(path) if path.is_dir() else None


def entries() -> list[Entry]:
    found = []
    for path in sorted(root().iterdir()):
        if path.is_dir() and not path.name.startswith("."):
            entry = _read(path)
            if entry is not None:
                found.append(entry)
    return found


def partial_dirs() -> list[Path]:
    """Entries being written, or left half-written by a process that died."""
    return sorted(p for p in root().iterdir() if p.name.startswith(".partial-"))


@contextlib.contextmanager
def _entry_lock(path: Path, timeout: float) -> Iterator[bool]:
    lock = FileLock(str(path) + ".lock", timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def _copy(source: Path, target: Path) -> tuple[int, str]:
    """Copy ``source`` to ``target`` and return its size and xxh3-128 digest (one pass)."""
    digest, size = xxhash.xxh3_128(), 0
    with open(source, "rb") as src, open(target, "wb") as dst:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            size += len(chunk)
    shutil.copymode(source, target)
    return size, digest.hexdigest()


def _pool_dir() -> Path:
    with virt.connect() as conn:
        xml = conn.storagePoolLookupByName("default").XMLDesc(0)
    path = ElementTree.fromstring(xml).findtext("target/path")
    if not path:
        raise LabError("libvirt's default pool has no directory", "recreate the pool")
    return Path(path)


def _volumes(lab: Lab) -> list[str]:
    """The lab's volumes, but a copy out of the cache that an interruption left behind."""
    return sorted(name for v in virt.find(lab.name).volumes
                  if not (name := v.split("/", 1)[1]).endswith(_PARTIAL))


def _snapshot_xmls(dom: libvirt.virDomain) -> list[str]:
    """The domain's snapshot definitions, parents before children (as redefining needs)."""
    snaps = dom.listAllSnapshots(0)
    order: list[libvirt.virDomainSnapshot] = []
    placed: set[str] = set()
    while len(order) < len(snaps):
        before = len(order)
        for snap in snaps:
            if snap.getName() in placed:
                continue
            try:
                parent = snap.getParent(0).getName()
            except libvirt.libvirtError:
                parent = None
            if parent is None or parent in placed:
                order.append(snap)
                placed.add(snap.getName())
        if len(order) == before:
            raise LabError(f"the snapshots of {dom.name()} do not form a tree",
                           f"`virsh snapshot-list --tree {dom.name()}`")
    return [s.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE) for s in order]


def store(lab: Lab, state: str, snapshot: str, patch: str | None = None) -> Entry | None:
    """Keep ``lab`` at ``snapshot`` (just saved: the machines are in that state) as the cache
    entry of ``state``. The machines are stopped for the copy (so every disk is whole on the
    host), then brought back at the snapshot. Returns None when the entry already exists or
    another process is writing it."""
    final = entry_dir(lab, state, patch)
    if final.is_dir() and _read(final) is not None:
        return None
    started = time.monotonic()
    with _entry_lock(final, timeout=0) as mine:
        if not mine or (final.is_dir() and _read(final) is not None):
            log.info("state cache: another process stores %s; not storing it again",
                     final.name)
            return None
        work = root() / f".partial-{os.getpid()}-{final.name}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(mode=0o700)  # it will hold the lab's private keys and RAPI passwords
        (work / "volumes").mkdir()
        lab.close()
        files: dict[str, dict[str, Any]] = {}
        domains: dict[str, dict[str, Any]] = {}
        try:
            with virt.connect() as conn:
                for m in lab.plan.machines:
                    dom = conn.lookupByName(m.domain)
                    domains[m.name] = {
                        "xml": dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE
                                           | libvirt.VIR_DOMAIN_XML_SECURE),
                        "snapshots": _snapshot_xmls(dom),
                    }
                    if dom.isActive():
                        dom.destroy()  # QEMU exits and writes its disks' metadata out
            pool = _pool_dir()
            for volume in _volumes(lab):
                name = f"volumes/{volume[len(lab.plan.prefix):]}"
                size, digest = _copy(pool / volume, work / name)
                files[name] = {"size": size, "xxh3": digest}
            for source in sorted(lab.dir.rglob("*")):
                relative = source.relative_to(lab.dir)
                if relative.parts[0] not in _MACHINE_STATE or not source.is_file():
                    continue
                target = work / "state" / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                size, digest = _copy(source, target)
                files[f"state/{relative}"] = {"size": size, "xxh3": digest}
            manifest = {
                "state": state, "snapshot": snapshot, "key": state_key(lab, state, patch),
                "made_by": lab.name, "prefix": lab.plan.prefix, "lab_dir": str(lab.dir),
                "subnets": [lab.plan.mgmt_subnet, lab.plan.lab_subnet],
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "domains": domains, "files": files,
                "snapshots": [s.name for s in snapshots.list_snapshots(lab)],
                "plan": json.loads((lab.dir / "lab.json").read_text()),
            }
            (work / "manifest.json").write_text(json.dumps(manifest, indent=1))
            work.rename(final)
        except (OSError, libvirt.libvirtError, LabError) as exc:
            # The cache only saves time: a full disk must not fail the lab's run.
            shutil.rmtree(work, ignore_errors=True)
            snapshots.restore(lab, snapshot)
            log.error("state cache: storing %s of lab %s failed (%s); the lab goes on "
                      "without it", state, lab.name, str(exc).splitlines()[0] if str(exc)
                      else type(exc).__name__)
            return None
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        restored = snapshots.restore(lab, snapshot)
    entry = Entry(final, manifest)
    log.info("state cache: %s of lab %s stored as %s (%.1f GiB) in %.1f s, the lab back at "
             "%s in %.1f s of it", state, lab.name, final.name, entry.size / 2**30,
             time.monotonic() - started, snapshot, restored.seconds)
    return entry


class CorruptEntry(LabError):
    pass


def _rename(text: str, entry: Entry, lab: Lab) -> str:
    text = text.replace(entry.manifest["prefix"], lab.plan.prefix)
    text = text.replace(f">ganeti-lab:{entry.manifest['made_by']}<", f">ganeti-lab:{lab.name}<")
    return text.replace(entry.manifest["lab_dir"] + "/", str(lab.dir) + "/")


def _without_uuid(xml: str) -> str:
    root_el = ElementTree.fromstring(xml)
    for el in root_el.findall("uuid"):
        root_el.remove(el)
    return ElementTree.tostring(root_el, encoding="unicode")


def _with_domain_uuid(snapshot_xml: str, uuid: str) -> str:
    root_el = ElementTree.fromstring(snapshot_xml)
    for domain in (root_el.find("domain"), root_el.find("inactiveDomain")):
        for el in domain.findall("uuid") if domain is not None else []:
            el.text = uuid
    return ElementTree.tostring(root_el, encoding="unicode")


def start_from(entry: Entry, lab: Lab) -> snapshots.Restored:
    """Make ``lab`` (prepared, its subnets the entry's; its machines absent or to be replaced)
    the entry's lab at the entry's snapshot. A digest that does not match removes the entry
    and raises ``CorruptEntry`` before anything of the lab was touched."""
    started = time.monotonic()
    if [lab.plan.mgmt_subnet, lab.plan.lab_subnet] != entry.manifest["subnets"]:
        raise LabError(f"state cache entry {entry.path.name} was made on subnets "
                       f"{entry.manifest['subnets']}, lab {lab.name} has others",
                       "this is a bug of the caller: look entries up with lookup()")
    pool = _pool_dir()
    copied: list[Path] = []
    try:
        for name, meta in sorted(entry.manifest["files"].items()):
            if not name.startswith("volumes/"):
                continue
            target = pool / f"{lab.plan.prefix}{name.removeprefix('volumes/')}{_PARTIAL}"
            copied.append(target)
            size, digest = _copy(entry.file(name), target)
            if (size, digest) != (meta["size"], meta["xxh3"]):
                raise CorruptEntry(f"state cache entry {entry.path.name}: {name} does not match "
                                   "its manifest (changed or truncated since it was stored)",
                                   "the entry is removed; the lab boots instead")
        for name, meta in entry.manifest["files"].items():
            if name.startswith("state/") and _file_digest(entry.file(name)) != meta["xxh3"]:
                raise CorruptEntry(f"state cache entry {entry.path.name}: {name} does not "
                                   "match its manifest", "the entry is removed; the lab boots "
                                   "instead")
    except (OSError, CorruptEntry) as exc:
        for path in copied:
            path.unlink(missing_ok=True)
        log.error("state cache: %s; removing the entry", str(exc).splitlines()[0])
        shutil.rmtree(entry.path, ignore_errors=True)
        if isinstance(exc, CorruptEntry):
            raise
        raise CorruptEntry(f"state cache entry {entry.path.name} cannot be read: {exc}",
                           "the entry is removed; the lab boots instead") from None
    lab.close()
    # The lab's machines (a fresh boot's, or none yet) give way to the entry's.
    virt.remove_machines(lab.name, spare=lambda volume: volume.endswith(_PARTIAL))
    for path in copied:
        path.rename(pool / path.name.removesuffix(_PARTIAL))
    _adopt_state(entry, lab)
    with virt.connect() as conn:
        virt.ensure_networks(lab.plan)
        for m in lab.plan.machines:
            meta = entry.manifest["domains"][m.name]
            dom = conn.defineXML(_without_uuid(_rename(meta["xml"], entry, lab)))
            for xml in meta["snapshots"]:
                dom.snapshotCreateXML(_with_domain_uuid(_rename(xml, entry, lab),
                                                        dom.UUIDString()),
                                      libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE)
    register_lab_secrets(lab.dir)
    copied_seconds = time.monotonic() - started
    restored = snapshots.restore(lab, entry.manifest["snapshot"])
    entry.touch()
    log.info("state cache: lab %s started from %s (%s) in %.1f s: copy %.1f s, restore %.1f s",
             lab.name, entry.path.name, entry.state, time.monotonic() - started,
             copied_seconds, restored.seconds)
    return restored


def _file_digest(path: Path) -> str:
    digest = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _adopt_state(entry: Entry, lab: Lab) -> None:
    """The entry's machine state files in the lab's directory (``_MACHINE_STATE``); the
    machines' kernel command lines (their login key) follow the entry's plan."""
    for name in _MACHINE_STATE:
        child = lab.dir / name
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink(missing_ok=True)
    source = entry.path / "state"
    for path in sorted(source.rglob("*")):
        if path.is_file():
            target = lab.dir / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    made = entry.manifest["plan"]["machines"]
    plan = json.loads((lab.dir / "lab.json").read_text())
    for mine, theirs in zip(plan["machines"], made, strict=True):
        mine["cmdline"] = theirs["cmdline"]  # the entry's login key, for a cold boot's sake
    (lab.dir / "lab.json").write_text(json.dumps(plan, indent=2))


# Trimming -------------------------------------------------------------------------------------


def remove(entry: Entry) -> None:
    shutil.rmtree(entry.path, ignore_errors=True)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def prune(everything: bool = False, older_than_days: float | None = None
          ) -> list[tuple[str, int]]:
    """Remove entries left half-written by a process that died, entries today's code can no
    longer make (their key never comes again), entries not used for ``older_than_days``, and
    (``everything``) all. Returns each removed name and its size."""
    removed = []
    for path in partial_dirs():
        pid = path.name.split("-")[1]
        if not pid.isdigit() or not psutil.pid_exists(int(pid)):
            removed.append((path.name, _size(path)))
            shutil.rmtree(path, ignore_errors=True)
    limit = time.time() - older_than_days * 86400 if older_than_days is not None else None
    for entry in entries():
        if everything or not entry.current() or (
                limit is not None and entry.path.stat().st_mtime < limit):
            removed.append((entry.path.name, entry.size))
            remove(entry)
    return removed
