"""Jobs in bulk: submit many RAPI jobs, wait for all of them through RAPI's long poll, and
record for each what an operator asks about a slow batch: how long the submission took, how
long the job queued, how long it ran, and how it ended, in Ganeti's own words.

A scenario writes::

    jobs = JobSet(cluster.rapi)
    for name in names:
        jobs.submit(name, lambda: cluster.rapi.create_instance(name, ...))
    jobs.wait()                     # every job final, failures included
    jobs.record(phase)              # per-job figures as metrics of the test's phase
    jobs.raise_for_failures()       # when any failure should fail the test

``submit`` is safe to call from several threads at once (that is how "all at once" is
measured); the waiting is done by a small pool of long polls, so a hundred jobs cost a
handful of open requests, not a hundred pollers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lab.errors import GanetiFailure
from lab.ganeti.rapi import (
    JOB_FINAL,
    Job,
    JobFailed,
    JobTimeout,
    RapiClient,
    RapiError,
    format_op_error,
    job_timestamp,
)
from lab.timings import Phase, Timings

log = logging.getLogger("lab.ganeti.jobs")

# The fields /2/jobs/ID/wait watches: a change of either wakes the waiter.
WATCHED = ["status", "end_ts"]
# Names of the children record_jobs_of_phases gives a step ("<step>: <BEFORE_FIRST_JOB>",
# "<step>: <JOB_RECORD> <id> (<summary>) queued|ran"); the bench reads them back.
BEFORE_FIRST_JOB = "before Ganeti received its first job"
JOB_RECORD = "Ganeti job"


@dataclass
class JobOutcome:
    """One job of a set: its timings (seconds) and how it ended."""

    label: str
    job_id: int | None
    submitted_at: float                    # wall clock, when the submission was sent
    submit_seconds: float                  # the submitting request's round trip
    status: str = "submitted"              # Ganeti's final status, or submit-failed/timeout
    queue_seconds: float | None = None     # received -> started, Ganeti's timestamps
    run_seconds: float | None = None       # started -> ended
    finished_at: float | None = None       # wall clock, when the set saw it final
    reason: str | None = None              # why it failed, as Ganeti says it
    result: list[Any] = field(default_factory=list)
    # A multi-allocation job whose children (the creations) joined the set: it counts as a
    # job, not as a piece of the set's work.
    spawned: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "success"

    @property
    def final(self) -> bool:
        return self.status not in ("submitted",)


class JobSetFailed(GanetiFailure):
    """Some jobs of a set did not succeed; each is named with Ganeti's reason."""

    def __init__(self, failed: list[JobOutcome], total: int) -> None:
        self.failed = failed
        lines = "\n".join(f"  {o.label} (job {o.job_id}): {o.status}: {o.reason}"
                          for o in failed)
        super().__init__(f"{len(failed)} of {total} jobs did not succeed:\n{lines}",
                         "the reasons above are Ganeti's; `gnt-job info ID` on the master "
                         "shows the whole log")


