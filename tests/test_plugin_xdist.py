"""The pytest plugin (lab/pytest_plugin.py) under pytest-xdist: one lab per worker, named
`<name>-<workerid>`, and one timing record per worker below the run's directory.

xdist workers are subprocesses, so the inner pytest runs in a subprocess (pytester) with an
explicit `--lab-runs` below its temporary directory. No lab is ever brought up: the inner
conftest overrides `lab_host` (no virtualization check, no image build) and, at import time
(so in every worker), replaces `LabSession.start` by a recorder returning a dummy lab and
`LabSession.finish` by a no-op. The plugin's real `lab` fixture, and its naming, still run.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lab.timings import Timings

pytest_plugins = ["pytester"]

RUN_ID = "xdist-test-run"
WORKERS = ("gw0", "gw1")
TIMEOUT = 180  # seconds for one inner run (a guard, not an expectation)

RECORDING_CONFTEST = """
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from lab.session import LabSession

NAMES = Path(__file__).parent / "lab-names"


def _start(self):
    NAMES.mkdir(exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "controller")
    with open(NAMES / f"{worker}.txt", "a", encoding="utf-8") as fh:
        fh.write(f"{self.name}\\n")
    self.lab = None  # nothing for finish or artifact collection to touch
    return SimpleNamespace(name=self.name, accelerator="dummy",
                           plan=SimpleNamespace(machines=[]))


def _finish(self, failed):
    return None


LabSession.start = _start
LabSession.finish = _finish


@pytest.fixture(scope="session")
def lab_host():
    return None
"""

LAB_TESTS = """
def test_one(lab):
    assert lab.accelerator == "dummy"

def test_two(lab):
    assert lab.accelerator == "dummy"

def test_three(lab):
    assert lab.accelerator == "dummy"

def test_four(lab):
    assert lab.accelerator == "dummy"
"""
TEST_NAMES = {"test_one", "test_two", "test_three", "test_four"}


@pytest.fixture
def runs(pytester: pytest.Pytester) -> Path:
    return pytester.path / "lab-runs"


@pytest.fixture
def inner(pytester: pytest.Pytester, runs: Path):
    """An inner `pytest -n 2` in a subprocess, with the recording conftest and 4 lab tests."""
    pytester.makeconftest(RECORDING_CONFTEST)
    pytester.makepyfile(test_labs=LAB_TESTS)

    def _run(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--lab-runs={runs}",
                                             "-n", "2", *args, timeout=TIMEOUT)

    return _run


@pytest.fixture
def run_id(monkeypatch: pytest.MonkeyPatch) -> str:
    # runpytest_subprocess inherits os.environ, and xdist workers inherit the controller's.
    monkeypatch.setenv("GANETI_LAB_RUN_ID", RUN_ID)
    return RUN_ID


def recorded(pytester: pytest.Pytester) -> dict[str, list[str]]:
    """Lab names each process asked LabSession.start for: {worker id: [names]}."""
    names = pytester.path / "lab-names"
    return {p.stem: p.read_text(encoding="utf-8").split()
            for p in sorted(names.glob("*.txt"))} if names.is_dir() else {}


def test_each_worker_gets_its_own_lab_and_timings(inner, pytester, runs, run_id) -> None:
    result = inner("--dist=each")
    result.assert_outcomes(passed=2 * len(TEST_NAMES))
    assert result.ret == pytest.ExitCode.OK

    # (1) one session-scoped lab per worker, named after the worker; none on the controller
    assert recorded(pytester) == {"gw0": ["default-gw0"], "gw1": ["default-gw1"]}

    # (2) one timing record per worker, in <lab-runs>/<run-id>/<worker>/
    run_dir = runs / run_id
    assert sorted(p.name for p in runs.iterdir()) == [run_id]
    assert not (run_dir / "timings.json").exists()  # the controller runs no lab phases
    for worker in WORKERS:
        doc = Timings.load(run_dir / worker / "timings.json")
        assert doc["run_id"] == run_id
        assert doc["meta"]["worker"] == worker
        assert doc["meta"]["exitstatus"] == int(pytest.ExitCode.OK)
        assert doc["host"]["accelerator"] == "dummy"
        phases = {p["name"]: p for p in doc["phases"]}
        assert set(phases) == {f"test test_labs.py::{name}" for name in TEST_NAMES}
        assert {p["outcome"] for p in phases.values()} == {"passed"}

    # the controller writes the run's junit report, with every worker's results
    cases = [c.get("name") for c in ET.parse(run_dir / "junit.xml").getroot().iter("testcase")]
    assert sorted(cases) == sorted(2 * list(TEST_NAMES))


def test_load_distribution_names_labs_per_worker(inner, pytester, runs, run_id) -> None:
    result = inner("--dist=load", "--lab-name=mylab")
    result.assert_outcomes(passed=len(TEST_NAMES))
    assert result.ret == pytest.ExitCode.OK

    names = recorded(pytester)
    assert set(names) <= set(WORKERS)
    for worker, started in names.items():
        assert started == [f"mylab-{worker}"]  # once per worker, however many tests it ran
    assert set(names) == set(WORKERS), f"expected both workers to run tests: {names}"

    # every test ran exactly once, and its phase is in the record of the worker that ran it
    seen: list[str] = []
    for worker in names:
        doc = Timings.load(runs / run_id / worker / "timings.json")
        assert doc["meta"]["worker"] == worker
        seen += [p["name"] for p in doc["phases"]]
    assert sorted(seen) == sorted(f"test test_labs.py::{name}" for name in TEST_NAMES)


def test_workers_share_the_run_id_without_env(inner, runs, monkeypatch) -> None:
    monkeypatch.delenv("GANETI_LAB_RUN_ID", raising=False)
    result = inner("--dist=each")
    result.assert_outcomes(passed=2 * len(TEST_NAMES))
    run_dirs = sorted(p.name for p in runs.iterdir())
    assert len(run_dirs) == 1, f"one run, several run directories: {run_dirs}"
    for worker in WORKERS:
        assert (runs / run_dirs[0] / worker / "timings.json").is_file()


OTHER_TESTS = """
import os

