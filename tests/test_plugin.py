"""Tests for the pytest plugin (lab/pytest_plugin.py, entry point `ganeti_lab`).

Every test runs an inner pytest in-process (pytester) in a temporary directory, with an
explicit `--lab-runs` below it, and never brings up a lab: virtualization is faked, or the
`lab` fixture is overridden by a dummy in the inner conftest.
"""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

# Imported here, before any inner run: pytester drops the modules an inner run imported, and
# numpy (matplotlib, used by the report) cannot be imported a second time in one process.
import matplotlib.backends.backend_agg
import matplotlib.dates
import matplotlib.figure
import matplotlib.patches  # noqa: F401
import pytest

import lab.artifacts
import lab.pytest_plugin as plugin
from lab.pytest_plugin import SizeProfile
from lab.snapshots import Restored, Snapshot
from lab.timings import Timings

pytest_plugins = ["pytester"]

RUN_ID = "plugin-test-run"
NO_VIRT = "qemu-system-x86_64 is not installed"
LAB_OPTIONS = (
    "--lab-topology",
    "--lab-name",
    "--lab-force",
    "--lab-reuse",
    "--lab-keep",
    "--lab-required",
    "--lab-artifacts",
    "--lab-runs",
    "--lab-profile",
)
PLUGIN_FIXTURES = ("lab", "lab_host", "cluster", "clusters", "lab_reset", "timings", "lab_profile")
PLUGIN_LOGGERS = ("lab.timings", "lab.session", "lab.machines", "lab.ganeti", "lab.remote",
                  "lab.waiting")

DUMMY_LAB_CONFTEST = """
import pytest

@pytest.fixture(scope="session")
def lab():
    return None
"""


@pytest.fixture(autouse=True)
def _isolated_lab_logging() -> Iterator[None]:
    """The plugin's pytest_configure adds a terminal handler to the lab loggers of every
    (inner) config and never removes it: keep the inner runs' handlers from outliving them
    (they would write to a closed capture) and the outer run's from echoing inner lines."""
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level)
             for name in PLUGIN_LOGGERS}
    for name in PLUGIN_LOGGERS:
        logging.getLogger(name).handlers = []
    yield
    for name, (handlers, level) in saved.items():
        logging.getLogger(name).handlers = handlers
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def runs(pytester: pytest.Pytester) -> Path:
    return pytester.path / "lab-runs"


@pytest.fixture
def run(pytester: pytest.Pytester, runs: Path):
    """Run the inner pytest in-process, never writing outside pytester's directory."""

    def _run(*args: str) -> pytest.RunResult:
        return pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--lab-runs={runs}",
                                            *args)

    return _run


@pytest.fixture
def no_virt(monkeypatch: pytest.MonkeyPatch) -> None:
    def problem() -> str:
        return NO_VIRT

    monkeypatch.setattr(plugin, "virtualization_problem", problem)


@pytest.fixture
def run_dir(monkeypatch: pytest.MonkeyPatch, runs: Path) -> Path:
    monkeypatch.setenv("GANETI_LAB_RUN_ID", RUN_ID)
    return runs / RUN_ID


def outcomes(result: pytest.RunResult) -> dict[str, int]:
    # pytest's own warnings about the inner session (an already imported `lab` it cannot
    # rewrite, after other in-process runs of the full suite) are not the tests' outcomes.
    return {k: v for k, v in result.parseoutcomes().items() if k not in ("warning", "warnings")}


# 1. options --------------------------------------------------------------------------------


def test_options_documented_in_help(run) -> None:
    result = run("--help")
    assert result.ret == pytest.ExitCode.OK
    out = result.stdout.str()
    assert "ganeti-lab labs:" in out
    section = out[out.index("ganeti-lab labs:"):]
    for option in LAB_OPTIONS:
        match = re.search(rf"^\s+{re.escape(option)}(=\S+)?\s+(\S.*)$", section, re.MULTILINE)
        assert match, f"{option} is not listed with a help text in the ganeti-lab group"
    flat = " ".join(section.split())
    for words in ("topology TOML file", "reuse a running lab", "always, failed",
                  "not a skip", "run records", "scenario size profile"):
        assert words in flat


