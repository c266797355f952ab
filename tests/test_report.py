"""Tests for lab.report: HTML + PNG report from one or several runs."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lab import report
from lab.report import ReportError, render
from lab.timings import Timings

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T0 = datetime(2026, 11, 20, 9, 0, 0, tzinfo=UTC)


def make_run(
    root: Path, run_id: str, started: datetime, scale: float = 1.0, fail: bool = False
) -> Path:
    """Write a realistic fake run: bring-up with nested phases, a scenario, teardown."""
    t = Timings(
        root / run_id,
        run_id,
        host={"cores": 8, "memory_mib": 32000, "git_commit": "abc123def4567890"},
        meta={
            "accelerator": "kvm",
            "image_keys": ["debian12-3.1"],
            "ganeti_versions": {"node1": "3.1.0"},
        },
    )
    t.started = started

    def rec(name: str, offset: float, secs: float, parent: str | None, **kw: object) -> None:
        t.record(
            name,
            secs * scale,
            parent=parent,
            start=started + timedelta(seconds=offset * scale),
            **kw,
        )

    rec("bring-up", 0, 100, None, nodes=3)
    rec("vagrant-up", 1, 60, "bring-up")
    rec("node1", 1, 30, "vagrant-up")
    rec("node2", 31, 29, "vagrant-up")
    rec("cluster-init", 62, 35, "bring-up")
    rec(
        "scenario-failover",
        101,
        40,
        None,
        outcome="failed" if fail else "passed",
        error="timeout" if fail else None,
    )
    rec("teardown", 142, 8, None)
    t.write()
    return t.run_dir


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert len(data) > 1000
    assert data[:8] == PNG_MAGIC


def test_single_run(tmp_path: Path) -> None:
    run = make_run(tmp_path, "20261120T090000Z-aaaa", T0)
    out = render([run])
    assert out == run / "report.html"
    html = out.read_text()
    for name in (
        "bring-up",
        "vagrant-up",
        "node1",
        "node2",
        "cluster-init",
        "scenario-failover",
        "teardown",
    ):
        assert name in html
    assert "20261120T090000Z-aaaa" in html
    assert "kvm" in html and "debian12-3.1" in html and "3.1.0" in html
    assert "abc123def456" in html
    assert "31.2 GiB" in html
    # Nesting is shown by indentation (padding grows with depth).
    assert re.search(r'padding-left: 44px">node1<', html)
    assert_png(run / "report-timeline.png")
    assert 'src="report-timeline.png"' in html
    assert not (run / "report-trend.png").exists()
    assert "<script" not in html and "http://" not in html and "https://" not in html


def test_three_runs_with_regression(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    a = make_run(runs_dir, "20261120T090000Z-aaaa", T0)
    b = make_run(runs_dir, "20261121T090000Z-bbbb", T0 + timedelta(days=1), scale=1.05)
    c = make_run(runs_dir, "20261122T090000Z-cccc", T0 + timedelta(days=2), scale=1.6, fail=True)
    out_dir = tmp_path / "report"
    # Order of arguments does not matter: the latest start is "this run".
    out = render([c, a, b], out_dir / "index.html")
    assert out == out_dir / "index.html"
    html = out.read_text()
    assert "<h1>Run <code>20261122T090000Z-cccc</code></h1>" in html
    for run_id in ("aaaa", "bbbb", "cccc"):
        assert run_id in html
    assert_png(out_dir / "index-timeline.png")
    assert_png(out_dir / "index-trend.png")
    # Every phase got 1.6x slower than the median of the earlier runs.
    regress_rows = re.findall(r'<tr class="regress">\s*<td>([^<]+)</td>', html)
    assert "bring-up" in regress_rows
    assert "bring-up \u203a vagrant-up \u203a node1" in regress_rows
    assert "\u00d71.56" in html  # 160 / median(100, 105)
    assert "timeout" in html and "o-failed" in html


def test_no_regression_without_slowdown(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    make_run(runs_dir, "r1", T0)
    make_run(runs_dir, "r2", T0 + timedelta(hours=1), scale=1.1)
    make_run(runs_dir, "r3", T0 + timedelta(hours=2), scale=0.9)
    out = render([runs_dir])  # a parent directory of run dirs is expanded
    assert out == runs_dir / "r3" / "report.html"
    html = out.read_text()
    assert 'class="regress"' not in html
    assert "r1" in html and "r2" in html
    assert_png(runs_dir / "r3" / "report-trend.png")


def test_html_is_escaped(tmp_path: Path) -> None:
    t = Timings(tmp_path / "x", "x<y")
    t.record("<script>alert(1)</script>", 1.0, note="<b>")
    t.write()
    html = render([tmp_path / "x"]).read_text()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "x&lt;y" in html


def test_run_without_phases(tmp_path: Path) -> None:
    Timings(tmp_path / "empty", "empty").write()
    html = render([tmp_path / "empty"]).read_text()
    assert "No phases were recorded" in html
    assert not (tmp_path / "empty" / "report-timeline.png").exists()


def test_timings_file_itself_accepted(tmp_path: Path) -> None:
    run = make_run(tmp_path, "solo", T0)
    out = render([run / "timings.json"], tmp_path / "out")
    assert out == tmp_path / "out" / "report.html"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{broken", "unreadable"),
        (json.dumps({"schema": 7, "phases": []}), "schema"),
        (
            json.dumps(
                {
                    "schema": 1,
                    "started": "2026-01-01T00:00:00Z",
                    "phases": [{"name": "x", "seconds": "slow", "start": "2026-01-01T00:00:00Z"}],
                }
            ),
            "seconds",
        ),
        (json.dumps({"schema": 1, "started": "yesterday", "phases": []}), "started"),
    ],
)
def test_broken_file_raises_report_error(tmp_path: Path, content: str, needle: str) -> None:
    good = make_run(tmp_path, "good", T0)
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    (bad_dir / "timings.json").write_text(content)
    with pytest.raises(ReportError, match=needle) as exc:
        render([good, bad_dir])
    assert str(bad_dir / "timings.json") in str(exc.value)


def test_missing_file_raises_report_error(tmp_path: Path) -> None:
    (tmp_path / "nothing-here").mkdir()
    with pytest.raises(ReportError, match=re.escape(str(tmp_path / "nothing-here"))):
        render([tmp_path / "nothing-here"])
    with pytest.raises(ReportError, match="no such file"):
        render([tmp_path / "does-not-exist"])


def test_parents_are_linked_by_id_where_names_repeat(tmp_path: Path) -> None:
    """Two labs booting at once: both phases are named "lab up" and overlap. Schema 2 keeps
    each boot under its own lab; by name alone the second boot would go under the later one."""
    from lab import report

    t = Timings(tmp_path / "r", "r")
    t.started = T0
    first = {"id": 1, "name": "lab up", "parent": None, "parent_id": None}
    second = {"id": 2, "name": "lab up", "parent": None, "parent_id": None}
    boot = {"id": 3, "name": "boot", "parent": "lab up", "parent_id": 1}
    doc = t.to_dict()
    doc["phases"] = [
        dict(p, start=(T0 + timedelta(seconds=offset)).isoformat(), seconds=100.0,
             outcome="passed", error=None, metrics={})
        for p, offset in ((first, 0), (second, 10), (boot, 20))]
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "timings.json").write_text(json.dumps(doc))
    run = report._load_run(tmp_path / "r" / "timings.json")
    (linked,) = [p for p in run.phases if p.name == "boot"]
    assert linked.up is not None and linked.up.id == 1

    for p in doc["phases"]:  # the same file as schema 1 wrote it: the heuristic decides
        del p["id"], p["parent_id"]
    doc["schema"] = 1
    (tmp_path / "r" / "timings.json").write_text(json.dumps(doc))
    run = report._load_run(tmp_path / "r" / "timings.json")
    (linked,) = [p for p in run.phases if p.name == "boot"]
    assert linked.up is not None and linked.up.offset == 10


def test_a_runbook_phase_gets_a_timeline_of_its_own(tmp_path: Path) -> None:
    run = tmp_path / "20261126T090000Z-rbk1"
    t = Timings(run, run.name)
    t.started = T0
    t.record("bring-up", 100, parent=None, start=T0)
    t.record("roll & deploy", 300, parent=None, start=T0 + timedelta(seconds=200),
             timeline=True)
    t.record("node1: re-image", 120, parent="roll & deploy",
             start=T0 + timedelta(seconds=260))
    t.record("node1: gnt-node add --readd", 80, parent="roll & deploy",
             start=T0 + timedelta(seconds=380))
    t.write()
    html = render([run]).read_text()
    assert html.count("<h2>Timeline: ") == 1
    assert "<h2>Timeline: roll &amp; deploy</h2>" in html
    assert_png(run / "report-runbook-1.png")
    assert 'src="report-runbook-1.png"' in html
    # A render of a run without one leaves no stale runbook plot behind.
    (run / "report-runbook-2.png").write_bytes(PNG_MAGIC)
    render([make_run(tmp_path, "20261120T090000Z-aaaa", T0)], run / "report.html")
    assert not list(run.glob("report-runbook-*.png"))


def test_phases_with_a_table_title_are_compared_side_by_side(tmp_path: Path) -> None:
    run = tmp_path / "20261126T090000Z-tbl1"
    t = Timings(run, run.name)
    t.started = T0
    t.record("move inst1.lab", 180, parent=None, start=T0, table="Moves",
             **{"source version": "3.1", "MiB/s": 2.6})
    t.record("live migration inst2.lab", 46, parent=None, start=T0 + timedelta(seconds=200),
             table="Moves", **{"downtime seconds": 1.5})
    t.record("unrelated", 5, parent=None, start=T0 + timedelta(seconds=300), count=3)
    t.write()
    html = render([run]).read_text()
    section = html.split("<h2>Moves</h2>", 1)[1].split("</table>", 1)[0]
    header = re.findall(r"<th[^>]*>([^<]*)</th>", section)
    assert header == ["Phase", "Outcome", "Seconds", "source version", "MiB/s",
                      "downtime seconds"]
    rows = section.split("<tr>")[2:]
    assert len(rows) == 2 and "unrelated" not in section
    # A figure a phase lacks shows as a dash, not as another phase's value.
    first = re.findall(r"<td>([^<]*)</td>", rows[0])
    assert first[0] == "move inst1.lab" and first[-3:] == ["3.1", "2.6", report._DASH]
