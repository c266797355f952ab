"""The guest agent's pieces that need no machine: which domains carry its channel, and the
clock correction it runs. The agent itself answers on a real lab in
tests/test_lab_lifecycle.py, and before every lab test's health check."""

from __future__ import annotations

import subprocess

from lab import agent


class Domain:
    def __init__(self, xml: str) -> None:
        self.xml = xml

    def XMLDesc(self, flags: int) -> str:
        return self.xml


def test_only_a_domain_with_the_agents_channel_has_one() -> None:
    with_channel = ("<domain><devices><channel type='unix'><target type='virtio' "
                    "name='org.qemu.guest_agent.0'/></channel></devices></domain>")
    other = ("<domain><devices><channel type='spicevmc'><target type='virtio' "
             "name='com.redhat.spice.0'/></channel></devices></domain>")
    assert agent.has_channel(Domain(with_channel))  # type: ignore[arg-type]
    assert not agent.has_channel(Domain(other))  # type: ignore[arg-type]
    assert not agent.has_channel(Domain("<domain><devices/></domain>"))  # type: ignore[arg-type]


def test_the_clock_correction_is_relative_to_the_guests_own_time() -> None:
    behind, ahead = agent.clock_command(-12.5), agent.clock_command(0.75)
    assert behind == ["/bin/date", "-s", "+12.500000 seconds"]
    assert ahead == ["/bin/date", "-s", "-0.750000 seconds"]
    # GNU date reads them as moves from now (checked here without setting the host's clock).
    for argv, expected in ((behind, 12.5), (ahead, -0.75)):
        moved = float(subprocess.run(["date", "-d", argv[2], "+%s.%N"], capture_output=True,
                                     text=True, check=True).stdout)
        now = float(subprocess.run(["date", "+%s.%N"], capture_output=True, text=True,
                                   check=True).stdout)
        assert abs(moved - now - expected) < 0.5