@pytest.mark.parametrize("option", ["--lab-keep=bogus", "--lab-profile=huge"])
def test_bad_choice_rejected(run, pytester: pytest.Pytester, option: str) -> None:
    pytester.makepyfile(test_x="def test_x(): pass")
    result = run(option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    value = option.split("=")[1]
    result.stderr.fnmatch_lines([f"*invalid choice: '{value}'*"])
    assert "passed" not in result.stdout.str()


@pytest.mark.parametrize("keep", ["always", "failed", "never"])
def test_keep_policies_accepted(run, pytester: pytest.Pytester, keep: str) -> None:
    pytester.makepyfile(test_x="def test_x(): pass")
    result = run(f"--lab-keep={keep}")
    result.assert_outcomes(passed=1)


# 2. marker ---------------------------------------------------------------------------------


def test_lab_marker_registered_for_strict_markers(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_marked="""
        import pytest

        @pytest.mark.lab(layout="two-clusters")
        def test_marked():
            pass
    """)
    result = run("--strict-markers")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK


def test_unregistered_marker_still_rejected(run, pytester: pytest.Pytester) -> None:
    # Control for the test above: --strict-markers does reject an unknown marker here.
    pytester.makepyfile(test_marked="""
        import pytest

        @pytest.mark.labb(layout="two-clusters")
        def test_marked():
            pass
    """)
    result = run("--strict-markers")
    assert result.ret != pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*'labb' not found in `markers`*"])


def test_markers_lists_lab(run) -> None:
    result = run("--markers")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([
        "@pytest.mark.lab(layout=NAME, reimages=False): the test needs the lab's*",
        "@pytest.mark.nightly(reason=...): a lab test that runs nightly*"])


# 3. fixtures -------------------------------------------------------------------------------


def test_fixtures_documented(run) -> None:
    result = run("--fixtures")
    assert result.ret == pytest.ExitCode.OK
    lines = result.stdout.lines
    for name in PLUGIN_FIXTURES:
        heads = [i for i, line in enumerate(lines)
                 if re.match(rf"^{name}( \[\w+ scope\])?( -- .*)?$", line)]
        assert len(heads) == 1, f"fixture {name} is not listed once: {heads}"
        desc = lines[heads[0] + 1]
        assert desc.startswith("    ") and desc.strip(), f"fixture {name} has no description"
        assert "no docstring" not in desc
        assert len(desc.strip()) > 20


def test_fixture_scopes(run) -> None:
    result = run("--fixtures")
    out = result.stdout.str()
    for name in ("lab", "lab_host", "lab_profile"):
        assert re.search(rf"^{name} \[session scope\]", out, re.MULTILINE), name
    for name in ("cluster", "clusters", "lab_reset", "timings"):
        assert re.search(rf"^{name}( -- .*)?$", out, re.MULTILINE), name


# 4. no virtualization ----------------------------------------------------------------------

NEEDS_LAB = """
def test_host(lab_host):
    raise AssertionError("must not run without virtualization")

def test_lab(lab):
    raise AssertionError("must not run without virtualization")

def test_plain():
    assert 1 + 1 == 2
"""


def test_no_virtualization_skips_lab_tests(run, pytester, no_virt, runs) -> None:
    pytester.makepyfile(test_needs_lab=NEEDS_LAB)
    result = run("-rs")
    result.assert_outcomes(passed=1, skipped=2)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([f"SKIPPED * no virtualization: {NO_VIRT}"])
    assert "must not run" not in result.stdout.str()


def test_no_virtualization_with_lab_required_fails(run, pytester, no_virt) -> None:
    pytester.makepyfile(test_needs_lab=NEEDS_LAB)
    result = run("--lab-required")
    # pytest.fail in the (session) fixture: both lab tests fail at setup.
    result.assert_outcomes(passed=1, errors=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert "--lab-required" in out
    assert NO_VIRT in out
    result.stdout.fnmatch_lines([f"*no virtualization (--lab-required): {NO_VIRT}*"])
    assert "must not run" not in out


def test_plain_tests_never_check_virtualization(run, pytester, monkeypatch) -> None:
    calls: list[int] = []

    def problem() -> str:
        calls.append(1)
        return NO_VIRT

    monkeypatch.setattr(plugin, "virtualization_problem", problem)
    pytester.makepyfile(test_plain="def test_a(): pass\ndef test_b(timings): pass\n")
    result = run("--lab-required")
    result.assert_outcomes(passed=2)
    assert calls == []


# 5. timing records -------------------------------------------------------------------------

TIMED = """
def test_work(timings):
    with timings.phase("inner work", things=3) as p:
        p.metric("label", "x")

def test_broken(timings):
    raise AssertionError("boom")

def test_plain():
    pass
"""


def test_timings_record_and_report(run, pytester, run_dir: Path) -> None:
    pytester.makepyfile(test_timed=TIMED)
    result = run()
    result.assert_outcomes(passed=2, failed=1)

    doc = Timings.load(run_dir / "timings.json")
    assert doc["run_id"] == RUN_ID
    assert doc["meta"]["profile"] == "small"
    assert doc["meta"]["exitstatus"] == int(pytest.ExitCode.TESTS_FAILED)
    phases = {p["name"]: p for p in doc["phases"]}
    work, broken = "test test_timed.py::test_work", "test test_timed.py::test_broken"
    assert phases[work]["outcome"] == "passed"
    assert phases[work]["parent"] is None
    assert phases[broken]["outcome"] == "failed"
    assert "AssertionError: boom" in phases[broken]["error"]
    inner = phases["inner work"]
    assert inner["parent"] == work
    assert inner["outcome"] == "passed"
    assert inner["metrics"] == {"things": 3, "label": "x"}
    assert phases[work]["seconds"] >= inner["seconds"] >= 0
    # plain tests are not lab phases
    assert not any("test_plain" in name for name in phases)

    junit = run_dir / "junit.xml"
    assert junit.is_file()
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert set(cases) == {"test_work", "test_broken", "test_plain"}
    props = {p.get("name"): p.get("value") for p in cases["test_work"].iter("property")}
    assert f"seconds:{work}" in props
    assert "seconds:inner work" in props
    assert float(props["seconds:inner work"]) >= 0
    assert props["inner work:things"] == "3"
    broken_props = {p.get("name") for p in cases["test_broken"].iter("property")}
    assert f"seconds:{broken}" in broken_props
    assert not list(cases["test_plain"].iter("property"))

    assert (run_dir / "report.html").is_file()
    assert (run_dir / "report.html").stat().st_size > 0

    result.stdout.fnmatch_lines(["[[]lab[]] finished: inner work in * s"])
    result.stdout.fnmatch_lines([f"[[]lab[]] timings: {run_dir / 'timings.json'}"])
    result.stdout.fnmatch_lines([f"[[]lab[]] report: {run_dir / 'report.html'}"])
    assert re.search(r"^\[lab\] finished: test test_timed.py::test_broken in [\d.]+ s "
                     r"\(failed: AssertionError: boom\)", result.stdout.str(), re.MULTILINE)


XFAILS = """
import pytest

@pytest.mark.xfail(raises=ValueError, strict=True, reason="known bug in 3.0.2")
def test_known_bug(timings):
    raise ValueError("the bug")

@pytest.mark.xfail(raises=ValueError, strict=True, reason="known bug in 3.0.2")
def test_other_error(timings):
    raise KeyError("not the bug")

@pytest.mark.xfail(False, reason="not on this host")
def test_condition_false(timings):
    raise ValueError("a real failure")
"""


def test_xfail_phases_are_xfailed_not_failed(run, pytester, run_dir: Path) -> None:
    pytester.makepyfile(test_xf=XFAILS)
    result = run()
    result.assert_outcomes(xfailed=1, failed=2)
    phases = {p["name"]: p for p in Timings.load(run_dir / "timings.json")["phases"]}
    known = phases["test test_xf.py::test_known_bug"]
    assert known["outcome"] == "xfailed"
    assert known["metrics"] == {"xfail_reason": "known bug in 3.0.2"}
    assert "ValueError: the bug" in known["error"]
    assert phases["test test_xf.py::test_other_error"]["outcome"] == "failed"
    assert phases["test test_xf.py::test_condition_false"]["outcome"] == "failed"


def test_explicit_junitxml_is_respected(run, pytester, run_dir: Path) -> None:
    pytester.makepyfile(test_timed=TIMED)
    other = pytester.path / "other.xml"
    result = run(f"--junitxml={other}")
    result.assert_outcomes(passed=2, failed=1)
    assert other.is_file()
    assert not (run_dir / "junit.xml").exists()
    assert (run_dir / "timings.json").is_file()


def test_no_lab_phases_no_timings(run, pytester, run_dir: Path) -> None:
    pytester.makepyfile(test_plain="def test_a(): pass")
    result = run()
    result.assert_outcomes(passed=1)
    assert (run_dir / "junit.xml").is_file()  # the run record exists anyway
    assert not (run_dir / "timings.json").exists()
    assert not (run_dir / "report.html").exists()
    assert "[lab] timings:" not in result.stdout.str()


def test_timings_nodeids_include_parametrize(run, pytester, run_dir: Path) -> None:
    pytester.makepyfile(test_param="""
        import pytest

        @pytest.mark.parametrize("n", [1, 2])
        def test_n(timings, n):
            with timings.phase(f"step {n}", n=n):
                pass
    """)
    run().assert_outcomes(passed=2)
    phases = {p["name"]: p for p in Timings.load(run_dir)["phases"]}
    for n in (1, 2):
        assert phases[f"step {n}"]["parent"] == f"test test_param.py::test_n[{n}]"
        assert phases[f"step {n}"]["metrics"] == {"n": n}


# 6. ordering -------------------------------------------------------------------------------


def test_lab_tests_grouped_by_layout(run, pytester) -> None:
    pytester.makeconftest(DUMMY_LAB_CONFTEST)
    pytester.makepyfile(
        test_a="""
            import pytest

            def test_plain_a():
                pass

            @pytest.mark.lab(layout="two-clusters")
            def test_two_1(lab):
                pass

            @pytest.mark.lab(layout="one-cluster")
            def test_one_1(cluster):
                pass

            @pytest.mark.lab(layout="two-clusters")
            def test_marked_without_lab_fixture():
                pass

            def test_timings_only(timings):
                pass

            @pytest.mark.lab(layout="two-clusters")
            def test_two_2(clusters):
                pass

            def test_lab_no_layout(lab_reset):
                pass
        """,
        test_b="""
            import pytest

            @pytest.mark.lab(layout="one-cluster")
            def test_one_2(lab):
                pass

            def test_plain_b():
                pass
        """,
    )
    result = run("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    ids = [line for line in result.stdout.lines if "::" in line]
    assert ids == [
        "test_a.py::test_plain_a",
        "test_a.py::test_marked_without_lab_fixture",
        "test_a.py::test_timings_only",
        "test_b.py::test_plain_b",
        "test_a.py::test_lab_no_layout",
        "test_a.py::test_one_1",
        "test_b.py::test_one_2",
        "test_a.py::test_two_1",
        "test_a.py::test_two_2",
    ]


def test_class_marker_counts_for_layout(run, pytester) -> None:
    pytester.makeconftest(DUMMY_LAB_CONFTEST)
    pytester.makepyfile(test_cls="""
        import pytest

        @pytest.mark.lab(layout="two-clusters")
        class TestZ:
            def test_z(self, lab):
                pass

        def test_a_layout_from_function(lab):
            pass

        @pytest.mark.lab(layout="one-cluster")
        def test_a(lab):
            pass
    """)
    result = run("--collect-only", "-q")
    ids = [line for line in result.stdout.lines if "::" in line]
    assert ids == [
        "test_cls.py::test_a_layout_from_function",
        "test_cls.py::test_a",
        "test_cls.py::TestZ::test_z",
    ]


# 7. size profile ---------------------------------------------------------------------------


def test_size_profile_pick() -> None:
    assert SizeProfile("small").pick(small=1, full=4) == 1
    assert SizeProfile("full").pick(small=1, full=4) == 4
    assert SizeProfile("small") == SizeProfile("small")
    with pytest.raises(AttributeError):
        SizeProfile("small").name = "full"  # type: ignore[misc]


@pytest.mark.parametrize(("args", "name", "count"),
                         [((), "small", 1), (("--lab-profile=small",), "small", 1),
                          (("--lab-profile=full",), "full", 4)])
def test_lab_profile_fixture(run, pytester, args, name, count) -> None:
    pytester.makepyfile(test_profile=f"""
        from lab.pytest_plugin import SizeProfile

        def test_profile(lab_profile):
            assert isinstance(lab_profile, SizeProfile)
            assert lab_profile.name == {name!r}
            assert lab_profile.pick(small=1, full=4) == {count}
    """)
    run(*args).assert_outcomes(passed=1)


def test_lab_profile_in_timings_meta(run, pytester, run_dir: Path) -> None:
    pytester.makepyfile(test_t="def test_t(timings):\n    pass\n")
    run("--lab-profile=full").assert_outcomes(passed=1)
    assert Timings.load(run_dir)["meta"]["profile"] == "full"


# 8. artifacts ------------------------------------------------------------------------------


def test_failed_lab_test_without_session_collects_nothing(run, pytester, runs, run_dir) -> None:
    pytester.makeconftest(DUMMY_LAB_CONFTEST)
    pytester.makepyfile(test_fail="""
        def test_fails(lab):
            assert lab is None
            raise AssertionError("scenario broke")

        def test_ok(lab):
            pass
    """)
    artifacts = pytester.path / "artifacts"
    result = run(f"--lab-artifacts={artifacts}")
    result.assert_outcomes(passed=1, failed=1, errors=0)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert "ERROR" not in out
    assert "scenario broke" in out
    assert not artifacts.exists()
    assert not (run_dir / "artifacts").exists()
    phases = {p["name"]: p for p in Timings.load(run_dir)["phases"]}
    assert phases["test test_fail.py::test_fails"]["outcome"] == "failed"
    assert not any(name.startswith("collect artifacts") for name in phases)


def test_failed_setup_of_lab_test_is_not_an_extra_error(run, pytester, run_dir) -> None:
    pytester.makeconftest(DUMMY_LAB_CONFTEST + """
@pytest.fixture
def broken(lab):
    raise RuntimeError("setup broke")
""")
    pytester.makepyfile(test_fail="def test_setup(broken):\n    pass\n")
    result = run()
    result.assert_outcomes(errors=1)
    assert result.stdout.str().count("setup broke") >= 1
    assert "teardown" not in result.stdout.str()


# Robustness of the run record --------------------------------------------------------------


def test_report_error_does_not_fail_the_run(run, pytester, run_dir, monkeypatch) -> None:
    from lab.report import ReportError

    def broken_render(*args, **kwargs):
        raise ReportError("no runs to plot")

    monkeypatch.setattr(plugin.report, "render", broken_render)
    pytester.makepyfile(test_t="def test_t(timings):\n    pass\n")
    result = run()
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    assert (run_dir / "timings.json").is_file()
    assert not (run_dir / "report.html").exists()
    assert "[lab] report:" not in result.stdout.str()


def test_report_crash_does_not_fail_the_run(run, pytester, run_dir, monkeypatch) -> None:
    def broken_render(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(plugin.report, "render", broken_render)
    pytester.makepyfile(test_t="def test_t(timings):\n    pass\n")
    result = run()
    assert (run_dir / "timings.json").is_file()
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1)


def test_terminal_log_handler_removed_after_run(run, pytester) -> None:
    pytester.makepyfile(test_t="def test_t(timings):\n    pass\n")
    run().assert_outcomes(passed=1)
    leftover = {name: logging.getLogger(name).handlers for name in PLUGIN_LOGGERS}
    assert leftover == {name: [] for name in PLUGIN_LOGGERS}


@pytest.mark.parametrize("name", ["..", "/", "a/b", "x--y", "x-", "Lab"])
def test_a_bad_lab_name_is_a_usage_error(run, pytester: pytest.Pytester, name: str) -> None:
    pytester.makepyfile(test_x="def test_x(): pass")
    result = run(f"--lab-name={name}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--lab-name: invalid lab name*"])


def test_sigterm_ends_the_session_with_its_teardown(pytester: pytest.Pytester) -> None:
    """SIGTERM (a CI time-out) gets what Ctrl-C gets: the session's teardown runs, which is
    where the lab is destroyed or kept."""
    marker = pytester.path / "teardown-ran"
    started = pytester.path / "test-started"
    pytester.makeconftest(f"""
        import pathlib, pytest

        @pytest.fixture(scope="session")
        def held():
            yield
            pathlib.Path({str(marker)!r}).write_text("torn down")
    """)
    pytester.makepyfile(test_long=f"""
        import pathlib, time

        def test_long(held):
            pathlib.Path({str(started)!r}).write_text("")
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                             f"--lab-runs={pytester.path / 'runs'}", "test_long.py"],
                            cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert started.exists(), "the inner test never started"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert marker.read_text() == "torn down", out
    assert "signal 15" in out


def test_nightly_tests_are_skipped_unless_asked_for(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_n="""
import pytest

@pytest.mark.nightly
def test_own_lab(): pass

def test_plain(): pass
""")
    ci = run("-rs")
    assert outcomes(ci) == {"passed": 1, "skipped": 1}
    ci.stdout.fnmatch_lines(["*nightly only (ganeti-lab run, or --lab-nightly)*"])
    assert outcomes(run("--lab-nightly")) == {"passed": 2}


def test_the_nightly_run_takes_the_tests_ci_leaves_to_it(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    import argparse

    from lab.cli import run as cli_run

    seen: list[list[str]] = []
    monkeypatch.setattr("pytest.main", lambda argv: seen.append(argv) or 0)
    monkeypatch.chdir(Path(__file__).parent.parent)  # the project's tree: tests/ at hand
    args = argparse.Namespace(scenarios="scenarios", profile="full", keep="failed",
                              runs=str(tmp_path), topology=None, name=None, reuse=False,
                              ganeti_patch=None, ganeti_patch_series="3.0",
                              ganeti_debs="build-area", cache="off", pytest_args=[])
    assert cli_run.cmd_run(args) == 0
    (argv,) = seen
    expected = ["scenarios", *cli_run.NIGHTLY_TESTS, "--lab-nightly"]
    assert argv[:len(expected)] == expected
    assert "--lab-profile=full" in argv
    assert "--ganeti-debs=build-area" in argv
    assert "--lab-cache=off" in argv  # the main job times the real boot and bootstraps


# 9. layouts ---------------------------------------------------------------------------------

FAKE_LAB_CONFTEST = """
import types

import pytest

import lab.pytest_plugin as plugin


@pytest.fixture(scope="session")
def lab(request):
    fake = types.SimpleNamespace(name="fake", plan=types.SimpleNamespace(
        default_layout="one-cluster", layouts={"one-cluster": []}))
    request.config.stash[plugin._state_key]["session"] = types.SimpleNamespace(lab=fake)
    return fake
"""


@pytest.fixture
def fake_layouts(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """The plugin's Ganeti calls, faked: what they were asked to do is recorded."""
    from types import SimpleNamespace

    calls: dict[str, list[str]] = {"ensure": [], "restore": [], "collect": []}
    live: dict[str, str | None] = {"layout": None}
    # A test of the fake lab says it left something in the layout by writing this file.
    changed = Path("layout-changed")

    def layout_changed(lab: object) -> str | None:
        return changed.read_text() if changed.exists() else None

    def ensure_layout(lab: object, layout: str, timings: object,
                      before_restore: object = None) -> dict[str, object]:
        calls["ensure"].append(layout)
        if live["layout"] == layout and changed.exists():
            calls["restore"].append(f"cluster-{layout} ({changed.read_text()})")
            changed.unlink()
        live["layout"] = layout
        return {}

    monkeypatch.setattr(plugin, "ensure_layout", ensure_layout)
    monkeypatch.setattr(plugin, "current_layout", lambda lab: live["layout"])
    monkeypatch.setattr(plugin, "layout_changed", layout_changed)
    monkeypatch.setattr(plugin, "layout_snapshot", lambda lab, layout: f"cluster-{layout}")
    def restore(lab: object, name: str) -> Restored:
        calls["restore"].append(name)
        return Restored(Snapshot(name, "then", 1.0, ["m"]), 2.0, 1.0)

    monkeypatch.setattr(plugin, "restore", restore)
    monkeypatch.setattr(plugin, "clusters_of", lambda lab, layout: {})
    monkeypatch.setattr(plugin, "ensure_healthy", lambda c: SimpleNamespace(seconds=0.1))
    monkeypatch.setattr(lab.artifacts, "collect",
                        lambda lab, where, masters: calls["collect"].append(where.name))
    return calls


def test_a_layout_the_topology_lacks_is_deselected_with_the_reason(run, pytester) -> None:
    pytester.makeconftest(DUMMY_LAB_CONFTEST)
    pytester.makepyfile(test_l="""
        import pytest

        @pytest.mark.lab(layout="three-racks")
        def test_three(lab):
            pass

        @pytest.mark.lab(layout="two-clusters")
        def test_two(lab):
            pass
    """)
    result = run("-rA")
    assert outcomes(result) == {"passed": 1, "deselected": 1}
    result.stdout.fnmatch_lines([
        "*lab tests deselected: their layout is not in the topology*",
        "test_l.py::test_three: layout 'three-racks' is not in topology *default.toml "
        "(it has one-cluster, two-clusters)"])


def test_a_layout_that_fails_to_form_fails_one_test_and_skips_the_rest(
        run, pytester, monkeypatch, fake_layouts) -> None:
    from lab.errors import LabError

    def broken(lab: object, layout: str, timings: object, before_restore: object = None
               ) -> None:
        fake_layouts["ensure"].append(layout)
        raise LabError("cluster1: gnt-node add node3.lab failed: exit 1", "see the artifacts")

    monkeypatch.setattr(plugin, "ensure_layout", broken)
    pytester.makeconftest(FAKE_LAB_CONFTEST)
    pytester.makepyfile(test_f="""
        def test_first(clusters):
            pass

        def test_second(lab_reset):
            pass
    """)
    result = run("-rA")
    assert outcomes(result) == {"errors": 1, "skipped": 1}
    assert fake_layouts["ensure"] == ["one-cluster"]  # tried once, not once per test
    result.stdout.fnmatch_lines([
        "*LabError: cluster1: gnt-node add node3.lab failed: exit 1*",
        "SKIPPED*layout one-cluster failed to form earlier in this run: cluster1: "
        "gnt-node add node3.lab failed: exit 1"])


def test_lab_reset_restores_once(run, pytester, fake_layouts) -> None:
    """The first test switches to the layout (restored or formed: already its snapshot's
    state); only a test after it on the same layout restores."""
    pytester.makeconftest(FAKE_LAB_CONFTEST)
    pytester.makepyfile(test_r="""
        def test_first(lab_reset):
            pass

        def test_second(lab_reset):
            pass
    """)
    assert outcomes(run()) == {"passed": 2}
    assert fake_layouts["ensure"] == ["one-cluster", "one-cluster"]
    assert fake_layouts["restore"] == ["cluster-one-cluster"]


def test_a_layout_a_test_left_changed_is_restored_once_for_the_next(
        run, pytester, fake_layouts) -> None:
    """A test's instances go with a restore: the next test gets one, whether it asked for a
    reset (restored by the layout's switch, not once more by lab_reset) or not."""
    pytester.makeconftest(FAKE_LAB_CONFTEST)
    pytester.makepyfile(test_c="""
        from pathlib import Path

        def test_pool(lab_reset):
            Path("layout-changed").write_text("test_pool left instances")

        def test_smoke(lab_reset):
            pass

        def test_tags(clusters):
            Path("layout-changed").write_text("test_tags left instances")

        def test_verify(clusters):
            pass
    """)
    assert outcomes(run()) == {"passed": 4}
    assert fake_layouts["restore"] == ["cluster-one-cluster (test_pool left instances)",
                                       "cluster-one-cluster (test_tags left instances)"]


def test_tests_that_reimage_run_after_every_other_lab_test(run, pytester) -> None:
    pytester.makeconftest(DUMMY_LAB_CONFTEST)
    pytester.makepyfile(test_a_roll="""
        import pytest

        @pytest.mark.lab(layout="one-cluster", reimages=True)
        def test_roll(lab):
            pass

        @pytest.mark.lab(layout="one-cluster")
        def test_upgrade(lab):
            pass
    """, test_b_plain="""
        import pytest

        @pytest.mark.lab(layout="two-clusters")
        def test_moves(lab):
            pass

        def test_unit():
            pass
    """)
    result = run("-v")
    assert outcomes(result) == {"passed": 4}
    order = [line.split(" ")[0] for line in result.outlines if " PASSED" in line]
    assert order == ["test_b_plain.py::test_unit", "test_a_roll.py::test_upgrade",
                     "test_b_plain.py::test_moves", "test_a_roll.py::test_roll"]


@pytest.mark.parametrize(("policy", "collected"), [
    ("on-failure", ["test_a.py_test_fails"]),
    ("always", ["test_a.py_test_fails", "test_a.py_test_passes"]),
    ("never", []),
])
def test_artifacts_policy(run, pytester, fake_layouts, policy: str,
                          collected: list[str]) -> None:
    pytester.makeconftest(FAKE_LAB_CONFTEST)
    pytester.makepyfile(test_a="""
        def test_fails(lab):
            assert False

        def test_passes(lab):
            pass
    """)
    result = run(f"--lab-artifacts-policy={policy}")
    assert outcomes(result) == {"failed": 1, "passed": 1}
    assert fake_layouts["collect"] == collected


def test_harness_errors_are_errors_and_ganeti_failures_are_failures(run, pytester,
                                                                       run_dir: Path) -> None:
    pytester.makeconftest(DUMMY_LAB_CONFTEST)
    pytester.makepyfile(test_e="""
        from lab.errors import GanetiFailure
        from lab.remote import Unreachable

        def test_machine_gone(lab):
            raise Unreachable("node3: no SSH answer for 120 s")

        def test_ganeti_refused(lab):
            raise GanetiFailure("cluster1.lab: gnt-instance add refused: insufficient memory")

        def test_data_differs(lab):
            assert "abc" == "abd"
    """)
    result = run("-rA")
    assert outcomes(result) == {"errors": 1, "failed": 2}
    result.stdout.fnmatch_lines(
        ["ERROR test_e.py::test_machine_gone - lab.remote.Unreachable: node3*"])
    phases = {p["name"]: p for p in Timings.load(run_dir)["phases"]}
    assert phases["test test_e.py::test_machine_gone"]["outcome"] == "error"
    assert phases["test test_e.py::test_ganeti_refused"]["outcome"] == "failed"
    assert phases["test test_e.py::test_data_differs"]["outcome"] == "failed"
