"""A bootstrap step's time split into its client's work and Ganeti's jobs, from the master's
job timestamps (lab/ganeti/jobs.py record_jobs_of_phases). The bootstrap records it on real
clusters in every run that forms one (tests/test_ganeti_clusters.py)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from lab.ganeti.jobs import record_jobs_of_phases
from lab.timings import Timings


def stamp(seconds: float) -> list[int]:
    """Ganeti's [seconds, microseconds]."""
    return [int(seconds), round((seconds % 1) * 1e6)]


def job(job_id: int, summary: str, received: float, started: float | None = None,
        ended: float | None = None, status: str = "success") -> dict[str, Any]:
    return {"id": job_id, "summary": [summary], "status": status,
            "received_ts": stamp(received),
            "start_ts": None if started is None else stamp(started),
            "end_ts": None if ended is None else stamp(ended)}


@pytest.fixture
def timings(tmp_path: Path) -> Timings:
    return Timings(tmp_path / "runs" / "r1", "r1", host={"cores": 2}, meta={})


def test_each_job_is_split_under_the_step_that_submitted_it(timings: Timings) -> None:
    with timings.phase("add node2") as add2:
        time.sleep(0.2)
    with timings.phase("verify") as verify:
        time.sleep(0.2)
    a, v = add2.start.timestamp(), verify.start.timestamp()
    jobs = [
        job(3, "NODE_ADD(node2.lab)", a + 0.10, a + 0.12, a + 0.18),
        job(6, "CLUSTER_VERIFY", v + 0.05, v + 0.06, v + 0.07),
        job(7, "CLUSTER_VERIFY_GROUP(g)", v + 0.08, v + 0.09, None, status="running"),
        job(9, "OS_DIAGNOSE", v + 30.0, v + 31.0, v + 32.0),   # after every step: left out
    ]
    assert record_jobs_of_phases(timings, jobs, [add2, verify]) == 3

    rows = {p["name"]: p for p in timings.phases}
    before = rows["add node2: before Ganeti received its first job"]
    assert before["parent_id"] == add2.id
    assert before["seconds"] == pytest.approx(0.10, abs=0.002)
    queued = rows["add node2: Ganeti job 3 (NODE_ADD(node2.lab)) queued"]
    ran = rows["add node2: Ganeti job 3 (NODE_ADD(node2.lab)) ran"]
    assert (queued["seconds"], ran["seconds"]) == (pytest.approx(0.02, abs=0.002),
                                                   pytest.approx(0.06, abs=0.002))
    assert ran["metrics"]["status"] == "success"
    assert ran["parent_id"] == queued["parent_id"] == add2.id

    # One "before" per step, at its first job; an unfinished job has no "ran".
    assert rows["verify: before Ganeti received its first job"]["seconds"] == \
        pytest.approx(0.05, abs=0.002)
    assert sum(name.startswith("verify: before") for name in rows) == 1
    assert "verify: Ganeti job 7 (CLUSTER_VERIFY_GROUP(g)) queued" in rows
    assert "verify: Ganeti job 7 (CLUSTER_VERIFY_GROUP(g)) ran" not in rows
    assert not any("job 9" in name for name in rows)


def test_a_job_never_started_or_without_timestamps_records_no_durations(
        timings: Timings) -> None:
    with timings.phase("init") as init:
        time.sleep(0.1)
    s = init.start.timestamp()
    jobs = [job(1, "CLUSTER_POST_INIT", s + 0.05), {"id": 2, "summary": ["X"]}]
    assert record_jobs_of_phases(timings, jobs, [init]) == 1
    names = {p["name"] for p in timings.phases}
    assert names == {"init", "init: before Ganeti received its first job"}