class JobSet:
    """Jobs submitted to one cluster, waited for together."""

    def __init__(self, rapi: RapiClient, *, timeout: float = 1800, waiters: int = 8) -> None:
        self.rapi = rapi
        self.timeout = timeout
        self.waiters = waiters
        self._lock = threading.Lock()
        self._outcomes: list[JobOutcome] = []
        self._jobs: dict[int, Job] = {}

    # Submitting ---------------------------------------------------------------------------

    def submit(self, label: str, call: Callable[[], Job]) -> JobOutcome:
        """Run ``call`` (a RapiClient method that submits a job) and keep its job. A refused
        submission is recorded as ``submit-failed`` with the RAPI's reason, not raised."""
        submitted_at, started = time.time(), time.monotonic()
        try:
            job = call()
        except RapiError as exc:
            outcome = JobOutcome(label, None, submitted_at, time.monotonic() - started,
                                 status="submit-failed", reason=exc.message,
                                 finished_at=time.time())
            log.info("job for %s was refused: %s", label, exc.message)
        else:
            outcome = JobOutcome(label, job.id, submitted_at, time.monotonic() - started)
            with self._lock:
                self._jobs[job.id] = job
        with self._lock:
            self._outcomes.append(outcome)
        return outcome

    def submit_multi_alloc(self, instances: list[dict[str, Any]], *,
                           iallocator: str | None = None,
                           opportunistic_locking: bool | None = None,
                           label: str = "multi-alloc") -> JobOutcome:
        """``/2/instances-multi-alloc``: one job that submits one creation job per instance.
        ``wait`` follows it: each instance's own job joins the set under the instance's name,
        and an instance the allocator could not place is recorded as failed."""
        return self.submit(label, lambda: self.rapi.create_instances_multi_alloc(
            instances, iallocator=iallocator, opportunistic_locking=opportunistic_locking))

    # Waiting ------------------------------------------------------------------------------

    def wait(self) -> list[JobOutcome]:
        """Wait until every job is final (or the set's timeout passes); never raises for a
        failed job: see ``failures`` and ``raise_for_failures``."""
        deadline = time.monotonic() + self.timeout
        while True:
            with self._lock:
                pending = [o for o in self._outcomes if not o.final]
            if not pending:
                return self.outcomes
            with ThreadPoolExecutor(max_workers=max(1, min(self.waiters, len(pending)))) as pool:
                list(pool.map(lambda o: self._follow(o, deadline), pending))

    def _follow(self, outcome: JobOutcome, deadline: float) -> None:
        assert outcome.job_id is not None
        job = self._jobs[outcome.job_id]
        try:
            info = job.wait_for_final(max(0.0, deadline - time.monotonic()))
        except JobTimeout as exc:
            outcome.status, outcome.reason = "timeout", str(exc).splitlines()[0]
            outcome.finished_at = time.time()
            return
        except RapiError as exc:
            outcome.status, outcome.reason = "lost", exc.message
            outcome.finished_at = time.time()
            return
        outcome.status = str(info.get("status"))
        outcome.queue_seconds, outcome.run_seconds = job.queue_seconds, job.run_seconds
        outcome.finished_at = job.finished_at
        outcome.result = list(info.get("opresult") or [])
        if not outcome.ok:
            outcome.reason = _reason(info)
        elif _is_multi_alloc(outcome.result):
            self._expand_multi_alloc(outcome)

    def _expand_multi_alloc(self, parent: JobOutcome) -> None:
        """The multi-allocation job succeeded: its children are the real creations."""
        parent.spawned = True
        result = parent.result[0]
        names = list(result.get("allocatable") or [])
        for (submitted, child), name in zip(result.get("jobs") or [], names, strict=False):
            if submitted:
                job = Job(int(child), self.rapi, submitted_at=parent.finished_at or time.time())
                with self._lock:
                    self._jobs[job.id] = job
                    self._outcomes.append(JobOutcome(name, job.id, job.submitted_at, 0.0))
            else:
                self._add_failed(name, "submit-failed", str(child))
        for name in result.get("failed") or []:
            self._add_failed(name, "not-allocated", "the allocator found no place for it")

    def _add_failed(self, label: str, status: str, reason: str) -> None:
        with self._lock:
            self._outcomes.append(JobOutcome(label, None, time.time(), 0.0, status=status,
                                             reason=reason, finished_at=time.time()))

    # Results ------------------------------------------------------------------------------

    @property
    def outcomes(self) -> list[JobOutcome]:
        with self._lock:
            return list(self._outcomes)

    def failures(self) -> list[JobOutcome]:
        return [o for o in self.outcomes if o.final and not o.ok]

    def raise_for_failures(self) -> None:
        failed = self.failures()
        if failed:
            raise JobSetFailed(failed, len(self.outcomes))

    def summary(self) -> dict[str, float | int | None]:
        """Figures of the whole set: counts, time to first and last success, throughput.
        ``jobs`` counts every entry (jobs and refused submissions); the rest counts the work
        (a multi-allocation's parent job is not an instance made), timed from the first
        submission."""
        work = [o for o in self.outcomes if not o.spawned]
        done = [o for o in work if o.ok and o.finished_at is not None]
        starts = [o.submitted_at for o in self.outcomes]
        first = min(starts) if starts else None
        ends = sorted(o.finished_at for o in done if o.finished_at is not None)
        span = (ends[-1] - first) if ends and first is not None else None
        return {
            "jobs": len(self.outcomes),
            "succeeded": len(done),
            "failed": len(self.failures()),
            "first_success_seconds": round(ends[0] - first, 2) if ends and first else None,
            "last_success_seconds": round(span, 2) if span is not None else None,
            "per_minute": round(60 * len(done) / span, 2) if span else None,
        }

    def record(self, phase: Phase) -> None:
        """Every job's figures, and the set's, as metrics of ``phase``."""
        for key, value in self.summary().items():
            phase.metric(f"jobs.{key}", value)
        for o in self.outcomes:
            prefix = f"job {o.label}"
            phase.metric(f"{prefix}.id", o.job_id)
            phase.metric(f"{prefix}.submit_s", round(o.submit_seconds, 3))
            phase.metric(f"{prefix}.queue_s", _round(o.queue_seconds))
            phase.metric(f"{prefix}.run_s", _round(o.run_seconds))
            phase.metric(f"{prefix}.outcome", o.status if o.ok else f"{o.status}: {o.reason}")


