"""Commands and files on lab machines over SSH (paramiko), with verbs that read like prose.

``succeed`` returns output or raises with the machine, the command and the output tail;
``wait_until_succeeds`` polls without fixed sleeps and, on timeout, says what it last saw.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko

from lab.errors import CommandFailed, HarnessError
from lab.shell import tail
from lab.waiting import WaitTimeout, wait_for

log = logging.getLogger("lab.remote")


@dataclass(frozen=True)
class Result:
    machine: str
    command: str
    exit_status: int | None  # None: timed out
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


class Unreachable(HarnessError):
    pass


class HostKeyChanged(HarnessError):
    """A machine's SSH host key is not the one the lab recorded for it."""


class Cancelled(HarnessError):
    """The run was interrupted while this machine was being waited on."""


# One lab's machines share its known_hosts file, and machines are handled from several threads
# at once (node adds of two clusters, machines of one lab): every change is a read, modify and
# write of the whole file under this lock, so no thread writes back a copy missing another's.
_KNOWN_HOSTS_LOCK = threading.Lock()


def _update_known_hosts(path: Path, host: str, keys: list[paramiko.PKey], *,
                        replace: bool) -> None:
    with _KNOWN_HOSTS_LOCK:
        known = paramiko.HostKeys()
        if path.exists():
            known.load(str(path))
        if replace:
            known.pop(host, None)
        for key in keys:
            known.add(host, key.get_name(), key)
        known.save(str(path))


