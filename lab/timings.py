"""Nested, timed phases: the single source of timing figures for a lab run.

Usage::

    timings = Timings(run_dir, new_run_id(), host=host_facts())
    with timings.phase("bring-up", nodes=3) as p:
        with timings.phase("vagrant-up"):
            ...
        p.metric("instances", 4)
    timings.write()          # runs/<run-id>/timings.json

Durations come from the monotonic clock; start times are wall-clock UTC so runs
can be placed on a common time axis by the report.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import platform
import secrets
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from lab import secrets as lab_secrets
from lab.errors import HarnessError, LabError

__all__ = [
    "OUTCOMES",
    "SCHEMA_VERSION",
    "Phase",
    "Timings",
    "TimingsError",
    "host_facts",
    "new_run_id",
]

log = logging.getLogger("lab.timings")

# Schema 2 gives every phase an "id" and its parent's "parent_id" (ids are unique in a run, in
# the order phases start); schema 1 named the parent only, and is still read.
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
FILENAME = "timings.json"
# "error": the harness broke (lab.errors.HarnessError), as opposed to "failed".
OUTCOMES = ("passed", "failed", "error", "interrupted", "skipped", "xfailed")

# Metrics end up in JSON and in an HTML table: keep strings (and errors) short.
_MAX_STR = 200


class TimingsError(LabError, ValueError):
    """A timings.json file is missing, unreadable or not of a known schema."""


class _Inherit:
    """Sentinel type: "use the enclosing phase of the current context as parent"."""

    def __repr__(self) -> str:
        return "INHERIT"


INHERIT = _Inherit()

Metric = int | float | bool | str | None


def utc_now() -> datetime:
    """Current wall-clock time, timezone-aware UTC."""
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    """ISO 8601 UTC with millisecond precision and a ``Z`` suffix."""
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _short(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _MAX_STR else text[: _MAX_STR - 1] + "…"


# A failure's first line is what a reader of the record needs whole; only runaway lines are cut.
_MAX_ERROR = 2000


def _error_text(exc: BaseException) -> str:
    """The exception's whole first line, e.g. ``CommandFailed: node1: `x` exited 2``, with the
    exit status of a failed command when it carries one."""
    msg = str(exc).strip().splitlines()
    name = type(exc).__name__
    text = f"{name}: {msg[0]}" if msg else name
    if hasattr(exc, "returncode"):
        code = exc.returncode
        status = "timed out" if code is None else f"exit status {code}"
        if "exited" not in text and "timed out" not in text:
            text += f" [{status}]"
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 1] + "…"


def _check_metric(key: str, value: Any) -> Metric:
    # Reject containers/objects early: they would only fail later in write(),
    # far away from the code that produced them.
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return _short(value)
    kind = type(value).__name__
    raise TypeError(f"metric {key!r} must be a number or a short string, not {kind}")


class Phase:
    """One running (or finished) timed phase; handed out by ``Timings.phase``."""

    def __init__(self, name: str, parent: str | None, metrics: dict[str, Any],
                 id: int = 0, parent_id: int | None = None) -> None:
        self.id = id
        self.name = name
        self.parent = parent
        self.parent_id = parent_id
        self.metrics: dict[str, Metric] = {k: _check_metric(k, v) for k, v in metrics.items()}
        self.start = utc_now()
        self._t0 = time.monotonic()
        self._seconds: float | None = None
        self._skipped = False
        self._expected_failure = False

    def metric(self, key: str, value: Metric) -> None:
        """Attach a metric (a number or a short string) to this phase."""
        self.metrics[key] = _check_metric(key, value)

    def skip(self, reason: str | None = None) -> None:
        """Mark the phase as skipped; it is still recorded with its (short) duration."""
        self._skipped = True
        if reason:
            self.metric("skip_reason", reason)

    @property
    def skipped(self) -> bool:
        return self._skipped

    def expect_failure(self, reason: str | None = None) -> None:
        """The failure this phase ends with is a known one (a strict xfail proving a bug):
        it is recorded as ``xfailed``, not ``failed``."""
        self._expected_failure = True
        if reason:
            self.metric("xfail_reason", reason)

    def elapsed(self) -> float:
        """Seconds since the phase started (its final duration once it ended)."""
        if self._seconds is not None:
            return self._seconds
        return time.monotonic() - self._t0

    def _finish(self) -> float:
        self._seconds = time.monotonic() - self._t0
        return self._seconds

    def __repr__(self) -> str:
        return f"Phase({self.name!r}, parent={self.parent!r}, elapsed={self.elapsed():.2f})"


class Timings:
    """Collects timed phases of one run and writes them to ``run_dir/timings.json``."""

    def __init__(
        self,
        run_dir: Path,
        run_id: str,
        host: dict | None = None,
        meta: dict | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        # Callers add accelerator, image keys, Ganeti versions... to these later.
        self.host: dict[str, Any] = dict(host or {})
        self.meta: dict[str, Any] = dict(meta or {})
        self.started = utc_now()
        self._lock = threading.Lock()
        self._phases: list[dict[str, Any]] = []
        self._last_id = 0
        self._open: dict[int, Phase] = {}  # started, not ended: parents named by a string
        # One variable per instance so two Timings objects never adopt each
        # other's phases as parents.
        self._current: contextvars.ContextVar[Phase | None] = contextvars.ContextVar(
            f"lab.timings.current.{id(self)}", default=None
        )

    @property
    def path(self) -> Path:
        """Where ``write`` puts the file."""
        return self.run_dir / FILENAME

    @property
    def phases(self) -> list[dict[str, Any]]:
        """Copy of the finished phases, in the order they ended."""
        with self._lock:
            return [dict(p, metrics=dict(p["metrics"])) for p in self._phases]

    def current(self) -> Phase | None:
        """The innermost open phase of the calling context (to hand to worker threads)."""
        return self._current.get()

    def _next_id(self) -> int:
        with self._lock:
            self._last_id += 1
            return self._last_id

    def _parent(self, parent: Phase | str | _Inherit | None) -> tuple[str | None, int | None]:
        """The parent's name and id. A parent given by name is the newest open phase of that
        name, else the newest recorded one (no id if there is none)."""
        if isinstance(parent, _Inherit):
            parent = self._current.get()
        if isinstance(parent, Phase):
            return parent.name, parent.id
        if parent is None:
            return None, None
        with self._lock:
            ids = [i for i, ph in self._open.items() if ph.name == parent] or [
                entry["id"] for entry in self._phases if entry["name"] == parent]
        return parent, max(ids) if ids else None

    @contextmanager
    def phase(
        self, name: str, *, parent: Phase | str | _Inherit | None = INHERIT, **metrics: Any
    ) -> Iterator[Phase]:
        """Time the enclosed block as phase ``name``.

        The parent is the enclosing phase of this thread/context unless given
        explicitly (a ``Phase`` or a name; ``None`` makes it top level), which is
        how work in a thread pool is attached to the phase that started it.
        The exception, if any, is recorded and always re-raised.
        """
        parent_name, parent_id = self._parent(parent)
        ph = Phase(name, parent_name, metrics, self._next_id(), parent_id)
        with self._lock:
            self._open[ph.id] = ph
        token = self._current.set(ph)
        log.info("starting: %s", name)
        outcome, error = "passed", None
        try:
            yield ph
        except KeyboardInterrupt as exc:
            outcome, error = "interrupted", _error_text(exc)
            raise
        except BaseException as exc:
            outcome = ("xfailed" if ph._expected_failure
                       else "error" if isinstance(exc, HarnessError) else "failed")
            error = _error_text(exc)
            raise
        finally:
            seconds = ph._finish()
            self._current.reset(token)
            with self._lock:
                self._open.pop(ph.id, None)
            if outcome == "passed" and ph.skipped:
                outcome = "skipped"
            self._append(ph.id, name, ph.parent, ph.parent_id, ph.start, seconds, outcome,
                         error, ph.metrics)
            self._log_end(name, seconds, outcome, error)

    def record(
        self,
        name: str,
        seconds: float,
        *,
        parent: Phase | str | _Inherit | None = INHERIT,
        start: datetime | str | None = None,
        outcome: str = "passed",
        error: str | None = None,
        **metrics: Any,
    ) -> None:
        """Record a duration measured elsewhere (e.g. parsed from a remote log).

        ``parent`` defaults to the enclosing phase, as for ``phase``; ``start``
        (datetime or ISO string) defaults to "``seconds`` ago".
        """
        seconds = float(seconds)
        if seconds < 0:
            raise ValueError(f"negative duration for {name!r}: {seconds}")
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {outcome!r}")
        if start is None:
            start_dt = utc_now() - timedelta(seconds=seconds)
        elif isinstance(start, str):
            start_dt = datetime.fromisoformat(start)
        else:
            start_dt = start
        if start_dt.tzinfo is None:  # naive datetimes are taken as UTC
            start_dt = start_dt.replace(tzinfo=UTC)
        checked = {k: _check_metric(k, v) for k, v in metrics.items()}
        err = error.strip()[:_MAX_ERROR] if error else None
        parent_name, parent_id = self._parent(parent)
        self._append(self._next_id(), name, parent_name, parent_id, start_dt, seconds, outcome,
                     err, checked)
        self._log_end(name, seconds, outcome, err)

    def _append(
        self,
        id: int,
        name: str,
        parent: str | None,
        parent_id: int | None,
        start: datetime,
        seconds: float,
        outcome: str,
        error: str | None,
        metrics: dict[str, Metric],
    ) -> None:
        entry = {
            "id": id,
            "name": name,
            "parent": parent,
            "parent_id": parent_id,
            "start": iso(start),
            "seconds": round(seconds, 6),
            "outcome": outcome,
            "error": error,
            "metrics": dict(metrics),
        }
        with self._lock:
            self._phases.append(entry)

    @staticmethod
    def _log_end(name: str, seconds: float, outcome: str, error: str | None) -> None:
        line = f"finished: {name} in {seconds:.2f} s"
        if outcome in ("failed", "error"):
            line += f" ({outcome}: {error})"
        elif outcome in ("interrupted", "skipped"):
            line += f" ({outcome})"
        log.info("%s", line)

    def to_dict(self) -> dict[str, Any]:
        """The document ``write`` stores; ``finished`` is "now"."""
        return {
            "schema": SCHEMA_VERSION,
            "run_id": self.run_id,
            "started": iso(self.started),
            "finished": iso(utc_now()),
            "host": dict(self.host),
            "meta": dict(self.meta),
            "phases": self.phases,
        }

    def write(self) -> Path:
        """Write ``run_dir/timings.json`` atomically; safe to call repeatedly."""
        doc = self.to_dict()
        # Phase names, errors and metrics come from test code and exception messages: scrub
        # the lab's secrets from the text itself, so no escaping or nesting can hide one.
        text = lab_secrets.scrub(json.dumps(doc, indent=2, default=str)) + "\n"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Temp file in the same directory so os.replace is an atomic rename:
        # a reader (or a crash) never sees a half-written file.
        fd, tmp = tempfile.mkstemp(prefix=".timings-", suffix=".tmp", dir=self.run_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.path

    @staticmethod
    def load(path: Path | str) -> dict[str, Any]:
        """Read a timings.json (or the one in a run directory) and check its schema."""
        path = Path(path)
        if path.is_dir():
            path = path / FILENAME
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TimingsError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TimingsError(f"{path}: unreadable: {exc}") from exc
        if not isinstance(doc, dict):
            raise TimingsError(f"{path}: not a JSON object")
        if doc.get("schema") not in READABLE_SCHEMAS:
            raise TimingsError(f"{path}: unsupported schema {doc.get('schema')!r}")
        if not isinstance(doc.get("phases"), list):
            raise TimingsError(f"{path}: 'phases' is missing or not a list")
        return doc


def new_run_id() -> str:
    """A sortable run id: UTC time plus 4 hex chars, e.g. ``20261124T132652Z-3f9a``."""
    return f"{utc_now():%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


def _memory_mib() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024  # value is in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _git_commit() -> str | None:
    # The checkout holding this code: that is the version that produced the figures.
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = res.stdout.strip()
    return commit if res.returncode == 0 and commit else None


def host_facts() -> dict[str, Any]:
    """Basic facts about this machine and checkout, for ``Timings(host=...)``."""
    return {
        "cores": os.cpu_count(),
        "memory_mib": _memory_mib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "hostname": socket.gethostname(),
        "git_commit": _git_commit(),
    }


def maybe_phase(
    timings: Timings | None, name: str, *, parent: Phase | str | _Inherit | None = INHERIT,
    **metrics: Any,
) -> contextlib.AbstractContextManager[Phase | None]:
    """A phase when a recorder is attached, else a no-op (library calls work without one)."""
    if timings is None:
        return contextlib.nullcontext()
    return timings.phase(name, parent=parent, **metrics)
