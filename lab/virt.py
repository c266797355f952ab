"""libvirt, used directly for what Vagrant does poorly: networks with fixed addresses, domain
state, every object of a lab found by name (for destroy and orphan hunting), and snapshots."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import libvirt
import psutil
from filelock import FileLock

from lab.errors import LabError
from lab.paths import PREFIX, owner_of, state_dir
from lab.spec import LabPlan

log = logging.getLogger("lab.virt")


def uri() -> str:
    return os.environ.get("LIBVIRT_DEFAULT_URI", "qemu:///system")


def _silence(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; ours are raised as exceptions."""


libvirt.registerErrorHandler(_silence, None)

# The local daemons that create the lab's bridges (and so own the namespace they live in).
LIBVIRT_DAEMONS = ("libvirtd", "virtnetworkd", "virtqemud")


@functools.cache
def namespace_problem() -> str | None:
    """Why this process must not drive a lab: the local libvirt daemon sits in another network
    namespace, so the lab's bridges live there and the lab's addresses are unreachable from
    here; SSH to them would leave through this namespace's default route instead. None when
    they share one (a laptop; a run under scripts/labrun) or when it cannot be seen."""
    if not uri().startswith("qemu:///"):
        return None
    try:
        mine = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return None
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] not in LIBVIRT_DAEMONS:
            continue
        try:
            theirs = os.stat(f"/proc/{proc.pid}/ns/net").st_ino
        except OSError:
            continue  # another user's daemon: not ours to inspect
        if theirs != mine:
            return (f"{proc.info['name']} (pid {proc.pid}) runs in another network namespace "
                    "than this process, so the lab's addresses are not reachable from here")
    return None


@contextmanager
def connect() -> Iterator[libvirt.virConnect]:
    problem = namespace_problem()
    if problem:
        raise LabError(problem, "run the command through scripts/labrun (it enters the "
                       "daemon's namespace), or start libvirtd in this namespace")
    try:
        conn = libvirt.open(uri())
    except libvirt.libvirtError as exc:
        raise LabError(
            f"cannot connect to libvirt at {uri()}: {exc}",
            "start libvirtd (and virtlogd); on a laptop add yourself to the libvirt group; "
            "in a sandbox run inside the lab's network namespace (see README)",
        ) from None
    try:
        yield conn
    finally:
        conn.close()


# Networks -------------------------------------------------------------------------------------


def network_xml(p: LabPlan, kind: str) -> str:
    import ipaddress

    if kind == "mgmt":
        net = ipaddress.IPv4Network(p.mgmt_subnet)
        hosts = "".join(
            f"<host mac='{m.mgmt_mac}' name='{escape(m.name)}' ip='{m.mgmt_ip}'/>"
            for m in p.machines
        )
        dhcp = f"<dhcp><range start='{net[200]}' end='{net[250]}'/>{hosts}</dhcp>"
        name, bridge = p.mgmt_network, p.mgmt_bridge
    else:
        net = ipaddress.IPv4Network(p.lab_subnet)
        dhcp = ""  # the service box serves DHCP/DNS on the cluster network
        name, bridge = p.lab_network, p.lab_bridge
    dns = "" if kind == "mgmt" else "<dns enable='no'/>"
    # No <forward>: isolated. A lab reaches nothing but the host and itself.
    return (
        f"<network><name>{name}</name><bridge name='{bridge}' stp='off' delay='0'/>{dns}"
        f"<ip address='{net[1]}' netmask='{net.netmask}'>{dhcp}</ip></network>"
    )


def ensure_networks(p: LabPlan) -> None:
    with connect() as conn:
        for kind in ("mgmt", "lab"):
            name = p.mgmt_network if kind == "mgmt" else p.lab_network
            try:
                net = conn.networkLookupByName(name)
            except libvirt.libvirtError:
                net = conn.networkDefineXML(network_xml(p, kind))
            if not net.isActive():
                net.create()


# Objects of a lab -----------------------------------------------------------------------------