class _RememberNewHost(paramiko.MissingHostKeyPolicy):
    """Trust on first use, per lab, for a machine whose host keys the lab did not make (a
    plan written before lab.hostkeys, another Vagrantfile's box): the first contact records
    them in the lab's known_hosts; a changed key is then refused. Keys the lab made are in
    known_hosts before the machine first boots, so this never applies to them."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        with contextlib.suppress(OSError):
            _update_known_hosts(self.path, hostname, [key], replace=False)


# How long after our own deadline the machine kills a command that is still running.
REMOTE_KILL_GRACE = 5


def _short(command: str, limit: int = 160) -> str:
    """A command as the live log shows it: one line, at most ``limit`` characters."""
    line = " ".join(command.split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


# Seconds to wait for the rest of a command's output after its exit was reported.
OUTPUT_GRACE = 5.0


def _bounded(command: str, timeout: float) -> str:
    """``command`` under coreutils' timeout on the machine: when we stop waiting for it, the
    machine ends it (its whole process group) a few seconds later instead of leaving it
    running behind a closed channel."""
    limit = int(timeout) + REMOTE_KILL_GRACE
    return (f"timeout --kill-after={REMOTE_KILL_GRACE} {limit} "
            f"bash -c {shlex.quote(command)}")


class Machine:
    def __init__(self, name: str, host: str, key_file: Path, known_hosts: Path,
                 user: str = "root", port: int = 22,
                 cancel: threading.Event | None = None) -> None:
        self.name, self.host, self.user, self.port = name, host, user, port
        self.key_file, self.known_hosts = key_file, known_hosts
        # Set when the run is interrupted: every wait here gives up within a second or two, so
        # Ctrl-C ends the process promptly instead of when worker threads time out.
        self.cancel = cancel or threading.Event()
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Machine({self.name}@{self.host})"

    # Connection ---------------------------------------------------------------------------

    def _connect(self, timeout: float = 10.0) -> paramiko.SSHClient:
        with self._lock:
            if self._client is not None:
                transport = self._client.get_transport()
                if transport is not None and transport.is_active():
                    return self._client
                self._client.close()
            client = paramiko.SSHClient()
            self.known_hosts.touch(exist_ok=True)
            client.load_host_keys(str(self.known_hosts))
            client.set_missing_host_key_policy(_RememberNewHost(self.known_hosts))
            try:
                client.connect(self.host, port=self.port, username=self.user,
                               key_filename=str(self.key_file), timeout=timeout,
                               banner_timeout=timeout, auth_timeout=timeout,
                               allow_agent=False, look_for_keys=False)
            except paramiko.BadHostKeyException as exc:
                client.close()
                raise HostKeyChanged(
                    f"{self.name} ({self.host}) answered with a different host key than the lab "
                    f"recorded (got {exc.key.get_name()} {exc.key.get_fingerprint().hex()}); "
                    "refusing to connect",
                    f"if {self.name} was re-imaged or rebuilt on purpose, restore a lab snapshot "
                    f"or destroy and bring the lab up again; otherwise something else answers at "
                    f"{self.host}: check `ganeti-lab status`") from None
            except (OSError, paramiko.SSHException, EOFError) as exc:
                client.close()
                raise Unreachable(
                    f"{self.name} ({self.user}@{self.host}:{self.port}) is unreachable: {exc}",
                    f"check `ganeti-lab status` and the console log of {self.name}",
                ) from None
            transport = client.get_transport()
            if transport is not None:
                transport.set_keepalive(15)
            self._client = client
            return client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def replace_host_keys(self, public_keys: str) -> None:
        """Trust these host keys (``TYPE BASE64`` lines) for this machine from now on.

        For keys the machine legitimately changed (Ganeti's node add makes new ones), read
        through another authenticated channel; never for a key that merely failed to match.
        """
        self.close()
        keys = []
        for line in public_keys.splitlines():
            parts = line.split()
            if len(parts) >= 2:
                entry = paramiko.hostkeys.HostKeyEntry.from_line(f"{self.host} {parts[0]} "
                                                                 f"{parts[1]}")
                if entry is not None and entry.key is not None:
                    keys.append(entry.key)
        _update_known_hosts(self.known_hosts, self.host, keys, replace=True)
        log.info("%s: host keys replaced (%d)", self.name, len(public_keys.splitlines()))

    def wait_for_ssh(self, timeout: float = 600.0,
                     command: Callable[[], str] = lambda: "true") -> float:
        """Block until a command runs (``command()``, built anew for each try once the
        connection stands: the first thing a caller wants done may as well be the proof);
        returns the seconds waited."""
        started = time.monotonic()

        def answers() -> bool:
            self.close()
            # Connected first: a command that carries the host's time (a clock to set) must
            # not be built before a handshake of seconds under emulation, or the guest's
            # clock ends up behind by that long (seen: 5.8 s, past the health check's bound).
            self._connect()
            return self.run(command(), timeout=20, announce=False).ok

        try:
            wait_for(f"SSH on {self.name}", answers, timeout=timeout, interval=1.0,
                     first_pause=1.0, retry_on=(Unreachable, paramiko.SSHException, OSError),
                     interrupt=lambda: self._check_cancelled("waiting for SSH"),
                     sleep=self.cancel.wait)
        except WaitTimeout as exc:
            raise Unreachable(f"{self.name} did not answer SSH within {timeout:.0f} s "
                              f"(last error: {exc.last})",
                              f"read the console log of {self.name} (ganeti-lab status shows "
                              "it)") from None
        return time.monotonic() - started

    def _check_cancelled(self, doing: str) -> None:
        if self.cancel.is_set():
            raise Cancelled(f"{self.name}: interrupted while {doing}")

    # Commands -----------------------------------------------------------------------------

    def run(self, command: str, timeout: float = 300.0, input: str | None = None,
            announce: bool = True) -> Result:
        """Run ``command`` (killed on the machine after ``timeout``). Said in the live log
        first, so a run that hangs shows where (a wait's repeated probes are not)."""
        if announce:
            log.info("%s: `%s` (timeout %.0f s)", self.name, _short(command), timeout)
        started = time.monotonic()
        client = self._connect()
        try:
            transport = client.get_transport()
            assert transport is not None
            chan = transport.open_session(timeout=30)
            chan.exec_command(_bounded(command, timeout))
            if input is not None:
                chan.sendall(input.encode())
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = started + timeout
            exited: float | None = None
            chan.settimeout(1.0)
            while True:
                while chan.recv_ready():
                    out += chan.recv(65536)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                if chan.exit_status_ready() and not chan.recv_ready() \
                        and not chan.recv_stderr_ready():
                    # sshd reports the exit as soon as the command ends and sends what it
                    # still holds of the output after that (a patched 90 KB file read with
                    # `cat` came back cut short): the output ends with EOF. A daemon started
                    # in the background may hold it open, so not longer than OUTPUT_GRACE.
                    exited = exited or time.monotonic()
                    if chan.eof_received or time.monotonic() - exited > OUTPUT_GRACE:
                        break
                if time.monotonic() > deadline:
                    chan.close()
                    return self._result(command, None, out, err, started)
                if self.cancel.is_set():
                    chan.close()
                    self._check_cancelled(f"running `{command}`")
                with contextlib.suppress(socket.timeout, TimeoutError):
                    chunk = chan.recv(65536)
                    out += chunk
            status = chan.recv_exit_status()
            chan.close()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self.close()
            raise Unreachable(f"{self.name}: connection lost running `{command}`: {exc}",
                              f"check that {self.name} is running (`ganeti-lab status`)") \
                from None
        return self._result(command, status, out, err, started)

    def _result(self, command: str, status: int | None, out: bytes, err: bytes,
                started: float) -> Result:
        result = Result(self.name, command, status, out.decode(errors="replace"),
                        err.decode(errors="replace"), time.monotonic() - started)
        log.debug("%s: `%s` -> %s in %.2f s", self.name, command, status, result.seconds)
        return result

    def succeed(self, command: str, timeout: float = 300.0, input: str | None = None) -> str:
        """Run ``command``; return its stdout, or raise CommandFailed with the output tail."""
        result = self.run(command, timeout=timeout, input=input)
        if not result.ok:
            raise CommandFailed(self.name, command, result.exit_status,
                                tail(result.stdout + "\n" + result.stderr))
        return result.stdout

    def fail(self, command: str, timeout: float = 300.0) -> str:
        """Run ``command`` expecting failure; return its stderr."""
        result = self.run(command, timeout=timeout)
        if result.ok:
            raise CommandFailed(self.name, command, 0,
                                "expected a failure, but the command succeeded:\n"
                                + tail(result.stdout))
        return result.stderr

    def wait_until_succeeds(self, command: str, timeout: float = 120.0,
                            interval: float = 1.0) -> str:
        deadline = time.monotonic() + timeout
        last: list[Result] = []

        def succeeds() -> Result | None:
            try:
                result = self.run(command, timeout=max(5.0, deadline - time.monotonic()),
                                  announce=False)
            except Unreachable as exc:
                result = Result(self.name, command, None, "", str(exc), 0.0)
            last[:] = [result]
            return result if result.ok else None

        try:
            return wait_for(f"`{_short(command)}` to succeed on {self.name}", succeeds,
                            timeout=timeout, interval=interval, first_pause=0.2, retry_on=(),
                            interrupt=lambda: self._check_cancelled(f"waiting for `{command}`"),
                            sleep=self.cancel.wait).stdout
        except WaitTimeout:
            result = last[0]
            raise CommandFailed(
                self.name, f"{command} (waited {timeout:.0f} s)", result.exit_status,
                "last attempt printed:\n" + tail(result.stdout + "\n" + result.stderr)) from None

    # Files --------------------------------------------------------------------------------

    def put(self, local: Path, remote: str, mode: int | None = None) -> None:
        with self._connect().open_sftp() as sftp:
            sftp.put(str(local), remote)
            if mode is not None:
                sftp.chmod(remote, mode)

    def get(self, remote: str, local: Path) -> Path:
        local.parent.mkdir(parents=True, exist_ok=True)
        with self._connect().open_sftp() as sftp:
            sftp.get(remote, str(local))
        return local

    def write_file(self, remote: str, text: str, mode: int = 0o644) -> None:
        with self._connect().open_sftp() as sftp:
            with sftp.open(remote, "w") as f:
                f.write(text)
            sftp.chmod(remote, mode)

    def read_file(self, remote: str) -> str:
        with self._connect().open_sftp() as sftp, sftp.open(remote, "r") as f:
            return f.read().decode()

    def shell_quote(self, *args: str) -> str:
        return shlex.join(args)
