"""Tests for lab.timings: nesting, outcomes, logging, threads and the JSON file."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lab import timings as tm
from lab.timings import Timings, TimingsError, host_facts, new_run_id


@pytest.fixture
def t(tmp_path: Path) -> Timings:
    return Timings(tmp_path / "runs" / "r1", "r1", host={"cores": 2}, meta={"profile": "x"})


def by_name(t: Timings) -> dict[str, dict]:
    return {p["name"]: p for p in t.phases}


def test_nesting_sets_parents(t: Timings) -> None:
    with t.phase("outer", nodes=3) as outer:
        with t.phase("middle"), t.phase("inner") as inner:
            inner.metric("disks", 2)
        with t.phase("sibling"):
            pass
        outer.metric("status", "ok")
    with t.phase("second-top"):
        pass

    ph = by_name(t)
    assert ph["outer"]["parent"] is None
    assert ph["middle"]["parent"] == "outer"
    assert ph["inner"]["parent"] == "middle"
    assert ph["sibling"]["parent"] == "outer"
    assert ph["second-top"]["parent"] is None
    assert ph["outer"]["metrics"] == {"nodes": 3, "status": "ok"}
    assert ph["inner"]["metrics"] == {"disks": 2}
    # Recorded on exit: children come before their parents.
    assert [p["name"] for p in t.phases] == ["inner", "middle", "sibling", "outer", "second-top"]
    for p in t.phases:
        assert p["outcome"] == "passed" and p["error"] is None
        assert datetime.fromisoformat(p["start"]).tzinfo is not None
        assert p["start"].endswith("Z")
    assert ph["outer"]["seconds"] >= ph["middle"]["seconds"] >= ph["inner"]["seconds"] >= 0


def test_seconds_and_elapsed(t: Timings) -> None:
    with t.phase("sleepy") as p:
        time.sleep(0.05)
        assert p.elapsed() >= 0.05
        assert p.name == "sleepy"
    final = p.elapsed()
    assert final == pytest.approx(t.phases[0]["seconds"], abs=1e-5)
    time.sleep(0.01)
    assert p.elapsed() == final  # frozen once the phase ended


def test_exception_marks_failed_and_propagates(t: Timings) -> None:
    with pytest.raises(RuntimeError, match="boom"), t.phase("outer"), t.phase("inner"):
        raise RuntimeError("boom\nsecond line is dropped")
    ph = by_name(t)
    for name in ("outer", "inner"):
        assert ph[name]["outcome"] == "failed"
        assert ph[name]["error"] == "RuntimeError: boom"
    # The context is restored: a new phase is top level again.
    with t.phase("after"):
        pass
    assert by_name(t)["after"]["parent"] is None


def test_keyboard_interrupt_is_interrupted(t: Timings) -> None:
    with pytest.raises(KeyboardInterrupt), t.phase("waiting"):
        raise KeyboardInterrupt
    p = t.phases[0]
    assert p["outcome"] == "interrupted"
    assert p["error"] == "KeyboardInterrupt"


def test_skip(t: Timings) -> None:
    with t.phase("optional") as p:
        p.skip("no accelerator")
    assert t.phases[0]["outcome"] == "skipped"
    assert t.phases[0]["metrics"] == {"skip_reason": "no accelerator"}
    # An exception after skip() still counts as a failure.
    with pytest.raises(ValueError), t.phase("skip-then-fail") as p:
        p.skip()
        raise ValueError("x")
    assert by_name(t)["skip-then-fail"]["outcome"] == "failed"


def test_expected_failure(t: Timings) -> None:
    with pytest.raises(ValueError), t.phase("known bug") as p:
        p.expect_failure("Ganeti 3.0.2")
        raise ValueError("the bug")
    with t.phase("expected but passed") as p:
        p.expect_failure()
    phases = by_name(t)
    assert phases["known bug"]["outcome"] == "xfailed"
    assert phases["known bug"]["metrics"] == {"xfail_reason": "Ganeti 3.0.2"}
    assert "ValueError: the bug" in phases["known bug"]["error"]
    assert phases["expected but passed"]["outcome"] == "passed"


def test_metric_types(t: Timings) -> None:
    with t.phase("m") as p:
        p.metric("n", 1)
        p.metric("f", 1.5)
        p.metric("flag", True)
        p.metric("long", "x" * 1000)
        with pytest.raises(TypeError):
            p.metric("bad", {"a": 1})
    metrics = t.phases[0]["metrics"]
    assert metrics["n"] == 1 and metrics["f"] == 1.5 and metrics["flag"] is True
    assert len(metrics["long"]) <= 200
    with pytest.raises(TypeError), t.phase("bad", obj=object()):
        pass


def test_log_lines(t: Timings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="lab.timings")
    with t.phase("good"):
        pass
    with pytest.raises(OSError), t.phase("bad"):
        raise OSError("disk on fire")

    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert ("lab.timings", logging.INFO, "starting: good") in records
    assert ("lab.timings", logging.INFO, "starting: bad") in records
    info = [m for _, lvl, m in records if lvl == logging.INFO]
    assert len(info) == 4  # a start and an end each: a hung phase shows in the live log
    assert re.fullmatch(r"finished: good in \d+\.\d\d s", info[1])
    assert re.fullmatch(r"finished: bad in \d+\.\d\d s \(failed: OSError: disk on fire\)", info[3])


def test_worker_threads_with_explicit_parent(t: Timings) -> None:
    def work(i: int, parent: tm.Phase) -> None:
        # The inner phase inherits node-i inside the worker.
        with t.phase(f"node-{i}", parent=parent, node=i), t.phase(f"node-{i}-ssh"):
            time.sleep(0.005)

    with t.phase("bring-up") as up, ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda i: work(i, up), range(8)))

    ph = by_name(t)
    assert len(ph) == 17
    for i in range(8):
        assert ph[f"node-{i}"]["parent"] == "bring-up"
        assert ph[f"node-{i}-ssh"]["parent"] == f"node-{i}"


def test_threads_do_not_inherit_implicitly(t: Timings) -> None:
    # A plain thread starts with an empty context: without parent= it is top level.
    def lonely() -> None:
        with t.phase("lonely"):
            pass

    with t.phase("outer"):
        th = threading.Thread(target=lonely)
        th.start()
        th.join()
        with t.phase("named-parent", parent="something-else"):
            pass
        with t.phase("forced-top", parent=None):
            pass
    ph = by_name(t)
    assert ph["named-parent"]["parent"] == "something-else"
    assert ph["forced-top"]["parent"] is None
    assert ph["lonely"]["parent"] is None


def test_concurrent_appends_are_all_kept(t: Timings) -> None:
    def burst(i: int) -> None:
        for j in range(50):
            t.record(f"r{i}-{j}", 0.001, parent=None)

    threads = [threading.Thread(target=burst, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(t.phases) == 200


def test_phases_is_a_copy(t: Timings) -> None:
    with t.phase("a", k=1):
        pass
    copy = t.phases
    copy[0]["metrics"]["k"] = 99
    copy.clear()
    assert t.phases[0]["metrics"] == {"k": 1}


def test_record(t: Timings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lab.timings")
    start = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with t.phase("outer"):
        t.record("remote", 12.5, start=start, jobs=4)
        t.record("top", 1.0, parent=None)
    t.record("failed-one", 2, outcome="failed", error="exit 1", start="2026-01-02T03:04:05Z")
    ph = by_name(t)
    assert ph["remote"] == {
        "id": 2,
        "name": "remote",
        "parent": "outer",
        "parent_id": ph["outer"]["id"],
        "start": "2026-01-02T03:04:05.000Z",
        "seconds": 12.5,
        "outcome": "passed",
        "error": None,
        "metrics": {"jobs": 4},
    }
    assert ph["top"]["parent"] is None
    # Default start is "seconds ago".
    top_start = datetime.fromisoformat(ph["top"]["start"])
    assert abs(datetime.now(UTC) - timedelta(seconds=1) - top_start) < timedelta(seconds=5)
    assert ph["failed-one"]["outcome"] == "failed" and ph["failed-one"]["error"] == "exit 1"
    assert "finished: remote in 12.50 s" in caplog.messages
    assert "finished: failed-one in 2.00 s (failed: exit 1)" in caplog.messages
    with pytest.raises(ValueError):
        t.record("x", 1, outcome="great")
    with pytest.raises(ValueError):
        t.record("x", -1)


def test_write_is_atomic_and_round_trips(t: Timings, monkeypatch: pytest.MonkeyPatch) -> None:
    with t.phase("one", size="10G"):
        pass
    path = t.write()
    assert path == t.run_dir / "timings.json"
    doc = Timings.load(path)
    assert doc["schema"] == 2
    assert doc["run_id"] == "r1"
    assert doc["host"] == {"cores": 2} and doc["meta"] == {"profile": "x"}
    assert datetime.fromisoformat(doc["started"]) <= datetime.fromisoformat(doc["finished"])
    assert doc["phases"] == t.phases
    assert Timings.load(t.run_dir) == doc  # a run directory works too

    # Rewrites pick up later phases and metadata changes.
    t.meta["ganeti_version"] = "3.1"
    with t.phase("two"):
        pass
    t.write()
    doc2 = Timings.load(path)
    assert [p["name"] for p in doc2["phases"]] == ["one", "two"]
    assert doc2["meta"]["ganeti_version"] == "3.1"

    # A failure half way leaves the previous file intact and no temp files behind.
    def broken_replace(src: str, dst: str) -> None:
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", broken_replace)
    with t.phase("three"):
        pass
    with pytest.raises(OSError, match="simulated"):
        t.write()
    assert Timings.load(path) == doc2
    assert sorted(p.name for p in t.run_dir.iterdir()) == ["timings.json"]


def test_load_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "timings.json"
    with pytest.raises(TimingsError, match="no such file"):
        Timings.load(bad)
    bad.write_text("{not json")
    with pytest.raises(TimingsError, match=re.escape(str(bad))):
        Timings.load(bad)
    bad.write_text(json.dumps({"schema": 3, "phases": []}))
    with pytest.raises(TimingsError, match="schema"):
        Timings.load(bad)
    bad.write_text(json.dumps({"schema": 1, "phases": []}))  # older runs stay readable
    assert Timings.load(bad)["phases"] == []
    bad.write_text(json.dumps({"schema": 1}))
    with pytest.raises(TimingsError, match="phases"):
        Timings.load(bad)
    bad.write_text("[]")
    with pytest.raises(TimingsError):
        Timings.load(bad)


def test_separate_instances_do_not_share_parents(tmp_path: Path) -> None:
    a, b = Timings(tmp_path / "a", "a"), Timings(tmp_path / "b", "b")
    with a.phase("in-a"), b.phase("in-b"):
        pass
    assert b.phases[0]["parent"] is None


def test_new_run_id() -> None:
    rid = new_run_id()
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{4}", rid)
    stamp = datetime.strptime(rid[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=1)
    assert len({new_run_id() for _ in range(20)}) > 1


def test_host_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"

    def fake_git_ok(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        assert cmd == ["git", "rev-parse", "HEAD"]
        return subprocess.CompletedProcess(cmd, 0, stdout=commit + "\n", stderr="")

    monkeypatch.setattr(tm.subprocess, "run", fake_git_ok)
    facts = host_facts()
    assert facts["cores"] == os.cpu_count()
    assert isinstance(facts["memory_mib"], int) and facts["memory_mib"] > 0
    assert facts["kernel"] and facts["python"].count(".") == 2 and facts["hostname"]
    assert facts["git_commit"] == commit
    json.dumps(facts)

    def fake_git_fails(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 128, stdout="", stderr="not a git repository")

    monkeypatch.setattr(tm.subprocess, "run", fake_git_fails)
    assert host_facts()["git_commit"] is None

    def no_git(cmd: list[str], **kw: object) -> None:
        raise FileNotFoundError("git")

    monkeypatch.setattr(tm.subprocess, "run", no_git)
    assert host_facts()["git_commit"] is None


def test_a_failure_keeps_its_whole_first_line_and_exit_status(tmp_path: Path) -> None:
    from lab.errors import CommandFailed
    from lab.timings import Timings

    t = Timings(tmp_path, "r1")
    long_line = "node1: gnt-cluster verify reported " + "x" * 400
    with pytest.raises(RuntimeError), t.phase("a"):
        raise RuntimeError(long_line + "\nsecond line")
    failed = subprocess.CalledProcessError(3, ["vagrant", "up"])
    with pytest.raises(subprocess.CalledProcessError), t.phase("b"):
        raise failed
    with pytest.raises(CommandFailed), t.phase("c"):
        raise CommandFailed("node2", "false", None, "")
    errors = {p["name"]: p["error"] for p in t.phases}
    assert errors["a"] == f"RuntimeError: {long_line}"
    assert "exit status 3" in errors["b"]
    assert "timed out" in errors["c"] and "node2" in errors["c"]


def test_phases_carry_ids_and_their_parents_ids(t: Timings) -> None:
    """Schema 2: a repeated name never makes a parent ambiguous."""
    import threading

    with t.phase("test") as first, t.phase("restore"):
        pass
    with t.phase("test") as second:
        def worker() -> None:
            with t.phase("restore", parent=second):
                t.record("revert", 0.5)
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        with t.phase("named", parent="test"):  # by name: the open one
            pass
    phases = t.phases
    ids = [p["id"] for p in phases]
    assert len(set(ids)) == len(ids)
    by_id = {p["id"]: p for p in phases}
    restores = [p for p in phases if p["name"] == "restore"]
    assert [by_id[p["parent_id"]]["id"] for p in restores] == [first.id, second.id]
    (revert,) = [p for p in phases if p["name"] == "revert"]
    assert revert["parent_id"] == restores[1]["id"]
    (named,) = [p for p in phases if p["name"] == "named"]
    assert named["parent_id"] == second.id
    assert {p["parent_id"] for p in phases if p["name"] == "test"} == {None}
