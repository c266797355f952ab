"""A lab described as data: machines, networks and the Ganeti cluster layouts they can form.

``load()`` validates everything before anything is created and reports every problem at once,
each with its location in the file and the fix.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
import tomllib
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.names import name_problem
from lab.paths import state_dir

# The lab's fixed address plan of each /24 (lab.spec turns it into addresses and names); the
# topology checks that a lab fits it.
DOMAIN = "lab"
FIRST_MACHINE_HOST = 10
FIRST_CLUSTER_HOST = 100
FIRST_INSTANCE_HOST = 150
INSTANCE_NAMES = 90  # inst1 .. inst90 resolve in the lab's DNS (Ganeti checks instance names)

ROLES = ("service", "hypervisor")
NETWORK_ROLES = ("management", "cluster")
# A DNS label of at most 31 characters, no '-' at the end and no "--" anywhere: libvirt objects
# are named glab-<lab>--<machine>, so "--" must never occur inside a name. \A..\Z (not ^..$)
# because `$` also matches before a trailing newline.
# LVM's own rule, minus a leading '-' (it would be read as an option); the name reaches a shell.
# The Ganeti series the hypervisor image carries (hypervisor.packages): the names of their
# /usr/lib/ganeti/<series> directories, which is also what `gnt-cluster upgrade --to` takes.
GANETI_VERSIONS = ("3.0", "3.1")
VG_NAME_RE = re.compile(r"\A[A-Za-z][A-Za-z0-9_+.-]{0,126}\Z")
MIN_MEMORY_MIB = {"service": 256, "hypervisor": 512}
# Ganeti's `gnt-cluster init --vg-name` wants a volume group of at least 20 GiB.
MIN_VG_DISK_GIB = 20
HOST_MEMORY_RESERVE_MIB = 1024
DISK_TEMPLATES = ("plain", "sharedfile", "file", "diskless", "drbd")
# Disk templates whose volumes live in the LVM volume group on each node's first extra disk.
VG_TEMPLATES = ("plain", "drbd")
HYPERVISORS = ("fake", "kvm")
MAX_CPUS = 16
MAX_MEMORY_MIB = 262144
MAX_DISK_GIB = 4096

# libvirt's cache modes for a machine's data disks. "unsafe" (the default) keeps guest writes in
# the host's page cache: fast, and a lab is disposable. "none" and "directsync" make every
# write reach the host's disk, for scenarios that measure real I/O pressure.
DISK_CACHE_MODES = ("unsafe", "writeback", "writethrough", "none", "directsync")
MACHINE_DEFAULTS: dict[str, dict[str, Any]] = {
    "service": {"cpus": 1, "memory": 768, "disks": [], "disk_cache": "unsafe"},
    "hypervisor": {"cpus": 1, "memory": 1536, "disks": [24], "disk_cache": "unsafe"},
}
MACHINE_SETTINGS = ("cpus", "memory", "disks", "disk_cache")
KEYS = {
    "": {"lab", "networks", "defaults", "machines", "layouts"},
    "lab": {"name", "default_layout", "description"},
    "network": {"role", "subnet"},
    "defaults": set(ROLES),
    "defaults.role": set(MACHINE_SETTINGS),
    "machine": {"role", *MACHINE_SETTINGS},
    "cluster": {"nodes", "disk_templates", "hypervisors", "vg_name", "version"},
}


class TopologyError(LabError):
    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid topology {source}: {len(problems)} problem(s)\n{lines}",
                         "correct the file; nothing was created")


@dataclass(frozen=True)
class Network:
    name: str
    role: str
    subnet: ipaddress.IPv4Network | None  # None: leased per lab at bring-up


@dataclass(frozen=True)
class MachineSpec:
    name: str
    role: str
    cpus: int
    memory_mib: int
    disks_gib: tuple[int, ...]
    index: int  # position in the file; fixes the machine's addresses
    disk_cache: str = "unsafe"  # libvirt cache mode of the data disks (DISK_CACHE_MODES)


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    nodes: tuple[str, ...]
    disk_templates: tuple[str, ...] = ("plain", "sharedfile", "file", "diskless")
    hypervisors: tuple[str, ...] = ("fake", "kvm")
    vg_name: str = "xenvg"
    index: int = 0  # position among all clusters of the topology; fixes the cluster IP
    version: str = "3.0"  # the Ganeti series the cluster is formed with (GANETI_VERSIONS)

    @property
    def master(self) -> str:
        return self.nodes[0]


@dataclass(frozen=True)
class Topology:
    name: str
    source: str
    machines: tuple[MachineSpec, ...]
    networks: tuple[Network, ...]
    layouts: dict[str, tuple[ClusterSpec, ...]] = field(hash=False)
    default_layout: str
    description: str = ""

    def machine(self, name: str) -> MachineSpec:
        for m in self.machines:
            if m.name == name:
                return m
        raise LabError(f"no machine {name!r} in topology {self.source}",
                       f"choose one of: {', '.join(m.name for m in self.machines)}")

    @property
    def service(self) -> MachineSpec:
        return next(m for m in self.machines if m.role == "service")

    @property
    def hypervisors(self) -> tuple[MachineSpec, ...]:
        return tuple(m for m in self.machines if m.role == "hypervisor")

    def network(self, role: str) -> Network:
        return next(n for n in self.networks if n.role == role)

    def layout(self, name: str | None = None) -> tuple[ClusterSpec, ...]:
        name = name or self.default_layout
        if name not in self.layouts:
            raise LabError(f"no layout {name!r} in topology {self.source}",
                           f"choose one of: {', '.join(self.layouts)}")
        return self.layouts[name]

    @property
    def memory_mib(self) -> int:
        return sum(m.memory_mib for m in self.machines)


# Names ---------------------------------------------------------------------------------------


def _reserved_name(name: str) -> str | None:
    """Why a machine or cluster may not take ``name``: the lab's DNS already gives it out."""
    if name == "localhost":
        return "'localhost' is reserved (the loopback address); choose another name"
    number = re.fullmatch(r"inst([1-9][0-9]*)", name)
    if number and int(number.group(1)) <= INSTANCE_NAMES:
        return (f"{name!r} is reserved: the lab's DNS gives inst1..inst{INSTANCE_NAMES} "
                "to Ganeti instances; choose another name")
    return None


