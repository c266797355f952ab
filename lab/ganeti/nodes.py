"""Ganeti's node preparation on every hypervisor of a lab: root SSH between nodes (Ganeti's
node add and upgrade ssh to every node, itself included), the volume groups of the topology's
clusters on the machine's own second disk, the sharedfile NFS mount, the lab's package repo.

This and lab/settle.py make the state saved as the "booted" lab snapshot: machines ready, no
Ganeti cluster yet.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lab.remote import Machine
from lab.settle import SHARED_EXPORT

if TYPE_CHECKING:
    from lab.lab import Lab

SHARED_MOUNT = "/srv/ganeti/shared-file-storage"


def prepare_nodes(lab: Lab) -> None:
    known, access = _known_hosts(lab), _NodeAccess.of(lab)
    lab.on_all(lambda m: _prepare(lab, m, known, access), lab.hypervisors)


def prepare_node_again(lab: Lab, name: str) -> None:
    """Prepare one hypervisor again after its root disk was replaced: its storage and mount,
    root SSH to and from every other node (whose known_hosts get its new keys)."""
    known = _known_hosts(lab)
    lab.on_all(lambda other: other.write_file("/root/.ssh/known_hosts", known), lab.hypervisors)
    _prepare(lab, lab.machine(name), known, _NodeAccess.of(lab))


def _known_hosts(lab: Lab) -> str:
    keys = lab.on_all(lambda m: m.succeed("cat /etc/ssh/ssh_host_*_key.pub"), lab.hypervisors)
    lines = []
    for name, text in keys.items():
        plan = lab.plan.machine(name)
        for key in text.splitlines():
            kind, blob = key.split()[:2]
            lines.append(f"{plan.fqdn},{plan.name},{plan.lab_ip} {kind} {blob}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class _NodeAccess:
    """What every node gets alike, read once per lab: the nodes' root key and the volume
    groups of the topology's clusters."""
    key: str
    pub: str
    vgs: frozenset[str]

    @classmethod
    def of(cls, lab: Lab) -> _NodeAccess:
        return cls((lab.dir / "node_ed25519").read_text(),
                   (lab.dir / "node_ed25519.pub").read_text().strip(),
                   frozenset(c.vg_name for clusters in lab.plan.layouts.values()
                             for c in clusters))


def _prepare(lab: Lab, m: Machine, known: str, access: _NodeAccess) -> None:
    node_key, node_pub, vgs = access.key, access.pub, access.vgs
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
