"""Ganeti's command line on a node, with structured output and waits that explain themselves."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from lab.errors import CommandFailed, GanetiFailure
from lab.remote import Machine

SEPARATOR = "|"


def query(master: Machine, command: str, fields: Sequence[str], *names: str,
          timeout: float = 120.0) -> list[dict[str, str]]:
    """`gnt-<x> list`-style output as one dict per row, e.g.
    ``query(m, "gnt-instance list", ["name", "pnode", "status"])``."""
    cmd = (f"{command} --no-headers --separator={shlex.quote(SEPARATOR)} -o {','.join(fields)} "
           + " ".join(shlex.quote(n) for n in names))
    rows = []
    for line in master.succeed(cmd, timeout=timeout).splitlines():
        if line.strip():
            rows.append(dict(zip(fields, line.split(SEPARATOR), strict=False)))
    return rows


class GntFailed(CommandFailed, GanetiFailure):
    """A Ganeti command on a cluster's master exited non-zero: Ganeti refused or failed."""


def run_gnt(master: Machine, cluster: str, command: str, timeout: float = 600.0) -> str:
    """``command`` (a `gnt-*` command line) on ``master``; its non-zero exit is GntFailed,
    naming the cluster. A master that does not answer stays a harness error."""
    try:
        return master.succeed(command, timeout=timeout)
    except CommandFailed as exc:
        if exc.returncode is None:  # timed out: the command is killed, nothing was refused
            raise
        raise GntFailed(f"cluster {cluster}, master {exc.where}", exc.command, exc.returncode,
                        exc.output_tail, exc.hint) from exc


def fetch_ganeti_logs(machine: Machine, dest: Path, timeout: float = 60.0) -> Path:
    """/var/log/ganeti of one node, compressed, into ``dest``."""
    remote = f"/tmp/ganeti-logs-{machine.name}.tar.gz"
    machine.succeed(f"tar -czf {shlex.quote(remote)} -C /var/log ganeti", timeout=timeout)
    local = dest / f"{machine.name}-var-log-ganeti.tar.gz"
    machine.get(remote, local)
    machine.run(f"rm -f {shlex.quote(remote)}")
    return local
