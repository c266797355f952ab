"""A lab described as data: machines, networks and the Ganeti cluster layouts they can form.

``load()`` validates everything before anything is created and reports every problem at once,
each with its location in the file and the fix.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from lab.errors import LabError

ROLES = ("service", "hypervisor")
NETWORK_ROLES = ("management", "cluster")
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
MIN_MEMORY_MIB = {"service": 256, "hypervisor": 512}
# Ganeti's `gnt-cluster init --vg-name` wants a volume group of at least 20 GiB.
MIN_VG_DISK_GIB = 20
HOST_MEMORY_RESERVE_MIB = 1024
DISK_TEMPLATES = ("plain", "sharedfile", "file", "diskless", "drbd")
HYPERVISORS = ("fake", "kvm")

MACHINE_DEFAULTS: dict[str, dict[str, Any]] = {
    "service": {"cpus": 1, "memory": 768, "disks": []},
    "hypervisor": {"cpus": 1, "memory": 1536, "disks": [24]},
}
KEYS = {
    "": {"lab", "networks", "defaults", "machines", "layouts"},
    "lab": {"name", "default_layout", "description"},
    "network": {"role", "subnet"},
    "defaults": set(ROLES),
    "defaults.role": {"cpus", "memory", "disks"},
    "machine": {"role", "cpus", "memory", "disks"},
    "cluster": {"nodes", "disk_templates", "hypervisors", "vg_name"},
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
class Machine:
    name: str
    role: str
    cpus: int
    memory_mib: int
    disks_gib: tuple[int, ...]
    index: int  # position in the file; fixes the machine's addresses


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    nodes: tuple[str, ...]
    disk_templates: tuple[str, ...] = ("plain", "sharedfile", "file", "diskless")
    hypervisors: tuple[str, ...] = ("fake", "kvm")
    vg_name: str = "xenvg"
    index: int = 0  # position among all clusters of the topology; fixes the cluster IP

    @property
    def master(self) -> str:
        return self.nodes[0]


@dataclass(frozen=True)
class Topology:
    name: str
    source: str
    machines: tuple[Machine, ...]
    networks: tuple[Network, ...]
    layouts: dict[str, tuple[ClusterSpec, ...]] = field(hash=False)
    default_layout: str

    def machine(self, name: str) -> Machine:
        for m in self.machines:
            if m.name == name:
                return m
        raise LabError(f"no machine {name!r} in topology {self.source}",
                       f"choose one of: {', '.join(m.name for m in self.machines)}")

    @property
    def service(self) -> Machine:
        return next(m for m in self.machines if m.role == "service")

    @property
    def hypervisors(self) -> tuple[Machine, ...]:
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
    raise LabError(f"topology {spec} not found",
                   f"give a TOML file or a built-in profile: {', '.join(profiles())}")


def load(spec: str | Path | None = None, host_memory_mib: int | None = None) -> Topology:
    path = resolve(spec)
    return parse(path.read_text(), str(path), host_memory_mib)


# Parsing and validation ----------------------------------------------------------------------


def host_memory() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def keys(self, where: str, table: Any, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(table, dict):
            self.add(where, f"must be a table, not {type(table).__name__}")
            return {}
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, sorted(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.add(f"{where}.{key}" if where else key,
                         f"unknown key{hint}; allowed: {', '.join(sorted(allowed))}")
        return table

    def name(self, where: str, name: str) -> None:
        if not NAME_RE.match(name):
            self.add(where, f"name {name!r} must be a DNS label: lowercase letter first, then "
                            "lowercase letters, digits or '-', at most 31 characters")

    def integer(self, where: str, value: Any, low: int, high: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(where, f"must be an integer, not {value!r}")
            return None
        if not low <= value <= high:
            self.add(where, f"{value} is out of range {low}..{high}")
            return None
        return value


def parse(text: str, source: str = "<string>", host_memory_mib: int | None = None) -> Topology:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(source, [f"TOML syntax: {exc}"]) from None
    c = _Checker()
    c.keys("", data, KEYS[""])

    lab = c.keys("lab", data.get("lab", {}), KEYS["lab"])
    lab_name = lab.get("name", "default")
    if isinstance(lab_name, str):
        c.name("lab.name", lab_name)
    else:
        c.add("lab.name", "must be a string")

    networks = _networks(c, data.get("networks"))
    defaults = _defaults(c, data.get("defaults", {}))
    machines = _machines(c, data.get("machines"), defaults)
    layouts = _layouts(c, data.get("layouts"), {m.name: m for m in machines})

    default_layout = lab.get("default_layout", next(iter(layouts), ""))
    if layouts and default_layout not in layouts:
        c.add("lab.default_layout",
              f"{default_layout!r} is not a layout; choose one of: {', '.join(layouts)}")

    names = [m.name for m in machines]
    for name in {n for n in names if names.count(n) > 1}:
        c.add(f"machines.{name}", "duplicate machine name")
    clusters = [cl.name for cl in _all_clusters(layouts)]
    for clash in sorted(set(names) & set(clusters)):
        c.add(f"layouts.*.{clash}", "a cluster cannot have the name of a machine (DNS clash)")

    limit = (host_memory_mib if host_memory_mib is not None else host_memory())
    total = sum(m.memory_mib for m in machines)
    if machines and limit and total > limit - HOST_MEMORY_RESERVE_MIB:
        c.add("machines", f"the machines need {total} MiB of memory but this host has "
                          f"{limit} MiB ({HOST_MEMORY_RESERVE_MIB} MiB kept for the host); "
                          "lower `memory` or use fewer machines")

    if c.problems:
        raise TopologyError(source, list(dict.fromkeys(c.problems)))
    return Topology(
        name=lab_name, source=source, machines=tuple(machines), networks=tuple(networks),
        layouts=layouts, default_layout=default_layout,
    )


def _networks(c: _Checker, table: Any) -> list[Network]:
    if table is None:
        c.add("networks", "missing; define one `management` and one `cluster` network")
        return []
    table = c.keys("networks", table, set(table) if isinstance(table, dict) else set())
    result: list[Network] = []
    for name, spec in table.items():
        where = f"networks.{name}"
        c.name(where, name)
        spec = c.keys(where, spec, KEYS["network"])
        role = spec.get("role")
        if role not in NETWORK_ROLES:
            c.add(f"{where}.role", f"{role!r} is not one of: {', '.join(NETWORK_ROLES)}")
            continue
        subnet_text = spec.get("subnet", "auto")
        subnet = None
        if subnet_text != "auto":
            try:
                subnet = ipaddress.IPv4Network(str(subnet_text))
            except ValueError as exc:
                c.add(f"{where}.subnet", f"{subnet_text!r} is not an IPv4 subnet ({exc}); "
                                         "write e.g. \"10.201.3.0/24\" or \"auto\"")
                # keep the network so its role is counted: one fault, one message
                subnet = None
            if subnet is not None and subnet.prefixlen > 24:
                c.add(f"{where}.subnet", f"{subnet} is too small; the lab needs a /24 or larger")
        result.append(Network(name, role, subnet))
    for role in NETWORK_ROLES:
        count = sum(n.role == role for n in result)
        if count != 1:
            c.add("networks", f"needs exactly one network with role {role!r}, found {count}")
    explicit = [n for n in result if n.subnet is not None]
    for i, a in enumerate(explicit):
        for b in explicit[i + 1:]:
            if a.subnet and b.subnet and a.subnet.overlaps(b.subnet):
                c.add(f"networks.{b.name}.subnet",
                      f"{b.subnet} overlaps networks.{a.name} ({a.subnet})")
    return result


def _defaults(c: _Checker, table: Any) -> dict[str, dict[str, Any]]:
    table = c.keys("defaults", table, KEYS["defaults"])
    merged = {role: dict(values) for role, values in MACHINE_DEFAULTS.items()}
    for role, values in table.items():
        if role in merged:
            merged[role].update(c.keys(f"defaults.{role}", values, KEYS["defaults.role"]))
    return merged


def _machines(c: _Checker, table: Any, defaults: dict[str, dict[str, Any]]) -> list[Machine]:
    if not table:
        c.add("machines", "missing or empty; a lab needs one service machine and hypervisors")
        return []
    if not isinstance(table, dict):
        c.add("machines", "must be a table of machines")
        return []
    result = []
    for index, (name, spec) in enumerate(table.items()):
        where = f"machines.{name}"
        c.name(where, name)
        spec = c.keys(where, spec, KEYS["machine"])
        role = spec.get("role")
        if role not in ROLES:
            c.add(f"{where}.role", f"{role!r} is not one of: {', '.join(ROLES)}")
            role = "unknown"
        values = {**defaults.get(role, MACHINE_DEFAULTS["hypervisor"]), **spec}
        cpus = c.integer(f"{where}.cpus", values["cpus"], 1, 16)
        memory = c.integer(f"{where}.memory", values["memory"], MIN_MEMORY_MIB.get(role, 256),
                           262144)
        disks = values["disks"]
        if not isinstance(disks, list):
            c.add(f"{where}.disks", f"must be a list of sizes in GiB, not {disks!r}")
            disks = []
        sizes = [c.integer(f"{where}.disks[{i}]", d, 1, 4096) for i, d in enumerate(disks)]
        # A machine with a bad value is kept (with placeholders) so that references to it
        # do not produce follow-on errors: the user sees the one real fault.
        result.append(Machine(name, role, cpus or 1, memory or MIN_MEMORY_MIB.get(role, 512),
                              tuple(s for s in sizes if s), index))
    services = [m.name for m in result if m.role == "service"]
    if result and len(services) != 1:
        c.add("machines", f"needs exactly one machine with role 'service', found "
                          f"{len(services)} ({', '.join(services) or 'none'})")
    return result


def _layouts(
    c: _Checker, table: Any, machines: dict[str, Machine]
) -> dict[str, tuple[ClusterSpec, ...]]:
    if not table:
        c.add("layouts", "missing or empty; define at least one layout of Ganeti clusters")
        return {}
    if not isinstance(table, dict):
        c.add("layouts", "must be a table of layouts")
        return {}
    result: dict[str, tuple[ClusterSpec, ...]] = {}
    seen_clusters: dict[str, str] = {}
    index = 0
    for layout, clusters in table.items():
        where = f"layouts.{layout}"
        c.name(where, layout)
        if not isinstance(clusters, dict) or not clusters:
            c.add(where, "must hold at least one cluster table, e.g. [layouts.X.cluster1]")
            continue
        specs = []
        used: dict[str, str] = {}
        for cname, spec in clusters.items():
            cwhere = f"{where}.{cname}"
            c.name(cwhere, cname)
            spec = c.keys(cwhere, spec, KEYS["cluster"])
            if cname in seen_clusters and seen_clusters[cname] != layout:
                c.add(cwhere, f"duplicate cluster name (also in layouts.{seen_clusters[cname]}); "
                              "cluster names are DNS names and must be unique")
            seen_clusters.setdefault(cname, layout)
            nodes = spec.get("nodes", [])
            if not isinstance(nodes, list) or not nodes:
                c.add(f"{cwhere}.nodes", "a cluster needs at least one node")
                continue
            for node in nodes:
                if node not in machines:
                    c.add(f"{cwhere}.nodes", f"{node!r} is not a machine of this topology")
                elif machines[node].role != "hypervisor":
                    c.add(f"{cwhere}.nodes", f"{node!r} is a {machines[node].role}, "
                                             "not a hypervisor")
                elif node in used:
                    c.add(f"{cwhere}.nodes", f"{node!r} is already a node of cluster {used[node]}")
                else:
                    used[node] = cname
            templates = tuple(spec.get("disk_templates", ClusterSpec.disk_templates))
            bad = [t for t in templates if t not in DISK_TEMPLATES]
            if bad:
                c.add(f"{cwhere}.disk_templates", f"unknown: {', '.join(map(str, bad))}")
            hvs = tuple(spec.get("hypervisors", ClusterSpec.hypervisors))
            if [h for h in hvs if h not in HYPERVISORS]:
                c.add(f"{cwhere}.hypervisors", f"choose from {', '.join(HYPERVISORS)}")
            if "plain" in templates:
                for node in nodes:
                    m = machines.get(node)
                    if m and m.role == "hypervisor" and (
                        not m.disks_gib or m.disks_gib[0] < MIN_VG_DISK_GIB
                    ):
                        c.add(f"machines.{node}.disks",
                              f"`plain` storage needs a first extra disk of at least "
                              f"{MIN_VG_DISK_GIB} GiB for the volume group (sparse, costs "
                              "nothing until used)")
            specs.append(ClusterSpec(cname, tuple(nodes), templates, hvs,
                                     str(spec.get("vg_name", "xenvg")), index))
            index += 1
        result[layout] = tuple(specs)
    return result


def _all_clusters(layouts: dict[str, tuple[ClusterSpec, ...]]) -> list[ClusterSpec]:
    return [cl for specs in layouts.values() for cl in specs]
