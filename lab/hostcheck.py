"""Can this host run a lab at all? One clear reason when it cannot."""

from __future__ import annotations

import os
import shutil

from lab import virt
from lab.errors import LabError


def virtualization_problem() -> str | None:
    """None when qemu, Vagrant with vagrant-libvirt, and a libvirt daemon are usable."""
    for tool, package in (("qemu-system-x86_64", "qemu-system-x86"), ("vagrant", "vagrant"),
                          ("virsh", "libvirt-clients")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (package {package}; see scripts/host-setup)"
    try:
        with virt.connect() as conn:
            conn.getVersion()
    except LabError as exc:
        return str(exc).splitlines()[0]
    if not os.path.exists("/dev/kvm") and shutil.which("qemu-system-x86_64") is None:
        return "neither KVM nor qemu's TCG is available"
    return None
