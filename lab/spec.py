"""A lab's concrete plan: the topology plus its lease, turned into names, MACs and addresses.

Addresses are fixed by position, so they are known before anything boots (DHCP reservations on
the management network, static addresses on the cluster network, DNS entries for clusters and
instance names). The plan is written to ``<lab dir>/lab.json``; the Vagrantfile reads it too.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.paths import object_prefix
from lab.topology import (
    DOMAIN,
    FIRST_CLUSTER_HOST,
    FIRST_INSTANCE_HOST,
    FIRST_MACHINE_HOST,
    INSTANCE_NAMES,
    ClusterSpec,
    Topology,
)

__all__ = ["DOMAIN", "FIRST_CLUSTER_HOST", "FIRST_INSTANCE_HOST", "FIRST_MACHINE_HOST",
           "INSTANCE_NAMES"]
KERNEL_ARGS = "root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet"


@dataclass(frozen=True)
class MachinePlan:
    name: str
    role: str
    fqdn: str
    cpus: int
    memory_mib: int
    disks_gib: list[int]
    mgmt_ip: str
    mgmt_mac: str
    lab_ip: str
    lab_mac: str
    domain: str  # libvirt domain name
    box: str = ""
    kernel: str = ""
    initrd: str = ""
    cmdline: str = ""
    seed: str = ""  # pool volume with the machine's host keys (lab.hostkeys); "" in old plans
    disk_cache: str = "unsafe"  # libvirt cache mode of the data disks (lab.topology)


@dataclass(frozen=True)
class ClusterPlan:
    name: str
    fqdn: str
    ip: str
    nodes: list[str]
    master: str
    disk_templates: list[str]
    hypervisors: list[str]
    vg_name: str
    version: str = "3.0"  # plans written before clusters had versions are 3.0


@dataclass
class LabPlan:
    lab: str
    prefix: str
    topology: str
    mgmt_subnet: str
    lab_subnet: str
    mgmt_network: str
    lab_network: str
    mgmt_bridge: str
    lab_bridge: str
    key: str
    console_dir: str
    driver: str
    cpu_mode: str
    machines: list[MachinePlan]
    layouts: dict[str, list[ClusterPlan]]
    default_layout: str
    instance_names: dict[str, str]

    def machine(self, name: str) -> MachinePlan:
        for m in self.machines:
            if m.name == name:
                return m
        raise LabError(f"lab {self.lab} has no machine {name!r}",
                       f"choose one of: {', '.join(m.name for m in self.machines)}")

    @property
    def service(self) -> MachinePlan:
        return next(m for m in self.machines if m.role == "service")

    @property
    def hypervisors(self) -> list[MachinePlan]:
        return [m for m in self.machines if m.role == "hypervisor"]

    @property
    def host_lab_ip(self) -> str:
        return str(ipaddress.IPv4Network(self.lab_subnet)[1])

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> LabPlan:
        data: dict[str, Any] = json.loads(path.read_text())
        data["machines"] = [MachinePlan(**m) for m in data["machines"]]
        data["layouts"] = {k: [ClusterPlan(**c) for c in v] for k, v in data["layouts"].items()}
        return cls(**data)


def _mac(subnet: ipaddress.IPv4Network, net: int, index: int) -> str:
    # Locally administered, and unique on the host because the leased subnet is.
    o = subnet.network_address.packed
    return f"52:54:{o[1]:02x}:{o[2]:02x}:{net:02x}:{index:02x}"


def _bridge(subnet: ipaddress.IPv4Network, kind: str) -> str:
    o = subnet.network_address.packed
    return f"glb{o[1]}x{o[2]}{kind}"  # at most 15 characters, as Linux requires


def plan(
    topology: Topology,
    lab: str,
    subnets: dict[str, str],
    key: Path,
    console_dir: Path,
    driver: str,
    cpu_mode: str,
) -> LabPlan:
    mgmt_net = topology.network("management")
    lab_net = topology.network("cluster")
    mgmt = ipaddress.IPv4Network(subnets[mgmt_net.name])
    labnet = ipaddress.IPv4Network(subnets[lab_net.name])
    prefix = object_prefix(lab)
    machines = [
        MachinePlan(
            name=m.name, role=m.role, fqdn=f"{m.name}.{DOMAIN}", cpus=m.cpus,
            memory_mib=m.memory_mib, disks_gib=list(m.disks_gib), disk_cache=m.disk_cache,
            mgmt_ip=str(mgmt[FIRST_MACHINE_HOST + m.index]), mgmt_mac=_mac(mgmt, 0, m.index),
            lab_ip=str(labnet[FIRST_MACHINE_HOST + m.index]), lab_mac=_mac(mgmt, 1, m.index),
            domain=f"{prefix}{m.name}",
        )
        for m in topology.machines
    ]
    layouts = {
        layout: [_cluster(c, labnet) for c in clusters]
        for layout, clusters in topology.layouts.items()
    }
    instances = {f"inst{i + 1}": str(labnet[FIRST_INSTANCE_HOST + i])
                 for i in range(INSTANCE_NAMES)}
    return LabPlan(
        lab=lab, prefix=prefix, topology=topology.source,
        mgmt_subnet=str(mgmt), lab_subnet=str(labnet),
        mgmt_network=f"{prefix}mgmt", lab_network=f"{prefix}lab",
        mgmt_bridge=_bridge(mgmt, "m"), lab_bridge=_bridge(mgmt, "l"),
        key=str(key), console_dir=str(console_dir), driver=driver, cpu_mode=cpu_mode,
        machines=machines, layouts=layouts, default_layout=topology.default_layout,
        instance_names=instances,
    )


def _cluster(c: ClusterSpec, labnet: ipaddress.IPv4Network) -> ClusterPlan:
    return ClusterPlan(
        name=c.name, fqdn=f"{c.name}.{DOMAIN}", ip=str(labnet[FIRST_CLUSTER_HOST + c.index]),
        nodes=[f"{n}.{DOMAIN}" for n in c.nodes], master=f"{c.master}.{DOMAIN}",
        disk_templates=list(c.disk_templates), hypervisors=list(c.hypervisors),
        vg_name=c.vg_name, version=c.version,
    )


def kernel_cmdline(p: LabPlan, m: MachinePlan, public_key: str) -> str:
    """Per-machine identity for lab-firstboot (see the image recipe)."""
    prefix = ipaddress.IPv4Network(p.lab_subnet).prefixlen
    key_arg = ":".join(public_key.split()[:2]) + ":lab-login"
    args = [KERNEL_ARGS, f"lab.hostname={m.name}", f"lab.domain={DOMAIN}",
            f"lab.key={key_arg}", f"lab.ip={m.lab_ip}/{prefix}", f"lab.dns={p.service.lab_ip}"]
    if m.role == "hypervisor":
        args.append("lab.bridge=br0")
    return " ".join(args)


def hosts_file(p: LabPlan) -> str:
    """/etc/hosts for every machine: machines, every cluster of every layout, instance names."""
    lines = ["127.0.0.1 localhost"]
    lines += [f"{m.lab_ip} {m.fqdn} {m.name}" for m in p.machines]
    for clusters in p.layouts.values():
        lines += [f"{c.ip} {c.fqdn} {c.name}" for c in clusters]
    lines += [f"{ip} {name}.{DOMAIN} {name}" for name, ip in p.instance_names.items()]
    return "\n".join(lines) + "\n"
