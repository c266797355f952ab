"""Commands on the host, with errors that carry the command and its output tail."""

from __future__ import annotations

import logging
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from lab.errors import CommandFailed

log = logging.getLogger("lab.shell")

TAIL_LINES = 25


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run(
    argv: Sequence[str | Path],
    *,
    where: str = "host",
    timeout: float | None = None,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    check: bool = True,
    hint: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture stdout+stderr together, raise CommandFailed on failure."""
    args = [str(a) for a in argv]
    printable = shlex.join(args)
    log.debug("%s: running %s", where, printable)
    started = time.monotonic()
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            input=input,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise CommandFailed(where, printable, None, tail(out), hint) from None
    except FileNotFoundError:
        raise CommandFailed(
            where, printable, 127, f"{args[0]}: command not found",
            hint or f"install the package that provides {args[0]} (see .ci/run)",
        ) from None
    log.debug("%s: %s exited %d in %.2f s", where, args[0], proc.returncode,
              time.monotonic() - started)
    if check and proc.returncode != 0:
        raise CommandFailed(where, printable, proc.returncode, tail(proc.stdout), hint)
    return proc
