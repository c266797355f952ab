"""The SSH side of a lab without a lab: interrupting waits, bounding remote commands, and
running on every machine with every failure reported. Only loopback is contacted."""

from __future__ import annotations

import shlex
import socket
import threading
import time
from pathlib import Path

import pytest

from lab.errors import LabError
from lab.lab import Lab
from lab.remote import REMOTE_KILL_GRACE, Cancelled, Machine, _bounded


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends


def test_an_interrupted_wait_for_ssh_ends_at_once(tmp_path: Path) -> None:
    m = Machine("node1", "127.0.0.1", tmp_path / "key", tmp_path / "known_hosts",
                port=_closed_port())
    threading.Timer(1.0, m.cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled, match="node1: interrupted while waiting for SSH"):
        m.wait_for_ssh(timeout=600)
    # Bounded by one refused connection and one second of waiting, not by the 600 s timeout.
    assert time.monotonic() - started < 30


def test_remote_commands_carry_their_own_deadline() -> None:
    command = "echo 'it''s' && sleep 1 | cat"
    bounded = _bounded(command, 30)
    assert bounded == (f"timeout --kill-after={REMOTE_KILL_GRACE} {30 + REMOTE_KILL_GRACE} "
                       f"bash -c {shlex.quote(command)}")
    assert shlex.split(bounded)[-1] == command  # the command reaches bash unchanged


def test_on_all_reports_every_failed_machine(planned_lab: Lab) -> None:
    def fail(m: Machine) -> None:
        raise LabError(f"{m.name} broke\nsecond line")

    with pytest.raises(LabError) as err:
        planned_lab.on_all(fail)
    text = str(err.value)
    assert "2 of 2 machines failed" in text
    assert "service: service broke" in text and "node1: node1 broke" in text


def test_on_all_raises_a_single_failure_as_it_is(planned_lab: Lab) -> None:
    class Boom(LabError):
        pass

    def one(m: Machine) -> str:
        if m.name == "node1":
            raise Boom("node1 broke")
        return m.name

    with pytest.raises(Boom):
        planned_lab.on_all(one)
    assert planned_lab.on_all(lambda m: m.name) == {"service": "service", "node1": "node1"}


def test_host_keys_replaced_from_many_threads_at_once_are_all_kept(tmp_path: Path) -> None:
    """Machines of one lab share its known_hosts; node adds replace keys from several threads
    (two clusters forming side by side): no thread writes back a copy missing another's."""
    import paramiko

    known = tmp_path / "known_hosts"
    machines = [Machine(f"node{i}", f"10.0.0.{i}", tmp_path / "key", known)
                for i in range(1, 41)]
    lines = {m.name: f"ssh-ed25519 {_ed25519_blob(i)}" for i, m in enumerate(machines)}
    start = threading.Barrier(len(machines))

    def replace(m: Machine) -> None:
        start.wait()
        for _ in range(5):
            m.replace_host_keys(lines[m.name])

    threads = [threading.Thread(target=replace, args=(m,)) for m in machines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    saved = paramiko.HostKeys(str(known))
    assert sorted(saved.keys()) == sorted(m.host for m in machines)
    for m in machines:
        assert saved[m.host]["ssh-ed25519"].get_base64() == lines[m.name].split()[1]


def _ed25519_blob(i: int) -> str:
    import base64
    import struct

    def field(data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + data

    return base64.b64encode(field(b"ssh-ed25519") + field(bytes([i]) * 32)).decode()


class _ExitFirstChannel:
    """A session as sshd may send it: the exit status as soon as the command ends, then the
    rest of its output, then EOF."""

    def __init__(self, parts: list[bytes], eof: bool = True) -> None:
        self.parts, self.send_eof, self.eof_received = list(parts), eof, False

    def exec_command(self, command: str) -> None:
        pass

    def shutdown_write(self) -> None:
        pass

    def settimeout(self, seconds: float) -> None:
        self.wait = seconds

    def recv_ready(self) -> bool:
        return False  # nothing has arrived before the exit status

    def recv_stderr_ready(self) -> bool:
        return False

    def exit_status_ready(self) -> bool:
        return True

    def recv(self, size: int) -> bytes:
        if self.parts:
            return self.parts.pop(0)
        if self.send_eof:
            self.eof_received = True
            return b""
        time.sleep(self.wait)
        raise TimeoutError

    def recv_exit_status(self) -> int:
        return 0

    def close(self) -> None:
        pass


def _machine_on(channel: _ExitFirstChannel, tmp_path: Path) -> Machine:
    m = Machine("node1", "127.0.0.1", tmp_path / "key", tmp_path / "known_hosts")
    transport = type("T", (), {"open_session": lambda self, timeout: channel})()
    client = type("C", (), {"get_transport": lambda self: transport})()
    m._connect = lambda timeout=10.0: client  # type: ignore[method-assign]
    return m


def test_output_sent_after_the_exit_status_is_kept_whole(tmp_path: Path) -> None:
    parts = [b"x" * 65536, b"y" * 30000, b"end\n"]
    m = _machine_on(_ExitFirstChannel(parts), tmp_path)
    assert m.succeed("cat a-big-file") == "x" * 65536 + "y" * 30000 + "end\n"


def test_output_held_open_by_a_background_process_ends_after_the_grace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lab import remote

    monkeypatch.setattr(remote, "OUTPUT_GRACE", 1.0)
    m = _machine_on(_ExitFirstChannel([b"started\n"], eof=False), tmp_path)
    began = time.monotonic()
    assert m.succeed("start-a-daemon") == "started\n"
    assert time.monotonic() - began < 5


def test_wait_for_ssh_builds_its_command_once_connected(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restore sets each guest's clock with the command it waits for: a timestamp taken
    before a slow handshake would leave the guest behind by the handshake's length."""
    m = Machine("node1", "127.0.0.1", tmp_path / "key", tmp_path / "known_hosts")
    events: list[str] = []
    monkeypatch.setattr(m, "_connect", lambda timeout=10.0: events.append("connected"))

    class Ran:
        ok = True

    def run(command: str, **kw: object) -> Ran:
        events.append(command)
        return Ran()

    monkeypatch.setattr(m, "run", run)

    def build() -> str:
        events.append("built")
        return "date"

    m.wait_for_ssh(timeout=5, command=build)
    assert events == ["connected", "built", "date"]
