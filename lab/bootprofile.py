"""Where a machine's boot went: read from the guest once the lab first reaches it.

A cold start is `vagrant up` (volumes from the box, domain definitions, QEMU started) and then
each guest's own boot, which Vagrant waits out over SSH. Neither says how long each part
took, so once every machine answers, the lab asks each guest how long ago its kernel started
(``/proc/uptime``) and when, after that, sshd and ``multi-user.target`` started (systemd's
monotonic timestamps). With the seconds since the boot step began, that splits each machine's
start into:

- ``kernel_after_s``: until its kernel started (Vagrant's work before QEMU ran the kernel);
- ``sshd_after_s``: the guest's boot until sshd started (kernel, initramfs, systemd units);
- ``reached_after_s``: until the lab reached it (Vagrant's own SSH wait and the lab's);
- ``multi_user_after_s``: the guest's boot until ``multi-user.target`` (None if not yet).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lab.lab import Lab
    from lab.remote import Machine
    from lab.timings import Phase, Timings

log = logging.getLogger("lab.bootprofile")

# Three lines: uptime (s), sshd's start and multi-user's (µs after the kernel's start; 0 when
# not reached yet).
FACTS_COMMAND = ("cut -d' ' -f1 /proc/uptime; "
                 "systemctl show -p ExecMainStartTimestampMonotonic --value ssh.service; "
                 "systemctl show -p ActiveEnterTimestampMonotonic --value multi-user.target")


@dataclass(frozen=True)
class BootProfile:
    machine: str
    kernel_after_s: float
    sshd_after_s: float | None
    multi_user_after_s: float | None
    reached_after_s: float

    def metrics(self) -> dict[str, float]:
        """The figures as phase metrics; a unit not started yet has none."""
        return {f"{self.machine}.{key}": round(value, 1)
                for key, value in (("kernel_after_s", self.kernel_after_s),
                                   ("sshd_after_s", self.sshd_after_s),
                                   ("multi_user_after_s", self.multi_user_after_s),
                                   ("reached_after_s", self.reached_after_s))
                if value is not None}

    def line(self) -> str:
        sshd = "not started" if self.sshd_after_s is None else f"+{self.sshd_after_s:.0f} s"
        return (f"{self.machine}: kernel at {self.kernel_after_s:.0f} s, sshd {sshd} after "
                f"it, reached at {self.reached_after_s:.0f} s")


def parse(machine: str, facts: str, since_boot_began: float) -> BootProfile:
    """The profile from FACTS_COMMAND's output, read ``since_boot_began`` seconds after the
    boot step began."""
    lines = facts.split()
    try:
        if len(lines) != 3:
            raise ValueError("not three lines")
        uptime = float(lines[0])
        sshd, multi_user = (int(v) / 1e6 if int(v) > 0 else None for v in lines[1:])
    except ValueError:
        raise ValueError(f"{machine}: expected uptime and two timestamps, got {facts!r}"
                         ) from None
    return BootProfile(machine=machine, kernel_after_s=max(0.0, since_boot_began - uptime),
                       sshd_after_s=sshd, multi_user_after_s=multi_user,
                       reached_after_s=since_boot_began)


def read(m: Machine, boot_began: float) -> BootProfile | None:
    """``m``'s profile; ``boot_began`` is the ``time.monotonic()`` at which the boot step
    began. (The command's own round trip, under a second, counts as the kernel's.) Only a
    measurement: a machine that cannot say is logged and left out, the bring-up goes on."""
    since = time.monotonic() - boot_began
    try:
        return parse(m.name, m.succeed(FACTS_COMMAND, timeout=60), since)
    except Exception as exc:
        log.warning("%s: no boot profile: %s", m.name,
                    (str(exc).splitlines() or [type(exc).__name__])[0])
        return None


def record(profiles: list[BootProfile | None], phase: Phase | None, lab_name: str) -> None:
    """Log one line for the lab and attach every figure to ``phase``."""
    profiles = [p for p in profiles if p is not None]
    if not profiles:
        return
    log.info("lab %s: where the boot went: %s", lab_name,
             "; ".join(p.line() for p in profiles))
    if phase is None:
        return
    for p in profiles:
        for key, value in p.metrics().items():
            phase.metric(key, value)


def take(lab: Lab, boot_began: float, timings: Timings | None) -> None:
    """Read every machine's profile at once and record it on the calling context's phase
    (the bring-up's "SSH on every machine" step)."""
    profiles = lab.on_all(lambda m: read(m, boot_began))
    record(list(profiles.values()), timings.current() if timings is not None else None,
           lab.name)