@dataclass
class LabObjects:
    domains: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    files: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.domains or self.networks or self.volumes or self.files)

    def merge(self, other: LabObjects) -> LabObjects:
        for kind in ("domains", "networks", "volumes", "files"):
            getattr(self, kind).extend(x for x in getattr(other, kind)
                                       if x not in getattr(self, kind))
        return self

    def __str__(self) -> str:
        parts = [f"{kind}: {', '.join(names)}" for kind, names in
                 (("domains", self.domains), ("networks", self.networks),
                  ("volumes", self.volumes), ("files", self.files)) if names]
        return "; ".join(parts) or "nothing"


def find(lab: str | None = None) -> LabObjects:
    """The libvirt objects of lab ``lab`` (exactly that lab's: not ``x-2``'s when ``lab`` is
    ``x``), or, with None, every object in the lab namespace (all labs and malformed names)."""
    def wanted(name: str) -> bool:
        if lab is None:
            return name.startswith(PREFIX)
        return owner_of(name) == lab

    found = LabObjects()
    with connect() as conn:
        found.domains = sorted(d.name() for d in conn.listAllDomains() if wanted(d.name()))
        found.networks = sorted(n.name() for n in conn.listAllNetworks() if wanted(n.name()))
        for pool in conn.listAllStoragePools():
            if not pool.isActive():
                continue
            _refresh(pool)
            found.volumes += sorted(f"{pool.name()}/{v.name()}" for v in pool.listAllVolumes()
                                    if wanted(v.name()))
    return found


def _refresh(pool: libvirt.virStoragePool) -> None:
    """Rescan a pool for files placed there behind libvirt's back.

    libvirt refuses a refresh while any client is creating or uploading a volume in that pool
    ("has asynchronous jobs running"), as another lab's `vagrant up` does for minutes on a new
    machine. Volumes made through libvirt are listed without a refresh, so listing goes on.
    """
    try:
        pool.refresh(0)
    except libvirt.libvirtError as exc:
        log.debug("pool %s not refreshed (%s); listing what libvirt knows", pool.name(), exc)


def remove(lab: str) -> LabObjects:
    """Force off and remove every domain, network and volume of lab ``lab``."""
    return _remove(find(lab))


def remove_machines(lab: str, spare: Callable[[str], bool] = lambda volume: False
                    ) -> LabObjects:
    """Remove the domains and volumes of lab ``lab`` but the volumes ``spare`` names, keeping
    its networks (the lab-state cache replaces a lab's machines with others on the same
    networks)."""
    found = find(lab)
    return _remove(LabObjects(found.domains, [], [v for v in found.volumes
                                                  if not spare(v.split("/", 1)[1])]))


def remove_exact(name: str) -> LabObjects:
    """Remove the domain, network or volume called exactly ``name`` (orphan clean-up)."""
    if not name.startswith(PREFIX):
        raise ValueError(f"refusing to remove an object outside the lab namespace: {name}")
    found = find()
    return _remove(LabObjects(
        [d for d in found.domains if d == name], [n for n in found.networks if n == name],
        [v for v in found.volumes if v.split("/", 1)[1] == name]))


# Another clean-up (a Ctrl-C handler, a second run) may remove an object first: that is fine.
_GONE = (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_NETWORK, libvirt.VIR_ERR_NO_STORAGE_VOL)