def _ran():
    with open(os.path.join(os.path.dirname(__file__), "other-workers.txt"), "a") as fh:
        fh.write(os.environ.get("PYTEST_XDIST_WORKER", "controller") + "\\n")

""" + "".join(f"""
def test_unit_{i}():
    import time
    time.sleep(0.3)
    _ran()
""" for i in range(8)) + """
def test_own_lab(lab_host):  # a lab of its own: not the session's
    _ran()
"""


def test_loadgroup_runs_the_session_labs_tests_on_one_worker_and_the_rest_beside(
        inner, pytester, runs, run_id) -> None:
    """CI's way (`-n 2 --dist loadgroup`): the session's lab is brought up once, on one
    worker, which runs every test that uses it, in the plugin's order; the other tests
    (unit tests, a test with a lab of its own) run on the other worker meanwhile."""
    pytester.makepyfile(test_others=OTHER_TESTS)
    result = inner("--dist=loadgroup")
    result.assert_outcomes(passed=len(TEST_NAMES) + 9)
    names = recorded(pytester)
    assert len(names) == 1, f"the session's lab was brought up on several workers: {names}"
    ((lab_worker, started),) = names.items()
    assert started == [f"default-{lab_worker}"]
    doc = Timings.load(runs / run_id / lab_worker / "timings.json")
    # Phase names carry no xdist group suffix.
    assert {p["name"] for p in doc["phases"]} >= {
        f"test test_labs.py::{name}" for name in TEST_NAMES}
    # The controller shows each worker's live lines (a worker's own terminal is nobody's).
    result.stdout.fnmatch_lines([f"[[]lab {lab_worker}[]] starting: test test_labs.py::test_*"])
    assert (runs / run_id / lab_worker / "live.log").is_file()
    others = (pytester.path / "other-workers.txt").read_text().split()
    assert len(others) == 9
    (other_worker,) = set(WORKERS) - {lab_worker}
    assert other_worker in others, f"nothing ran beside the session's lab: {others}"


def test_the_controller_shows_only_whole_lines_of_each_worker(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from lab.pytest_plugin import _WorkerLines

    shown: list[str] = []
    reporter = SimpleNamespace(write_line=shown.append)
    config = SimpleNamespace(pluginmanager=SimpleNamespace(get_plugin=lambda name: reporter))
    follower = _WorkerLines(config, tmp_path)  # type: ignore[arg-type]
    (tmp_path / "gw0").mkdir()
    (tmp_path / "gw1").mkdir()
    with (tmp_path / "gw0" / "live.log").open("a") as gw0:
        gw0.write("starting: lab up\nwaiting up to 600 s for SS")
    (tmp_path / "gw1" / "live.log").write_text("starting: test tests/test_images.py::x\n")
    follower.flush()
    assert shown == ["[lab gw0] starting: lab up",
                     "[lab gw1] starting: test tests/test_images.py::x"]
    with (tmp_path / "gw0" / "live.log").open("a") as gw0:
        gw0.write("H on node1\n")
    follower.flush()
    follower.flush()  # nothing new: nothing shown twice
    assert shown[2:] == ["[lab gw0] waiting up to 600 s for SSH on node1"]