def record_jobs_of_phases(timings: Timings, jobs: list[dict[str, Any]],
                          phases: list[Phase]) -> int:
    """Split finished ``phases`` of a `gnt-*` command into the client's own work and Ganeti's
    job, by the master's timestamps of ``jobs`` (RAPI's bulk job records).

    Each job received while one of the phases ran becomes two children of that phase: how long
    it queued and how long it ran. Before the phase's first job, a third child says how long
    the command worked before Ganeti received it (Python starting, and for a node add the new
    node's SSH and node-daemon set-up). Under emulation a node add of 60-90 s is about half
    each, and only the job half is serialized by Ganeti (it holds the cluster's big lock).
    Guest clocks are kept within a second of the host's; a job outside every phase is left
    out. Returns how many jobs were placed.
    """
    windows = [(p, p.start.timestamp(), p.start.timestamp() + p.elapsed()) for p in phases]
    placed = 0
    seen: set[int] = set()
    for job in sorted(jobs, key=lambda j: job_timestamp(j.get("received_ts")) or 0.0):
        received = job_timestamp(job.get("received_ts"))
        started = job_timestamp(job.get("start_ts"))
        ended = job_timestamp(job.get("end_ts"))
        if received is None:
            continue
        phase = next((p for p, start, end in windows if start <= received <= end), None)
        if phase is None:
            continue
        what = (f"{phase.name}: {JOB_RECORD} {job.get('id')} "
                f"({', '.join(job.get('summary') or [])})")
        if phase.id not in seen:
            seen.add(phase.id)
            timings.record(f"{phase.name}: {BEFORE_FIRST_JOB}",
                           received - phase.start.timestamp(), parent=phase, start=phase.start)
        if started is not None:
            timings.record(f"{what} queued", max(0.0, started - received), parent=phase,
                           start=_utc(received))
            if ended is not None:
                timings.record(f"{what} ran", max(0.0, ended - started), parent=phase,
                               start=_utc(started), status=str(job.get("status")))
        placed += 1
    return placed


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _is_multi_alloc(result: list[Any]) -> bool:
    return bool(result) and isinstance(result[0], dict) and "jobs" in result[0] \
        and "allocatable" in result[0]


def _reason(info: dict[str, Any]) -> str:
    """Ganeti's own words for a failed job: the encoded error of the failing opcode."""
    for op_result in info.get("opresult") or []:
        if op_result is not None:
            return format_op_error(op_result)
    return str(info.get("status"))


__all__ = ["JOB_FINAL", "JobFailed", "JobOutcome", "JobSet", "JobSetFailed",
           "record_jobs_of_phases"]