# Built-in profiles ---------------------------------------------------------------------------


def profiles() -> dict[str, Path]:
    root = Path(str(resources.files("lab") / "profiles"))
    return {p.stem: p for p in sorted(root.glob("*.toml"))}


def resolve(spec: str | Path | None) -> Path:
    """A topology argument: a file path, a built-in profile name, or None for the default
    (``./lab.toml`` when present, else the built-in ``default`` profile)."""
    if spec is None:
        local = Path("lab.toml")
        return local if local.is_file() else profiles()["default"]
    path = Path(spec)
    if path.is_file():
        return path
    if str(spec) in profiles():
        return profiles()[str(spec)]
    if path.is_dir():
        raise LabError(f"topology {spec} is a directory, not a TOML file",
                       f"give the file itself, e.g. {path / 'lab.toml'}")
    if path.exists():
        raise LabError(f"topology {spec} is not a regular file", "give a TOML file")
    raise LabError(f"topology {spec} not found",
                   f"give a TOML file or a built-in profile: {', '.join(profiles())}")


def load(
    spec: str | Path | None = None,
    host_memory_mib: int | None = None,
    running_mib: int | None = None,
) -> Topology:
    path = resolve(spec)
    return parse(read_text(path), str(path), host_memory_mib, running_mib)


def read_text(path: Path) -> str:
    """The text of a topology file; an unreadable or binary file is a LabError, not a trace."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise LabError(f"topology {path} is a directory, not a TOML file",
                       f"give the file itself, e.g. {path / 'lab.toml'}") from None
    except OSError as exc:
        raise LabError(f"cannot read topology {path}: {exc.strerror or exc}",
                       "check the path and its permissions") from None
    if b"\0" in data:
        # NUL is valid UTF-8 but never part of a text file: this is an image, archive, ...
        offset = data.index(b"\0")
        raise TopologyError(str(path), [f"not UTF-8 text: binary data (a NUL byte at offset "
                                        f"{offset}); give a TOML text file"])
    try:
        # utf-8-sig: a byte order mark written by some editors is not a fault of the file.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise TopologyError(str(path), [
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line} (offset {exc.start}) "
            "cannot be decoded; save the file as UTF-8"]) from None


# The host ------------------------------------------------------------------------------------


def host_memory() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


def _lab_plans() -> Iterator[tuple[str, dict[str, Any]]]:
    """(lab name, plan) of every lab planned on this host; unreadable plans are skipped, since
    a half-written or corrupt file of another lab must not make this topology invalid."""
    try:
        files = sorted((state_dir() / "labs").glob("*/lab.json"))
    except OSError:
        return
    for path in files:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            yield path.parent.name, data


def memory_in_use_mib(exclude: Collection[str] = ()) -> int:
    """Memory (MiB) the machines of the labs on this host were given, except labs ``exclude``
    (e.g. the lab being re-attached, whose machines are already counted by its topology)."""
    total = 0
    for name, data in _lab_plans():
        machines = data.get("machines")
        if name in exclude or not isinstance(machines, list):
            continue
        for m in machines:
            mib = m.get("memory_mib") if isinstance(m, dict) else None
            if isinstance(mib, int) and not isinstance(mib, bool) and mib > 0:
                total += mib
    return total


def _routed_elsewhere() -> list[ipaddress.IPv4Network]:
    """Subnets this host routes that no lab of ours owns (a LAN, a VPN, docker, ...)."""
    from lab import leases  # lazily: only files with explicit subnets need the routes

    routes = leases._routes()
    if not routes:
        return []
    # A lab's own networks are routes too; whether another lab holds a subnet is the lease
    # book's business at `up` (it names that lab). Excluding them keeps a running lab's own
    # topology valid.
    ours: list[ipaddress.IPv4Network] = []
    for _, data in _lab_plans():
        for key in ("mgmt_subnet", "lab_subnet"):
            try:
                ours.append(ipaddress.IPv4Network(str(data.get(key))))
            except ValueError:
                continue
    return [r for r in routes if not any(r.subnet_of(o) for o in ours)]


# Parsing and validation ----------------------------------------------------------------------


def _k(key: str) -> str:
    """``key`` as TOML writes it in a dotted key: bare, or quoted when it has other characters
    (so a location stays on one line and says exactly what to look for in the file)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []
        # Machines with a reported fault: checks that build on them (cluster membership, the
        # volume group disk) stay quiet, so the user sees the one real fault.
        self.faulty: set[str] = set()

    def add(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def keys(self, where: str, table: Any, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(table, dict):
            self.add(where, f"must be a table (a [{where}] section), "
                            f"not {type(table).__name__}")
            return {}
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, sorted(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.add(f"{where}.{_k(key)}" if where else _k(key),
                         f"unknown key{hint}; allowed: {', '.join(sorted(allowed))}")
        return table

    def name(self, where: str, name: str, dns: bool = False) -> bool:
        """Check a name; ``dns``: it becomes a host name in the lab (machines, clusters)."""
        problem = name_problem(name) or (_reserved_name(name) if dns else None)
        if problem:
            self.add(where, problem)
        return problem is None

    def string(self, where: str, value: Any, example: str) -> str | None:
        if isinstance(value, str):
            return value
        self.add(where, f"must be a string, e.g. {example}, not {value!r}")
        return None

    def integer(self, where: str, value: Any, low: int, high: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(where, f"must be an integer, not {value!r}")
            return None
        if not low <= value <= high:
            self.add(where, f"{value} is out of range {low}..{high}")
            return None
        return value

    def choices(self, where: str, value: Any, allowed: tuple[str, ...]) -> tuple[str, ...] | None:
        """A non-empty list of distinct strings out of ``allowed``, or None (reported)."""
        example = ", ".join(f'"{a}"' for a in allowed[:2])
        if not isinstance(value, list):
            self.add(where, f"must be a list, e.g. [{example}], not {value!r}")
            return None
        if not value:
            self.add(where, f"must not be empty; choose from {', '.join(allowed)}")
            return None
        wrong = [v for v in value if not isinstance(v, str)]
        if wrong:
            self.add(where, f"must be a list of strings, e.g. [{example}], not {wrong[0]!r}")
            return None
        unknown = [v for v in value if v not in allowed]
        if unknown:
            self.add(where, f"unknown: {', '.join(map(repr, unknown))}; "
                            f"choose from {', '.join(allowed)}")
            return None
        twice = sorted({v for v in value if value.count(v) > 1})
        if twice:
            self.add(where, f"lists {', '.join(map(repr, twice))} more than once")
            return None
        return tuple(value)


def _address_plan() -> tuple[int, int]:
    """How many machines and clusters fit lab.spec's fixed address plan of a /24."""
    return (FIRST_CLUSTER_HOST - FIRST_MACHINE_HOST, FIRST_INSTANCE_HOST - FIRST_CLUSTER_HOST)


def parse(
    text: str,
    source: str = "<string>",
    host_memory_mib: int | None = None,
    running_mib: int | None = None,
) -> Topology:
    """Validate a topology; ``running_mib``: memory already given to labs running on the host
    (``memory_in_use_mib()``), which this lab cannot have."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(source, [f"TOML syntax: {exc}"]) from None
    c = _Checker()
    c.keys("", data, KEYS[""])

    lab = c.keys("lab", data.get("lab", {}), KEYS["lab"])
    lab_name = lab.get("name", "default")
    if c.string("lab.name", lab_name, '"mylab"') is not None:
        c.name("lab.name", lab_name)
    description = lab.get("description", "")
    c.string("lab.description", description, '"two racks of two"')

    networks = _networks(c, data.get("networks"))
    defaults = _defaults(c, data.get("defaults", {}))
    machines = _machines(c, data.get("machines"), defaults)
    # Without a machines table every node would be "not a machine": say it once, not per node.
    table = data.get("machines")
    known = {m.name: m for m in machines} if isinstance(table, dict) and table else None
    layouts = _layouts(c, data.get("layouts"), known)

    default_layout = lab.get("default_layout", next(iter(layouts), ""))
    if c.string("lab.default_layout", default_layout, '"one-cluster"') is None:
        default_layout = ""
    elif layouts and default_layout not in layouts:
        c.add("lab.default_layout",
              f"{default_layout!r} is not a layout; choose one of: {', '.join(layouts)}")

    names = [m.name for m in machines]
    for name in {n for n in names if names.count(n) > 1}:
        c.add(f"machines.{_k(name)}", "duplicate machine name")
    for layout, clusters in layouts.items():
        for cl in clusters:
            if cl.name in names:
                c.add(f"layouts.{_k(layout)}.{_k(cl.name)}",
                      "a cluster cannot have the name of a machine (DNS clash); rename it")

    limit = (host_memory_mib if host_memory_mib is not None else host_memory())
    running = running_mib or 0
    total = sum(m.memory_mib for m in machines)
    if machines and limit and total > limit - HOST_MEMORY_RESERVE_MIB - running:
        used = f", {running} MiB used by labs already running" if running else ""
        fix = ("lower `memory`, use fewer machines or destroy labs you no longer need"
               if running else "lower `memory` or use fewer machines")
        c.add("machines", f"the machines need {total} MiB of memory but this host has "
                          f"{limit} MiB ({HOST_MEMORY_RESERVE_MIB} MiB kept for the host{used}); "
                          f"{fix}")

    if c.problems:
        raise TopologyError(source, list(dict.fromkeys(c.problems)))
    return Topology(
        name=lab_name, source=source, machines=tuple(machines), networks=tuple(networks),
        layouts=layouts, default_layout=default_layout, description=description,
    )


def _subnet_problem(subnet: ipaddress.IPv4Network) -> str | None:
    private = "use a private range (inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16) or \"auto\""
    if subnet.is_loopback:
        return f"{subnet} is the loopback range; {private}"
    if subnet.is_link_local:
        return f"{subnet} is the link-local range; {private}"
    if (not subnet.is_private or subnet.is_multicast or subnet.is_reserved
            or subnet.is_unspecified or subnet.subnet_of(ipaddress.IPv4Network("0.0.0.0/8"))):
        return f"{subnet} is not a private range; {private}"
    if subnet.prefixlen > 24:
        return f"{subnet} is too small; the lab needs a /24 or larger"
    return None


def _networks(c: _Checker, table: Any) -> list[Network]:
    if table is None:
        c.add("networks", "missing; define one `management` and one `cluster` network")
        return []
    if not isinstance(table, dict):
        c.add("networks", f"must be a table of networks, e.g. [networks.mgmt], not {table!r}")
        return []
    result: list[Network] = []
    # A network whose role is unknown cannot be counted; the role count would only echo it.
    uncounted = False
    for name, spec in table.items():
        where = f"networks.{_k(name)}"
        c.name(where, name)
        if not isinstance(spec, dict):
            c.add(where, f"must be a table with `role` and `subnet`, not {spec!r}")
            uncounted = True
            continue
        c.keys(where, spec, KEYS["network"])
        role = spec.get("role")
        if role not in NETWORK_ROLES:
            c.add(f"{where}.role", f"{role!r} is not one of: {', '.join(NETWORK_ROLES)}")
            uncounted = True
            continue
        subnet_text = spec.get("subnet", "auto")
        subnet = None
        if c.string(f"{where}.subnet", subnet_text, '"10.201.3.0/24" or "auto"') is None:
            pass  # keep the network so its role is counted: one fault, one message
        elif subnet_text != "auto":
            try:
                subnet = ipaddress.IPv4Network(subnet_text)
            except ValueError as exc:
                c.add(f"{where}.subnet", f"{subnet_text!r} is not an IPv4 subnet ({exc}); "
                                         "write e.g. \"10.201.3.0/24\" or \"auto\"")
            if subnet is not None and (problem := _subnet_problem(subnet)):
                c.add(f"{where}.subnet", problem)
                subnet = None
        result.append(Network(name, role, subnet))
    if not uncounted:
        for role in NETWORK_ROLES:
            count = sum(n.role == role for n in result)
            if count != 1:
                c.add("networks", f"needs exactly one network with role {role!r}, found {count}")
    explicit = [n for n in result if n.subnet is not None]
    for i, a in enumerate(explicit):
        for b in explicit[i + 1:]:
            if a.subnet and b.subnet and a.subnet.overlaps(b.subnet):
                c.add(f"networks.{_k(b.name)}.subnet",
                      f"{b.subnet} overlaps networks.{_k(a.name)} ({a.subnet})")
    routes = _routed_elsewhere() if explicit else []
    for n in explicit:
        clash = [str(r) for r in routes if n.subnet and r.overlaps(n.subnet)]
        if clash:
            c.add(f"networks.{_k(n.name)}.subnet",
                  f"{n.subnet} overlaps {', '.join(clash)}, which this host already routes; "
                  "pick a free private subnet or \"auto\"")
    return result


def _machine_value(c: _Checker, where: str, key: str, value: Any, role: str) -> Any:
    """A checked machine setting (cpus, memory, disks, disk_cache), or None when it was
    reported."""
    if key == "disk_cache":
        if value not in DISK_CACHE_MODES:
            c.add(where, f"{value!r} is not a libvirt cache mode; choose one of: "
                         f"{', '.join(DISK_CACHE_MODES)}")
            return None
        return value
    if key == "cpus":
        return c.integer(where, value, 1, MAX_CPUS)
    if key == "memory":
        return c.integer(where, value, MIN_MEMORY_MIB.get(role, 256), MAX_MEMORY_MIB)
    if not isinstance(value, list):
        c.add(where, f"must be a list of sizes in GiB, e.g. [24], not {value!r}")
        return None
    sizes = [c.integer(f"{where}[{i}]", d, 1, MAX_DISK_GIB) for i, d in enumerate(value)]
    return None if None in sizes else sizes


def _defaults(c: _Checker, table: Any) -> dict[str, dict[str, Any]]:
    table = c.keys("defaults", table, KEYS["defaults"])
    merged = {role: dict(values) for role, values in MACHINE_DEFAULTS.items()}
    for role, values in table.items():
        if role not in merged:
            continue  # reported as an unknown key
        where = f"defaults.{role}"
        for key, value in c.keys(where, values, KEYS["defaults.role"]).items():
            # Checked here, where the fault is: a bad default is reported once, not once per
            # machine, and the machines fall back to the built-in value.
            if key in KEYS["defaults.role"] and _machine_value(
                    c, f"{where}.{key}", key, value, role) is not None:
                merged[role][key] = value
    return merged


def _machines(c: _Checker, table: Any, defaults: dict[str, dict[str, Any]]) -> list[MachineSpec]:
    if table is None or table == {}:
        c.add("machines", "missing or empty; a lab needs one service machine and hypervisors")
        return []
    if not isinstance(table, dict):
        c.add("machines", f"must be a table of machines, e.g. [machines.node1], not {table!r}")
        return []
    most, _ = _address_plan()
    if len(table) > most:
        c.add("machines", f"{len(table)} machines do not fit the lab's address plan (at most "
                          f"{most}: one host address each, below the cluster addresses); "
                          "use fewer machines")
    result = []
    for index, (name, spec) in enumerate(table.items()):
        where = f"machines.{_k(name)}"
        before = len(c.problems)
        c.name(where, name, dns=True)
        if not isinstance(spec, dict):
            c.add(where, "must be a table with `role` (and cpus, memory, disks, disk_cache), "
                         f"not {spec!r}")
            spec = {}
            role = "unknown"
        else:
            c.keys(where, spec, KEYS["machine"])
            role = spec.get("role")
            if role not in ROLES:
                c.add(f"{where}.role", f"{role!r} is not one of: {', '.join(ROLES)}")
                role = "unknown"
        values = {**defaults.get(role, MACHINE_DEFAULTS["hypervisor"]), **spec}
        checked = {key: _machine_value(c, f"{where}.{key}", key, values[key], role)
                   for key in MACHINE_SETTINGS}
        if len(c.problems) > before:
            c.faulty.add(name)
        # A machine with a bad value is kept (with placeholders) so that references to it
        # do not produce follow-on errors: the user sees the one real fault.
        result.append(MachineSpec(name, role, checked["cpus"] or 1,
                              checked["memory"] or MIN_MEMORY_MIB.get(role, 512),
                              tuple(checked["disks"] or ()), index,
                              checked["disk_cache"] or "unsafe"))
    services = [m.name for m in result if m.role == "service"]
    # A machine of unknown role may be the service meant: its role is reported already.
    if result and len(services) != 1 and all(m.role in ROLES for m in result):
        c.add("machines", f"needs exactly one machine with role 'service', found "
                          f"{len(services)} ({', '.join(services) or 'none'})")
    return result


def _layouts(
    c: _Checker, table: Any, machines: dict[str, MachineSpec] | None
) -> dict[str, tuple[ClusterSpec, ...]]:
    """The layouts; ``machines`` is None when the machines table itself is unusable."""
    if table is None or table == {}:
        c.add("layouts", "missing or empty; define at least one layout of Ganeti clusters")
        return {}
    if not isinstance(table, dict):
        c.add("layouts", f"must be a table of layouts, e.g. [layouts.main.cluster1], "
                         f"not {table!r}")
        return {}
    _, most = _address_plan()
    count = sum(len(cl) for cl in table.values() if isinstance(cl, dict))
    if count > most:
        c.add("layouts", f"{count} clusters in all layouts do not fit the lab's address plan "
                         f"(at most {most}: one cluster address each, below the instance "
                         "addresses); use fewer clusters")
    result: dict[str, tuple[ClusterSpec, ...]] = {}
    seen_clusters: dict[str, str] = {}
    first_vg: tuple[str, str] | None = None  # (vg_name, where it was set)
    index = 0
    for layout, clusters in table.items():
        where = f"layouts.{_k(layout)}"
        c.name(where, layout)
        if not isinstance(clusters, dict) or not clusters:
            c.add(where, "must hold at least one cluster table, e.g. [layouts.X.cluster1]")
            continue
        specs = []
        used: dict[str, str] = {}
        for cname, spec in clusters.items():
            cwhere = f"{where}.{_k(cname)}"
            c.name(cwhere, cname, dns=True)
            if not isinstance(spec, dict):
                c.add(cwhere, f"must be a cluster table, e.g. [{cwhere}] with "
                              f"nodes = [\"node1\"], not {spec!r}")
                continue
            c.keys(cwhere, spec, KEYS["cluster"])
            if cname in seen_clusters and seen_clusters[cname] != layout:
                c.add(cwhere, f"duplicate cluster name (also in layouts."
                              f"{_k(seen_clusters[cname])}); "
                              "cluster names are DNS names and must be unique")
            seen_clusters.setdefault(cname, layout)
            nodes = _nodes(c, f"{cwhere}.nodes", spec.get("nodes", []), machines, used, cname)
            if nodes is None:
                continue
            templates = c.choices(f"{cwhere}.disk_templates",
                                  spec.get("disk_templates", list(ClusterSpec.disk_templates)),
                                  DISK_TEMPLATES)
            hvs = c.choices(f"{cwhere}.hypervisors",
                            spec.get("hypervisors", list(ClusterSpec.hypervisors)), HYPERVISORS)
            vg_name = _vg_name(c, f"{cwhere}.vg_name", spec.get("vg_name", ClusterSpec.vg_name))
            if vg_name is not None:
                # settle makes every cluster's volume group on each hypervisor's one extra
                # disk: a second name would wipe the first group.
                if first_vg is None:
                    first_vg = (vg_name, cwhere)
                elif vg_name != first_vg[0]:
                    c.add(f"{cwhere}.vg_name",
                          f"{vg_name!r} differs from {first_vg[0]!r} of {first_vg[1]}; the lab "
                          "makes one volume group per hypervisor, so every cluster must use "
                          "the same vg_name")
            version = _version(c, f"{cwhere}.version", spec.get("version", ClusterSpec.version))
            if templates:
                _storage(c, cwhere, nodes, templates, machines or {})
            specs.append(ClusterSpec(cname, tuple(nodes), templates or ClusterSpec.disk_templates,
                                     hvs or ClusterSpec.hypervisors,
                                     vg_name or ClusterSpec.vg_name, index,
                                     version or ClusterSpec.version))
            index += 1
        result[layout] = tuple(specs)
    return result


def _nodes(
    c: _Checker, where: str, nodes: Any, machines: dict[str, MachineSpec] | None,
    used: dict[str, str], cluster: str,
) -> list[str] | None:
    """The cluster's node names, or None when the list itself is unusable (reported)."""
    if not isinstance(nodes, list):
        c.add(where, f"must be a list of machine names, e.g. [\"node1\"], not {nodes!r}")
        return None
    if not nodes:
        c.add(where, "a cluster needs at least one node")
        return None
    wrong = [n for n in nodes if not isinstance(n, str)]
    if wrong:
        c.add(where, f"must be a list of machine names (strings), e.g. [\"node1\"], "
                     f"not {wrong[0]!r}")
        return None
    for node in nodes:
        if machines is None:
            pass  # the machines table is reported; membership cannot be checked
        elif node not in machines:
            c.add(where, f"{node!r} is not a machine of this topology; "
                         f"choose from: {', '.join(machines)}")
        elif machines[node].role not in ROLES:
            pass  # its role is reported at the machine
        elif machines[node].role != "hypervisor":
            c.add(where, f"{node!r} is a {machines[node].role}, not a hypervisor")
        elif node in used:
            c.add(where, f"{node!r} is already a node of cluster {used[node]}")
        else:
            used[node] = cluster
    return nodes


def _version(c: _Checker, where: str, value: Any) -> str | None:
    if c.string(where, value, '"3.1"') is None:
        return None
    if value not in GANETI_VERSIONS:
        c.add(where, f"Ganeti {value!r} is not in the lab's images; choose one of: "
                     f"{', '.join(GANETI_VERSIONS)} (Debian ships 3.0.2 and 3.1.0~rc2)")
        return None
    return value


def _vg_name(c: _Checker, where: str, value: Any) -> str | None:
    if c.string(where, value, '"xenvg"') is None:
        return None
    if not VG_NAME_RE.match(value):
        c.add(where, f"{value!r} is not a safe LVM volume group name: a letter first, then "
                     "letters, digits, '_', '+', '.' or '-', at most 127 characters")
        return None
    return value


def _storage(
    c: _Checker, where: str, nodes: list[str], templates: tuple[str, ...],
    machines: dict[str, MachineSpec],
) -> None:
    """What the cluster's disk templates need from its nodes."""
    if "drbd" in templates and len(nodes) < 2:
        c.add(f"{where}.disk_templates", "`drbd` mirrors every disk on a second node; give "
                                         "the cluster at least two nodes or drop `drbd`")
    needs = [t for t in templates if t in VG_TEMPLATES]
    if not needs:
        return
    storage = " and ".join(f"`{t}`" for t in needs)
    for node in nodes:
        m = machines.get(node)
        if m and m.role == "hypervisor" and m.name not in c.faulty and (
            not m.disks_gib or m.disks_gib[0] < MIN_VG_DISK_GIB
        ):
            c.add(f"machines.{_k(node)}.disks",
                  f"{storage} storage needs a first extra disk of at least "
                  f"{MIN_VG_DISK_GIB} GiB for the volume group (sparse, costs "
                  "nothing until used)")
