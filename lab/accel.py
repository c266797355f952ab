"""Choose the accelerator: KVM when it really runs a guest, else TCG (software emulation).

``/dev/kvm`` existing, or libvirt listing domain type ``kvm``, is not proof: on some hosts the
device opens but a guest hangs at the kernel hand-off. So the probe boots the lab's own kernel
under KVM for a few seconds and looks for its first console line.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

log = logging.getLogger("lab.accel")
PROBE_SECONDS = 15


@dataclass(frozen=True)
class Accelerator:
    name: str  # "kvm" or "tcg"
    reason: str

    @property
    def libvirt_domain_type(self) -> str:
        return "kvm" if self.name == "kvm" else "qemu"

    @property
    def cpu_mode(self) -> str:
        # TCG cannot pass the host CPU through; "custom" with qemu64 boots everywhere.
        return "host-passthrough" if self.name == "kvm" else "custom"


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _boots_under_kvm(kernel: Path) -> bool:
    """Boot ``kernel`` with KVM; True once it prints its banner on the serial console."""
    argv = ["qemu-system-x86_64", "-accel", "kvm", "-m", "256", "-nodefaults", "-nographic",
            "-no-reboot", "-serial", "stdio", "-kernel", str(kernel),
            "-append", "console=ttyS0 panic=-1 earlyprintk=serial"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_SECONDS,
                              check=False)
        out = proc.stdout
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
    except FileNotFoundError:
        return False
    return "Linux version" in out


@cache
def detect(probe_kernel: Path | None = None) -> Accelerator:
    forced = os.environ.get("GANETI_LAB_ACCEL", "").lower()
    if forced in ("kvm", "tcg"):
        return Accelerator(forced, f"forced by GANETI_LAB_ACCEL={forced}")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Accelerator("tcg", "/dev/kvm is missing or not accessible (libvirt/kvm group?)")
    if not _cpu_flags() & {"vmx", "svm"}:
        return Accelerator("tcg", "/dev/kvm exists but the CPU shows no vmx/svm flag")
    if probe_kernel is None or not probe_kernel.exists():
        return Accelerator("kvm", "/dev/kvm usable and CPU has vmx/svm (not boot-probed)")
    if _boots_under_kvm(probe_kernel):
        return Accelerator("kvm", "a probe kernel booted under KVM")
    return Accelerator("tcg", f"a probe kernel did not boot under KVM in {PROBE_SECONDS} s")
