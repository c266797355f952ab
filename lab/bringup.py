"""A lab brought up for Ganeti: machines booted to SSH (lab/lab.py), then settled as the
last step of the same bring-up, so a failure there still removes everything: the lab's names
and DNS (lab/settle.py) and Ganeti's node preparation (lab/ganeti/nodes.py)."""

from __future__ import annotations

from lab.ganeti.nodes import prepare_node_again, prepare_nodes
from lab.lab import Lab
from lab.progress import Steps
from lab.settle import settle_lab, write_hosts

SETTLE_STEP = "settle machines (hosts, DNS/DHCP, NFS, LVM, node keys)"


def bring_up(lab: Lab, steps: Steps | None = None) -> None:
    """Boot every machine, wait for SSH, settle: the lab as the "booted" snapshot keeps it."""
    lab.up(steps, then=(SETTLE_STEP, settle))


def settle(lab: Lab) -> None:
    settle_lab(lab)
    prepare_nodes(lab)


def settle_again(lab: Lab, name: str) -> None:
    """Settle one hypervisor whose root disk was replaced (lab/reimage.py)."""
    write_hosts(lab, [lab.machine(name)])
    prepare_node_again(lab, name)
