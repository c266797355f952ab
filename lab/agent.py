"""The QEMU guest agent: what the host asks a running machine without an SSH handshake.

Right after a snapshot restore, the first SSH connection to a machine costs 3-6 s under TCG
(measured on the default lab: every code path of sshd and its crypto is translated afresh,
five machines on two host cores), against 0.5 s on a warm machine. The agent already runs in
every guest and answers over a virtio-serial channel each lab domain carries, so a restore sets
the clocks and the health check looks at the nodes through it; SSH connects when a test first
needs it.

libvirt's own calls cover the clock (``getTime``). Running a program and reading a file go
through libvirt-qemu's agent passthrough, for which libvirt notes "tainted: custom-ga-command"
in the domain's log: expected, and harmless.
"""

from __future__ import annotations

import base64
import json
import logging
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from xml.etree import ElementTree

import libvirt
import libvirt_qemu

from lab import virt
from lab.errors import HarnessError, LabError
from lab.remote import Result
from lab.spec import LabPlan
from lab.waiting import WaitTimeout, wait_for

log = logging.getLogger("lab.agent")

CHANNEL = "org.qemu.guest_agent.0"  # the name qemu-guest-agent's udev rule starts it for
CLOCK_TOLERANCE = 0.25  # seconds a set clock may be off the host's (agent round trips)
_READ_CHUNK = 1 << 16


class AgentUnavailable(HarnessError):
    """The machine's guest agent did not answer, or the domain has no agent channel."""


def has_channel(dom: libvirt.virDomain) -> bool:
    """Whether the domain carries the agent's channel (labs defined before it did not)."""
    root = ElementTree.fromstring(dom.XMLDesc(0))
    return any(target.get("name") == CHANNEL
               for target in root.findall("./devices/channel/target"))


def clock_command(skew: float) -> list[str]:
    """The guest's clock moved by ``-skew`` seconds, relative to its own time when the program
    runs: however long the program takes to start, the correction stays exact."""
    return ["/bin/date", "-s", f"{-skew:+.6f} seconds"]


class GuestAgent:
    def __init__(self, dom: libvirt.virDomain, machine: str) -> None:
        self.dom, self.machine = dom, machine

    def _call(self, execute: str, timeout: int = 30, **arguments: Any) -> Any:
        payload = {"execute": execute, **({"arguments": arguments} if arguments else {})}
        try:
            reply = libvirt_qemu.qemuAgentCommand(self.dom, json.dumps(payload), timeout, 0)
        except libvirt.libvirtError as exc:
            raise AgentUnavailable(f"{self.machine}: guest agent {execute}: {exc}",
                                   f"`ganeti-lab ssh {self.machine} -- systemctl status "
                                   "qemu-guest-agent`") from None
        return json.loads(reply)["return"]

    def wait(self, timeout: float) -> float:
        """Until the agent answers (after a restore libvirt may see its channel reconnect
        first); returns the seconds waited."""
        started = time.monotonic()
        try:
            wait_for(f"the guest agent of {self.machine}", lambda: self._call("guest-ping", 5)
                     is not None, timeout=timeout, interval=0.5, first_pause=0.05,
                     retry_on=(AgentUnavailable,), announce=False)
        except WaitTimeout as exc:
            raise AgentUnavailable(f"{self.machine}: the guest agent did not answer within "
                                   f"{timeout:.0f} s ({exc.last})",
                                   "the image's qemu-guest-agent starts when its channel "
                                   "appears: rebuild the images if it is missing") from None
        return time.monotonic() - started

    def clock_skew(self) -> float:
        """The guest's clock minus the host's, in seconds (no program runs in the guest)."""
        before = time.time()
        try:
            guest = self.dom.getTime()
        except libvirt.libvirtError as exc:
            raise AgentUnavailable(f"{self.machine}: reading the clock through the guest "
                                   f"agent: {exc}") from None
        after = time.time()
        return guest["seconds"] + guest["nseconds"] / 1e9 - (before + after) / 2

    def set_clock(self, tries: int = 3) -> float:
        """Bring the guest's clock within ``CLOCK_TOLERANCE`` of the host's; returns the skew
        left."""
        skew = self.clock_skew()
        for _ in range(tries):
            if abs(skew) <= CLOCK_TOLERANCE:
                return skew
            ran = self.run(clock_command(skew))
            if not ran.ok:
                raise AgentUnavailable(f"{self.machine}: setting the clock failed: "
                                       f"{ran.stderr.strip()}")
            skew = self.clock_skew()
        if abs(skew) > CLOCK_TOLERANCE:
            raise AgentUnavailable(f"{self.machine}: clock still {skew:+.2f} s off the host's "
                                   f"after {tries} corrections")
        return skew

    def run(self, argv: list[str], timeout: float = 60.0) -> Result:
        """Run a program (no shell unless ``argv`` names one) and wait for it: the same
        result as a command over SSH."""
        started = time.monotonic()
        pid = self._call("guest-exec", path=argv[0], arg=argv[1:],
                         **{"capture-output": True})["pid"]
        deadline = started + timeout
        pause = 0.02
        while True:
            status = self._call("guest-exec-status", pid=pid)
            if status.get("exited"):
                return Result(self.machine, shlex.join(argv), status.get("exitcode", -1),
                              _decoded(status, "out-data"), _decoded(status, "err-data"),
                              time.monotonic() - started)
            if time.monotonic() > deadline:
                raise AgentUnavailable(f"{self.machine}: `{' '.join(argv)}` through the guest "
                                       f"agent did not end within {timeout:.0f} s")
            time.sleep(pause)
            pause = min(pause * 2, 0.5)

    def read(self, path: str) -> bytes | None:
        """A file's content, or None when it does not exist (nothing runs in the guest but
        the agent)."""
        try:
            handle = self._call("guest-file-open", path=path, mode="r")
        except AgentUnavailable as exc:
            if "No such file" in str(exc):
                return None
            raise
        data = b""
        try:
            while True:
                chunk = self._call("guest-file-read", handle=handle, count=_READ_CHUNK)
                data += base64.b64decode(chunk.get("buf-b64", ""))
                if chunk.get("eof") or not chunk.get("count"):
                    return data
        finally:
            self._call("guest-file-close", handle=handle)


def _decoded(status: dict[str, Any], key: str) -> str:
    return base64.b64decode(status.get(key, "")).decode(errors="replace")


@contextmanager
def agents(plan: LabPlan, names: list[str] | None = None) -> Iterator[dict[str, GuestAgent | None]]:
    """The guest agent of each machine (all, or ``names``) for the block's length; None for a
    domain without the agent's channel."""
    with virt.connect() as conn:
        found: dict[str, GuestAgent | None] = {}
        for m in plan.machines:
            if names is not None and m.name not in names:
                continue
            try:
                dom = conn.lookupByName(m.domain)
            except libvirt.libvirtError as exc:
                raise LabError(f"lab {plan.lab}: machine {m.name} is not defined in libvirt: "
                               f"{exc}", "bring the lab up again, or destroy it") from None
            found[m.name] = GuestAgent(dom, m.name) if has_channel(dom) else None
        yield found
