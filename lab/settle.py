"""After boot, the lab's own services: every machine gets the lab's names, the service box its
DNS/DHCP for the lab domain (its NFS export and package repository come with its image).

Ganeti's node preparation (volume groups, the sharedfile mount, root SSH between nodes) is
lab/ganeti/nodes.py; lab/bringup.py runs both as the last step of a bring-up.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from lab.remote import Machine
from lab.spec import DOMAIN, FIRST_INSTANCE_HOST, INSTANCE_NAMES, hosts_file

if TYPE_CHECKING:
    from lab.lab import Lab

SHARED_EXPORT = "/srv/ganeti-shared"


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


def settle_lab(lab: Lab) -> None:
    """Names on every machine, DNS/DHCP on the service box, its services checked."""
    write_hosts(lab)
    _service(lab, lab.service)


def write_hosts(lab: Lab, machines: list[Machine] | None = None) -> None:
    """The lab's names in /etc/hosts of ``machines`` (default: every machine)."""
    hosts = hosts_file(lab.plan)
    lab.on_all(lambda m: m.write_file("/etc/hosts", hosts), machines)


def _service(lab: Lab, m: Machine) -> None:
    m.write_file("/etc/dnsmasq.d/lab.conf", dnsmasq_conf(lab))
    m.succeed("systemctl restart dnsmasq")
    m.wait_until_succeeds("systemctl is-active nfs-server lab-repo dnsmasq", timeout=120)
    m.succeed(f"exportfs -v | grep -q {SHARED_EXPORT}")
    m.wait_until_succeeds("curl -sf http://127.0.0.1/Packages >/dev/null", timeout=60)
