"""After boot: give every machine the lab's names, the service box its DHCP/DNS, and every
hypervisor its volume group, its sharedfile mount, root SSH between nodes and the local repo.

This is the state saved as the "booted" lab snapshot: machines ready, no Ganeti cluster yet.
"""

from __future__ import annotations

import ipaddress
import shlex
from typing import TYPE_CHECKING

from lab.remote import Machine
from lab.spec import DOMAIN, FIRST_INSTANCE_HOST, INSTANCE_NAMES, hosts_file

if TYPE_CHECKING:
    from lab.machines import Lab

SHARED_EXPORT = "/srv/ganeti-shared"
SHARED_MOUNT = "/srv/ganeti/shared-file-storage"


def dnsmasq_conf(lab: Lab) -> str:
    net = ipaddress.IPv4Network(lab.plan.lab_subnet)
    first, last = net[FIRST_INSTANCE_HOST], net[FIRST_INSTANCE_HOST + INSTANCE_NAMES - 1]
    return "\n".join([
        "# written by ganeti-lab: DNS for the lab domain, DHCP/TFTP for instance NICs",
        "interface=eth1", "bind-interfaces", "no-resolv", "no-poll",
        f"domain={DOMAIN}", f"local=/{DOMAIN}/", "expand-hosts",
        f"dhcp-range={first},{last},{net.netmask},12h",
        "enable-tftp", "tftp-root=/srv/tftp", "",
    ])


def settle(lab: Lab) -> None:
    hosts = hosts_file(lab.plan)
    lab.on_all(lambda m: m.write_file("/etc/hosts", hosts))
    _service(lab, lab.service)
    known = _known_hosts(lab)
    node_key = (lab.dir / "node_ed25519").read_text()
    node_pub = (lab.dir / "node_ed25519.pub").read_text().strip()
    vgs = {c.vg_name for clusters in lab.plan.layouts.values() for c in clusters}
    lab.on_all(lambda m: _hypervisor(lab, m, known, node_key, node_pub, vgs), lab.hypervisors)


def _service(lab: Lab, m: Machine) -> None:
    m.write_file("/etc/dnsmasq.d/lab.conf", dnsmasq_conf(lab))
    m.succeed("systemctl restart dnsmasq")
    m.wait_until_succeeds("systemctl is-active nfs-server lab-repo dnsmasq", timeout=120)
    m.succeed(f"exportfs -v | grep -q {SHARED_EXPORT}")
    m.wait_until_succeeds("curl -sf http://127.0.0.1/Packages >/dev/null", timeout=60)


def _known_hosts(lab: Lab) -> str:
    keys = lab.on_all(lambda m: m.succeed("cat /etc/ssh/ssh_host_*_key.pub"), lab.hypervisors)
    lines = []
    for name, text in keys.items():
        plan = lab.plan.machine(name)
        for key in text.splitlines():
            kind, blob = key.split()[:2]
            lines.append(f"{plan.fqdn},{plan.name},{plan.lab_ip} {kind} {blob}")
    return "\n".join(lines) + "\n"


def _hypervisor(lab: Lab, m: Machine, known: str, node_key: str, node_pub: str,
                vgs: set[str]) -> None:
    # Root SSH between nodes: Ganeti's node add and upgrade ssh to every node, itself included.
    m.write_file("/root/.ssh/id_ed25519", node_key, 0o600)
    m.write_file("/root/.ssh/id_ed25519.pub", node_pub + "\n")
    m.write_file("/root/.ssh/known_hosts", known)
    m.succeed(f"grep -qF {shlex.quote(node_pub)} /root/.ssh/authorized_keys || "
              f"echo {shlex.quote(node_pub)} >> /root/.ssh/authorized_keys")
    # The volume group lives on this machine's own second disk, never in the image.
    for vg in sorted(vgs):
        q = shlex.quote(vg)
        m.succeed(f"vgs {q} >/dev/null 2>&1 || {{ pvcreate -ff -y /dev/vdb && "
                  f"vgcreate {q} /dev/vdb; }}")
    service = lab.plan.service.fqdn
    fstab = f"{service}:{SHARED_EXPORT} {SHARED_MOUNT} nfs defaults,_netdev 0 0"
    m.succeed(f"grep -q {SHARED_MOUNT} /etc/fstab || echo {shlex.quote(fstab)} >> /etc/fstab")
    m.wait_until_succeeds(f"mountpoint -q {SHARED_MOUNT} || mount {SHARED_MOUNT}", timeout=120)
    m.write_file("/etc/apt/sources.list.d/lab-repo.list",
                 f"deb [trusted=yes] http://{service}/ ./\n")




def resettle(lab: Lab, name: str) -> None:
    """Settle one hypervisor again after its root disk was replaced: its names, its storage
    and mount, root SSH to and from every other node (whose known_hosts get its new keys)."""
    m = lab.machine(name)
    m.write_file("/etc/hosts", hosts_file(lab.plan))
    known = _known_hosts(lab)
    lab.on_all(lambda other: other.write_file("/root/.ssh/known_hosts", known), lab.hypervisors)
    vgs = {c.vg_name for clusters in lab.plan.layouts.values() for c in clusters}
    _hypervisor(lab, m, known, (lab.dir / "node_ed25519").read_text(),
                (lab.dir / "node_ed25519.pub").read_text().strip(), vgs)
