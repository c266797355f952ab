"""libvirt, used directly for what Vagrant does poorly: networks with fixed addresses, domain
state, every object of a lab found by name (for destroy and orphan hunting), and snapshots."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

import libvirt
import psutil

from lab.errors import LabError
from lab.paths import PREFIX
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

    def empty(self) -> bool:
        return not (self.domains or self.networks or self.volumes)

    def __str__(self) -> str:
        parts = [f"{kind}: {', '.join(names)}" for kind, names in
                 (("domains", self.domains), ("networks", self.networks),
                  ("volumes", self.volumes)) if names]
        return "; ".join(parts) or "nothing"


def find(prefix: str = PREFIX) -> LabObjects:
    """Every libvirt object whose name starts with ``prefix`` (all labs by default)."""
    found = LabObjects()
    with connect() as conn:
        found.domains = sorted(d.name() for d in conn.listAllDomains()
                               if d.name().startswith(prefix))
        found.networks = sorted(n.name() for n in conn.listAllNetworks()
                                if n.name().startswith(prefix))
        for pool in conn.listAllStoragePools():
            if not pool.isActive():
                continue
            pool.refresh(0)
            found.volumes += sorted(f"{pool.name()}/{v}" for v in pool.listVolumes()
                                    if v.startswith(prefix))
    return found


def remove(prefix: str) -> LabObjects:
    """Force off and remove every domain, network and volume named ``prefix*``."""
    if not prefix.startswith(PREFIX):
        raise ValueError(f"refusing to remove objects outside the lab namespace: {prefix}")
    return _remove(find(prefix))


def remove_exact(name: str) -> LabObjects:
    """Remove the domain, network or volume called exactly ``name`` (orphan clean-up)."""
    if not name.startswith(PREFIX):
        raise ValueError(f"refusing to remove an object outside the lab namespace: {name}")
    found = find(name)
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


def domain_xml(name: str) -> str:
    with connect() as conn:
        return conn.lookupByName(name).XMLDesc(0)


def network_xml_of(name: str) -> str:
    with connect() as conn:
        return conn.networkLookupByName(name).XMLDesc(0)


# Boot files -----------------------------------------------------------------------------------


def ensure_boot_file(path: str, volume: str) -> str:
    """Upload a kernel or initrd into the 'default' pool (once) and return its pool path.

    qemu runs as an unprivileged user that cannot read the image cache in a home directory;
    pool volumes are readable by it, and uploading works for members of the libvirt group.
    """
    from pathlib import Path

    size = Path(path).stat().st_size
    with connect() as conn:
        pool = conn.storagePoolLookupByName("default")
        pool.refresh(0)
        try:
            vol = pool.storageVolLookupByName(volume)
            if vol.info()[1] == size:
                return str(vol.path())
            vol.delete(0)
        except libvirt.libvirtError:
            pass
        vol = pool.createXML(
            f"<volume><name>{volume}</name><capacity unit='B'>{size}</capacity>"
            "<target><format type='raw'/></target></volume>", 0)
        stream = conn.newStream(0)
        vol.upload(stream, 0, size, 0)
        with open(path, "rb") as f:
            stream.sendAll(lambda _s, n, fh: fh.read(n), f)
        stream.finish()
        return str(vol.path())