def _remove(objects: LabObjects) -> LabObjects:
    flags = (libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
             | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
             | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    with connect() as conn:
        for name in objects.domains:
            with _unless_gone():
                dom = conn.lookupByName(name)
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(flags)
        for qualified in objects.volumes:
            pool_name, vol = qualified.split("/", 1)
            with _unless_gone():
                conn.storagePoolLookupByName(pool_name).storageVolLookupByName(vol).delete(0)
        for name in objects.networks:
            with _unless_gone():
                net = conn.networkLookupByName(name)
                if net.isActive():
                    net.destroy()
                net.undefine()
    return objects


@contextmanager
def _unless_gone() -> Iterator[None]:
    try:
        yield
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in _GONE:
            raise


def ensure_default_pool() -> None:
    """vagrant-libvirt keeps boxes and disks in the pool named 'default'."""
    with connect() as conn:
        try:
            pool = conn.storagePoolLookupByName("default")
        except libvirt.libvirtError:
            os.makedirs("/var/lib/libvirt/images", exist_ok=True)
            pool = conn.storagePoolDefineXML(
                "<pool type='dir'><name>default</name>"
                "<target><path>/var/lib/libvirt/images</path></target></pool>")
        if not pool.isActive():
            pool.create()
        pool.setAutostart(1)


# Domains --------------------------------------------------------------------------------------

STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "no state", libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked", libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down", libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed", libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}


def domain_states(p: LabPlan) -> dict[str, str]:
    states = {}
    with connect() as conn:
        for m in p.machines:
            try:
                state, _ = conn.lookupByName(m.domain).state()
                states[m.name] = STATES.get(state, str(state))
            except libvirt.libvirtError:
                states[m.name] = "absent"
    return states


def console_paths(names: list[str]) -> dict[str, str | None]:
    """The serial console log file of each domain: it lies in the state directory of the lab
    that made the domain, which tells a lab of this host's other state directories (another
    user's, a test's) from an orphan of ours."""
    paths: dict[str, str | None] = {}
    with connect() as conn:
        for name in names:
            try:
                root = ElementTree.fromstring(conn.lookupByName(name).XMLDesc(0))
            except (libvirt.libvirtError, ElementTree.ParseError):
                paths[name] = None
                continue
            paths[name] = next((el.get("path") for el in root.iterfind("devices/serial/source")
                                if el.get("path")), None)
    return paths


def domain_xml(name: str) -> str:
    with connect() as conn:
        return conn.lookupByName(name).XMLDesc(0)


def network_xml_of(name: str) -> str:
    with connect() as conn:
        return conn.networkLookupByName(name).XMLDesc(0)


# Shared volumes: boxes, kernels, initrds -----------------------------------------------------

POOL = "default"


def ensure_pool_volume(source: Path, volume: str, fmt: str = "raw",
                       capacity: int | None = None) -> str:
    """Put ``source`` into the pool as ``volume`` (once per content) and return its path.

    Every lab on the host shares these volumes, so they are filled under a host-wide lock, and
    a volume counts as filled only once a marker written after the last byte matches the
    source's checksum and size: an upload that was killed or interrupted leaves no marker, and
    its half-filled volume is deleted and uploaded again instead of being booted from.

    qemu runs as an unprivileged user that cannot read the image cache in a home directory;
    pool volumes are readable by it, and uploading works for members of the libvirt group.
    """
    digest = file_digest(source)
    size = source.stat().st_size
    markers = state_dir() / "pool"
    markers.mkdir(parents=True, exist_ok=True)
    marker = markers / f"{volume}.sha256"
    expected = f"{digest} {size}\n"
    with FileLock(str(markers / f"{volume}.lock"), timeout=1800), connect() as conn:
        pool = conn.storagePoolLookupByName(POOL)
        _refresh(pool)
        try:
            vol: libvirt.virStorageVol | None = pool.storageVolLookupByName(volume)
        except libvirt.libvirtError:
            vol = None
        if vol is not None:
            complete = marker.is_file() and marker.read_text() == expected
            on_disk = _file_size(vol.path())
            if complete and on_disk in (None, size):
                return str(vol.path())
            users = _backed_upon(pool, vol.path())
            if users:
                # Not ours to replace while disks are built on it (a lab of another user, or
                # one made by plain `vagrant up` before the markers existed).
                log.warning("pool volume %s has no upload marker but backs %s; using it as is",
                            volume, ", ".join(users))
                return str(vol.path())
            log.warning("pool volume %s is incomplete or stale (an interrupted upload?); "
                        "uploading it again", volume)
            marker.unlink(missing_ok=True)
            vol.delete(0)
        marker.unlink(missing_ok=True)
        vol = _upload(conn, pool, volume, source, fmt, capacity=capacity or size,
                      allocation=size)
        marker.write_text(expected)
        return str(vol.path())


def put_lab_volume(volume: str, source: Path, fmt: str = "qcow2") -> str:
    """A volume of one lab holding the file ``source`` (made anew if it exists); returns its
    path. Unlike the shared volumes, it belongs to that lab alone (its name says which) and
    goes with it."""
    if owner_of(volume) is None:
        raise ValueError(f"{volume} is not a lab object name")
    with connect() as conn:
        pool = conn.storagePoolLookupByName(POOL)
        with contextlib.suppress(libvirt.libvirtError):
            pool.storageVolLookupByName(volume).delete(0)
        return str(_upload(conn, pool, volume, source, fmt,
                           capacity=source.stat().st_size).path())


def _upload(conn: libvirt.virConnect, pool: libvirt.virStoragePool, volume: str,
            source: Path, fmt: str, *, capacity: int, allocation: int | None = None
            ) -> libvirt.virStorageVol:
    """Create ``volume`` and fill it with the bytes of ``source``; a failed or interrupted
    upload deletes the volume again."""
    size = source.stat().st_size
    allocated = f"<allocation unit='B'>{allocation}</allocation>" if allocation else ""
    vol = pool.createXML(
        f"<volume><name>{escape(volume)}</name><capacity unit='B'>{capacity}</capacity>"
        f"{allocated}<target><format type='{fmt}'/></target></volume>", 0)
    stream: libvirt.virStream | None = None
    try:
        stream = conn.newStream(0)
        vol.upload(stream, 0, size, 0)
        with open(source, "rb") as f:
            stream.sendAll(lambda _s, n, fh: fh.read(n), f)
        stream.finish()
    except BaseException:
        if stream is not None:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
        with contextlib.suppress(libvirt.libvirtError):
            vol.delete(0)
        raise
    return vol


def _backed_upon(pool: libvirt.virStoragePool, path: str) -> list[str]:
    """Volumes of the pool whose backing file is ``path``."""
    users = []
    for other in pool.listAllVolumes():
        try:
            backing = ElementTree.fromstring(other.XMLDesc(0)).findtext("backingStore/path")
        except (libvirt.libvirtError, ElementTree.ParseError):
            continue
        if backing == path:
            users.append(other.name())
    return users


def _file_size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None  # not readable from here (another user's pool): the marker decides


def file_digest(path: Path) -> str:
    """sha256 of a file, cached beside it: images in the cache never change once published."""
    stat = path.stat()
    cache = path.with_name(f".{path.name}.sha256")
    stamp = f"{stat.st_size} {stat.st_mtime_ns}"
    with contextlib.suppress(OSError):
        cached_stamp, digest = cache.read_text().split("\n")[:2]
        if cached_stamp == stamp and len(digest) == 64:
            return digest
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    with contextlib.suppress(OSError):
        cache.write_text(f"{stamp}\n{h.hexdigest()}\n")
    return h.hexdigest()


def box_volume_name(box: str, registered_img: Path) -> str:
    """The pool volume vagrant-libvirt (0.11) looks for before uploading a box itself.

    Our boxes carry no version, so it names the volume after the box image's mtime. When the
    volume exists, Vagrant uses it as is: filling it here, under our lock and marker, is what
    keeps two labs booting at once, or a `vagrant up` killed mid-upload, from ever leaving a
    half-uploaded box for the next lab.
    """
    mtime = int(registered_img.stat().st_mtime)
    return f"{box.replace('/', '-VAGRANTSLASH-')}_vagrant_box_image_0_{mtime}_box.img"


def ensure_box_volume(box: str, registered_img: Path, virtual_size: int) -> str:
    if not registered_img.is_file():
        raise LabError(f"Vagrant box {box} has no image at {registered_img}",
                       "re-register it: `ganeti-lab images prune` then "
                       "`ganeti-lab images build`")
    return ensure_pool_volume(registered_img, box_volume_name(box, registered_img), "qcow2",
                              virtual_size)
