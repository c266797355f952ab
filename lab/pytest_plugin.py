"""pytest plugin (entry point `pytest11`): labs as fixtures, reset by snapshot, artifacts on
failure, and a timing record + report for every run.

With pytest-xdist each worker gets its own lab (the lab name gets the worker id appended, and
the lease book gives it its own subnets): tests that restore snapshots cannot share machines
with tests running at the same time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lab import report, statecache, topology
from lab import secrets as lab_secrets
from lab.errors import HarnessError, LabError
from lab.ganeti.bootstrap import (
    clusters_of,
    current_layout,
    ensure_layout,
    layout_changed,
    layout_snapshot,
)
from lab.ganeti.cluster import Cluster
from lab.ganeti.health import ensure_healthy
from lab.ganeti.patches import GanetiPatch
from lab.hostcheck import virtualization_problem
from lab.images import ImageStore, current_images
from lab.images.local_debs import LocalDebs
from lab.lab import Lab
from lab.names import name_problem
from lab.session import KEEP_POLICIES, LabSession
from lab.snapshots import restore
from lab.timings import Phase, Timings, host_facts, new_run_id

log = logging.getLogger("lab.pytest")
# The live log: every phase's start and end, every remote command and wait (with its bound).
LOGGERS = ("lab.timings", "lab.session", "lab.machines", "lab.ganeti", "lab.pytest",
           "lab.snapshots", "lab.statecache", "lab.artifacts", "lab.remote", "lab.waiting")
LAB_FIXTURES = {"lab", "cluster", "clusters", "lab_reset", "lab_host", "instances"}
# Under `pytest -n N --dist loadgroup` every test of the session's lab runs on one worker, in
# order; the others (unit tests, tests with a lab of their own) run beside it on the rest.
SESSION_LAB_GROUP = "session-lab"
LIVE_LOG = "live.log"  # an xdist worker's live lines, in its run directory
ARTIFACT_POLICIES = ("on-failure", "always", "never")
T = TypeVar("T")


@dataclass(frozen=True)
class SizeProfile:
    """Scenario sizes: `small` for CI, `full` for `ganeti-lab run`. Shrinks counts (and which
    nodes a scenario goes through), never the code paths."""

    name: str

    def pick(self, small: T, full: T) -> T:
        return small if self.name == "small" else full


_state_key = pytest.StashKey[dict[str, Any]]()
_report_key = pytest.StashKey[dict[str, pytest.TestReport]]()
_versions_key = pytest.StashKey[tuple[dict[str, Cluster], dict[str, str]]]()


NIGHTLY_ONLY = "nightly only (ganeti-lab run, or --lab-nightly)"
NIGHTLY_REASON = ("each boots a lab of its own, kept out of CI's time limit until lab boots are "
                  "faster (README)")


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("ganeti-lab", "ganeti-lab labs")
    g.addoption("--lab-topology", default=None,
                help="topology TOML file or built-in profile (default: ./lab.toml)")
    g.addoption("--lab-name", default=None, help="lab name (default: the topology's)")
    g.addoption("--lab-force", action="store_true",
                help="take over or destroy a lab of that name even if a live process owns it")
    g.addoption("--lab-reuse", action="store_true",
                help="reuse a running lab of that name (snapshot restore, no boot)")
    g.addoption("--lab-keep", choices=KEEP_POLICIES, default="never",
                help="keep the lab after the run: always, failed (only if a lab test "
                     "failed) or never (default)")
    g.addoption("--lab-required", action="store_true",
                help="no virtualization is an error, not a skip (CI)")
    g.addoption("--lab-artifacts", default=None,
                help="where tests' artifacts go (default: runs/<run-id>/artifacts)")
    g.addoption("--lab-artifacts-policy", choices=ARTIFACT_POLICIES, default="on-failure",
                help="collect a lab test's artifacts on-failure (default), always or never")
    g.addoption("--lab-runs", default="runs", help="directory of run records (default: runs)")
    g.addoption("--lab-nightly", action="store_true",
                help="also run the tests marked nightly (ganeti-lab run does; CI does not)")
    g.addoption("--lab-profile", choices=("small", "full"), default="small",
                help="scenario size profile: small (CI) or full (nightly, ganeti-lab run)")
    g.addoption("--lab-cache", choices=("on", "off"), default="off",
                help="the lab-state cache: start from a cached booted or cluster-ready state "
                     "when the host holds one, and store new ones (default off: tests prove "
                     "the real boot and bootstrap)")
    g.addoption("--ganeti-patch", default=None, metavar="FILE",
                help="a unified diff against Ganeti's Python tree, applied on the nodes of "
                     "every cluster of --ganeti-patch-series before it forms")
    g.addoption("--ganeti-patch-series", default="3.0", metavar="SERIES",
                help="the Ganeti series the patch is for (default 3.0)")
    g.addoption("--ganeti-debs", default=None, metavar="DIR",
                help="locally built Ganeti packages (.deb) layered into the hypervisor image "
                     "(an image key of its own)")


def pytest_configure(config: pytest.Config) -> None:
    name = config.getoption("--lab-name")
    if name is not None and (problem := name_problem(name)):
        raise pytest.UsageError(f"--lab-name: invalid lab name: {problem}")
    # In the environment, so that the library and every `ganeti-lab` a test starts see it.
    os.environ[statecache.ENV] = config.getoption("--lab-cache")
    if not hasattr(config, "workerinput"):
        _sigterm_as_interrupt(config)
    config.addinivalue_line(
        "markers", "lab(layout=NAME, reimages=False): the test needs the lab's clusters in "
                   "layout NAME (e.g. one-cluster, two-clusters); reimages=True: it re-images "
                   "machines, which no snapshot saved before can undo, so it runs after every "
                   "other lab test")
    config.addinivalue_line(
        "markers", "nightly(reason=...): a lab test that runs nightly (ganeti-lab run, "
                   "--lab-nightly) and not in CI, to keep CI within its time limit; the reason "
                   "says why it does not fit")
    workerinput = getattr(config, "workerinput", None)  # set by pytest-xdist on workers
    worker = workerinput["workerid"] if workerinput else None
    run_id = ((workerinput or {}).get("lab_run_id") or os.environ.get("GANETI_LAB_RUN_ID")
              or new_run_id())
    run_dir = Path(config.getoption("--lab-runs")) / run_id
    if worker:
        run_dir = run_dir / worker
    patch = None
    if config.getoption("--ganeti-patch"):
        try:
            patch = GanetiPatch.load(config.getoption("--ganeti-patch"),
                                     config.getoption("--ganeti-patch-series"))
        except LabError as exc:
            raise pytest.UsageError(f"--ganeti-patch: {exc}") from None
    debs = None
    if config.getoption("--ganeti-debs"):
        try:
            debs = LocalDebs.load(config.getoption("--ganeti-debs"))
        except LabError as exc:
            raise pytest.UsageError(str(exc)) from None
    meta: dict[str, Any] = {"profile": config.getoption("--lab-profile"), "worker": worker}
    if patch is not None:
        meta["ganeti_patch"] = patch.describe()
    if debs is not None:
        meta["ganeti_debs"] = debs.describe()
    timings = Timings(run_dir, run_id, host=host_facts(), meta=meta)
    config.stash[_state_key] = {"timings": timings, "run_dir": run_dir, "worker": worker,
                                "session": None, "lab_failed": False, "problem": None,
                                "ganeti_patch": patch, "ganeti_debs": debs}
    if not config.option.xmlpath and not worker:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.option.xmlpath = str(run_dir / "junit.xml")
    # An xdist worker's terminal is nobody's: its live lines go to a file the controller
    # follows (_WorkerLines), so CI's log still shows what each worker waits on.
    handler = _TerminalLine(config, run_dir / LIVE_LOG if worker else None)
    handler.setLevel(logging.INFO)
    config.stash[_state_key]["handler"] = handler
    for name in LOGGERS:
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    if not worker and getattr(config.option, "numprocesses", None):
        follower = _WorkerLines(config, run_dir)
        config.stash[_state_key]["follower"] = follower
        follower.start()


def _sigterm_as_interrupt(config: pytest.Config) -> None:
    """SIGTERM (a CI time-out, `kill`) ends the session like Ctrl-C does: pytest then still
    runs the session's teardown, which destroys (or keeps, per --lab-keep) the lab."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (pytest run in-process by a tool)
        return
    config.add_cleanup(lambda: signal.signal(signal.SIGTERM, previous))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: workers record into the controller's run directory."""
    node.workerinput["lab_run_id"] = node.config.stash[_state_key]["timings"].run_id


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_state_key, None)
    if state and state.get("follower"):
        state["follower"].stop()
    if state and state.get("handler"):
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(state["handler"])


class _TerminalLine(logging.Handler):
    """The live one-line-per-phase log, written past pytest's output capture (or, in an
    xdist worker, appended to ``path`` for the controller to show)."""

    def __init__(self, config: pytest.Config, path: Path | None = None) -> None:
        super().__init__()
        self.config = config
        self.path = path
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = lab_secrets.scrub(record.getMessage())  # a phase error may quote one
            if self.path is not None:
                with self._lock:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    with self.path.open("a", encoding="utf-8") as out:
                        out.write(line.replace("\n", " | ") + "\n")
                return
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            capture = self.config.pluginmanager.get_plugin("capturemanager")
            if reporter is None:
                return
            # Output capture is active while tests run: step around it, as live logging does.
            suspended = (capture.global_and_fixture_disabled() if capture is not None
                         else contextlib.nullcontext())
            with self._lock, suspended:  # phases also end in worker threads
                reporter.write_line(f"[lab] {line}")
        except Exception:
            self.handleError(record)


class _WorkerLines:
    """In the xdist controller: follows each worker's live log (<run>/<worker>/live.log) and
    writes its new lines to the terminal as ``[lab gw0] ...``, about once a second."""

    def __init__(self, config: pytest.Config, run_dir: Path, interval: float = 1.0) -> None:
        self.config, self.run_dir, self.interval = config, run_dir, interval
        self._offsets: dict[Path, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lab-worker-lines", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.flush()  # what the workers wrote last

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except Exception as exc:  # showing the workers' lines must never end the run
                log.debug("following the workers' live logs: %s", exc)

    def flush(self) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        for path in sorted(self.run_dir.glob(f"*/{LIVE_LOG}")):
            with path.open("rb") as log_file:
                log_file.seek(self._offsets.get(path, 0))
                chunk = log_file.read()
            complete = chunk[:chunk.rfind(b"\n") + 1]  # a line still being written waits
            self._offsets[path] = self._offsets.get(path, 0) + len(complete)
            for line in complete.decode("utf-8", "replace").splitlines():
                if reporter is not None:
                    reporter.write_line(f"[lab {path.parent.name}] {line}")


def _marked_layout(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("lab")
    return marker.kwargs.get("layout") if marker else None


def _reimages(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("lab")
    return bool(marker and marker.kwargs.get("reimages"))


def _topology_layouts(config: pytest.Config) -> tuple[str, set[str]] | None:
    """The layouts of the run's topology, or None when it cannot be read (the lab fixture
    then reports why). Memory is not checked here: that is the bring-up's business."""
    try:
        topo = topology.load(config.getoption("--lab-topology"), host_memory_mib=1 << 40)
    except LabError:
        return None
    return topo.source, set(topo.layouts)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (xdist/remote.py)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect lab tests whose layout the topology lacks (the summary says why), and group
    the others by layout, so each layout switch (a snapshot restore) happens once. Tests that
    re-image machines come last: after a re-image the lab's snapshots cannot be restored.

    Under pytest-xdist's ``--dist loadgroup`` the tests of the session's lab form one group
    (one worker, one lab, this order): a second worker would boot a second lab of the same
    topology, which on a small host costs more than it saves."""
    def is_lab_test(item: pytest.Item) -> bool:
        return bool(LAB_FIXTURES & set(getattr(item, "fixturenames", ())))

    known = _topology_layouts(config)
    if known is not None:
        source, layouts = known
        lacking = [i for i in items if is_lab_test(i)
                   and _marked_layout(i) not in (None, *layouts)]
        if lacking:
            reasons = _state(config).setdefault("deselected_layouts", [])
            for item in lacking:
                reasons.append(f"{item.nodeid}: layout {_marked_layout(item)!r} is not in "
                               f"topology {source} (it has {', '.join(sorted(layouts))})")
            config.hook.pytest_deselected(items=lacking)
            items[:] = [i for i in items if i not in lacking]

    def key(item: pytest.Item) -> tuple[int, str]:
        if not is_lab_test(item):
            return (0, "")
        return (2 if _reimages(item) else 1, _marked_layout(item) or "")

    items.sort(key=key)
    if getattr(config.option, "loadgroup", False):  # set in xdist's workers
        for item in items:
            if "lab" in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(SESSION_LAB_GROUP))
    if not config.getoption("--lab-nightly"):
        for item in items:
            marker = item.get_closest_marker("nightly")
            if marker:
                why = marker.kwargs.get("reason", NIGHTLY_REASON)
                item.add_marker(pytest.mark.skip(reason=f"{NIGHTLY_ONLY}: {why}"))


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config
                             ) -> tuple[str, str, tuple[str, dict[str, bool]]] | None:
    """A test the harness could not run (lab.errors.HarnessError: a machine, libvirt, Vagrant
    or SSH broke) is an error, not a failure: a failure is Ganeti's (lab.errors.GanetiFailure)
    or the test's own assertion."""
    if report.when == "call" and report.failed and getattr(report, "lab_harness_error", False):
        return "error", "E", ("ERROR", {"red": True})
    return None


def pytest_terminal_summary(terminalreporter: Any) -> None:
    reasons = _state(terminalreporter.config).get("deselected_layouts") or []
    if reasons:
        terminalreporter.write_sep("=", "lab tests deselected: their layout is not in the "
                                   "topology")
        for line in reasons:
            terminalreporter.write_line(line)


# Fixtures -------------------------------------------------------------------------------------


def _state(config: pytest.Config) -> dict[str, Any]:
    return config.stash[_state_key]


@pytest.fixture(scope="session")
def lab_host(request: pytest.FixtureRequest) -> ImageStore:
    """A host that can run labs, with current images (built here if missing)."""
    config = request.config
    problem = virtualization_problem()
    if problem:
        if config.getoption("--lab-required"):
            pytest.fail(f"no virtualization (--lab-required): {problem}", pytrace=False)
        pytest.skip(f"no virtualization: {problem}")
    state = _state(config)
    return current_images(timings=state["timings"], local_debs=state["ganeti_debs"])


@pytest.fixture(scope="session")
def lab(request: pytest.FixtureRequest, lab_host: ImageStore) -> Iterator[Lab]:
    """The session's lab: brought up once (images built if needed), or reused by name."""
    config = request.config
    state = _state(config)
    name = config.getoption("--lab-name")
    if state["worker"]:
        name = f"{name or 'default'}-{state['worker']}"
    session = LabSession(config.getoption("--lab-topology"), name,
                         config.getoption("--lab-reuse"), config.getoption("--lab-keep"),
                         state["timings"], force=config.getoption("--lab-force"),
                         ganeti_patch=state["ganeti_patch"], local_debs=state["ganeti_debs"])
    state["session"] = session
    try:
        lab = session.start()
    except LabError as exc:
        pytest.fail(f"lab bring-up failed: {exc}", pytrace=False)
    state["timings"].host["accelerator"] = lab.accelerator
    state["timings"].host["images"] = sorted({m.box for m in lab.plan.machines})
    yield lab
    session.finish(failed=state["lab_failed"])


@pytest.fixture(scope="session")
def lab_profile(request: pytest.FixtureRequest) -> SizeProfile:
    """Scenario size profile (--lab-profile): small in CI, full in the nightly run."""
    return SizeProfile(request.config.getoption("--lab-profile"))


def _layout(request: pytest.FixtureRequest) -> str | None:
    marker = request.node.get_closest_marker("lab")
    return marker.kwargs.get("layout") if marker else None


def _layout_ready(request: pytest.FixtureRequest, lab: Lab) -> dict[str, Cluster]:
    """ensure_layout for the test's layout. A layout that failed to form fails the test that
    tried it, with the whole error; every later test of that layout is skipped with it,
    instead of each trying again."""
    state = _state(request.config)
    layout = _layout(request) or lab.plan.default_layout
    failed: dict[str, str] = state.setdefault("failed_layouts", {})
    if layout in failed:
        pytest.skip(f"layout {layout} failed to form earlier in this run: {failed[layout]}")
    def before_restore() -> None:
        # A failed formation is undone by restoring the "booted" snapshot, which also takes
        # the nodes' logs back: what explains the failure is collected first.
        if request.config.getoption("--lab-artifacts-policy") != "never":
            _collect_artifacts(request, lab, layout, "-formation")

    try:
        return ensure_layout(lab, layout, state["timings"], before_restore=before_restore)
    except Exception as exc:
        failed[layout] = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise


@pytest.fixture
def clusters(request: pytest.FixtureRequest, lab: Lab) -> dict[str, Cluster]:
    """All clusters of the test's layout (marker `lab(layout=...)`), formed or restored."""
    found = _layout_ready(request, lab)
    versions = _state(request.config)["timings"].host.setdefault("ganeti", {})
    ran = {name: c.version_summary() for name, c in found.items()}
    for name, version in ran.items():
        versions.setdefault(name, version)
    # Read again when the test ends: a test that upgrades a cluster is recorded as such.
    request.node.stash[_versions_key] = (found, ran)
    return found


@pytest.fixture
def cluster(clusters: dict[str, Cluster]) -> Cluster:
    """The one cluster of a one-cluster layout: RAPI client (`.rapi`) + SSH to its master."""
    if len(clusters) != 1:
        raise LabError(f"the layout has {len(clusters)} clusters",
                       "use the `clusters` fixture for multi-cluster layouts")
    return next(iter(clusters.values()))


@pytest.fixture
def lab_reset(request: pytest.FixtureRequest, lab: Lab) -> Lab:
    """Restore the layout's "cluster ready" snapshot before a test that changes state, and
    wait until every cluster is healthy (its RAPI answers)."""
    timings = _state(request.config)["timings"]
    live, left = current_layout(lab), layout_changed(lab)
    _layout_ready(request, lab)
    layout = current_layout(lab)
    assert layout is not None
    if layout != live or left is not None:
        return lab  # just restored or formed by ensure_layout: that is the snapshot's state
    with timings.phase(f"reset to {layout_snapshot(lab, layout)}") as phase:
        done = restore(lab, layout_snapshot(lab, layout))
        phase.metric("revert_seconds", done.revert_seconds)
        phase.metric("answer_seconds", done.answer_seconds)
        # Machines reached over SSH, as their guest agents did not answer (0 on a healthy lab).
        phase.metric("answered_over_ssh", sum(how == "ssh" for how in done.reached.values()))
        for name, c in clusters_of(lab, layout).items():
            phase.metric(f"health_{name}_seconds", ensure_healthy(c).seconds)
    return lab


@pytest.fixture
def timings(request: pytest.FixtureRequest) -> Timings:
    """Record named phases from inside a test: `with timings.phase("migrate"): ...`."""
    return _state(request.config)["timings"]


# Phases, artifacts, keep policy ----------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    if not (LAB_FIXTURES | {"timings"}) & set(getattr(item, "fixturenames", ())):
        yield  # plain unit tests are not lab phases
        return
    timings: Timings = _state(item.config)["timings"]
    cm = timings.phase(f"test {_test_id(item)}")
    phase = cm.__enter__()
    outcome = yield
    _record_versions(item, phase)
    excinfo = outcome.excinfo
    if excinfo and isinstance(excinfo[1], pytest.skip.Exception):
        phase.skip(str(excinfo[1]))  # a skip inside the test is not a failure
        excinfo = None
    elif excinfo and (xfail := _covering_xfail(item, excinfo[1])) is not None:
        phase.expect_failure(xfail.kwargs.get("reason"))
    cm.__exit__(*(excinfo if excinfo else (None, None, None)))


def _test_id(item: pytest.Item) -> str:
    """The test's node id as a person reads it: without xdist's ``@group`` suffix."""
    return item.nodeid.removesuffix(f"@{SESSION_LAB_GROUP}")


def _record_versions(item: pytest.Item, phase: Phase) -> None:
    """The Ganeti each cluster of the test ran, as a metric of the test's phase:
    ``3.0 (3.0.2-3)``, or ``3.0 (3.0.2-3) -> 3.1 (3.1.0~rc2-3~bpo12+1)`` when it changed."""
    held = item.stash.get(_versions_key, None)
    if held is None:
        return
    found, before = held
    for name, cluster in found.items():
        try:
            after = cluster.version_summary()
        except LabError as exc:  # a test that broke its cluster: say so, keep its outcome
            after = f"unknown ({str(exc).splitlines()[0]})"
        metric = before[name] if after == before[name] else f"{before[name]} -> {after}"
        phase.metric(f"ganeti {name}", metric)


def _covering_xfail(item: pytest.Item, exc: BaseException) -> pytest.Mark | None:
    """The test's xfail marker when it covers this failure (pytest will report it xfailed)."""
    xfail = item.get_closest_marker("xfail")
    if xfail is None or (xfail.args and not all(xfail.args)):
        return None
    raises = xfail.kwargs.get("raises")
    return xfail if raises is None or isinstance(exc, raises) else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep: pytest.TestReport = outcome.get_result()
    item.stash.setdefault(_report_key, {})[rep.when] = rep
    if (rep.when == "call" and rep.failed and call.excinfo is not None
            and isinstance(call.excinfo.value, HarnessError)):
        rep.lab_harness_error = True  # type: ignore[attr-defined]  # travels with xdist
    if rep.when == "call":
        prefix = f"test {_test_id(item)}"
        for phase in _state(item.config)["timings"].phases:
            if phase["name"] == prefix or phase.get("parent") == prefix:
                item.user_properties.append((f"seconds:{phase['name']}",
                                             round(phase["seconds"], 2)))
                for key, value in (phase.get("metrics") or {}).items():
                    item.user_properties.append((f"{phase['name']}:{key}", value))


@pytest.fixture(autouse=True)
def _lab_artifacts(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a lab test, and before any lab teardown: collect what explains it (per
    --lab-artifacts-policy: on-failure, always, never)."""
    yield
    node = request.node
    if not LAB_FIXTURES & set(getattr(node, "fixturenames", ())):
        return
    reports = node.stash.get(_report_key, {})
    failed = any(r.failed for r in reports.values())
    state = _state(request.config)
    if failed:
        state["lab_failed"] = True
    policy = request.config.getoption("--lab-artifacts-policy")
    if policy == "never" or (policy == "on-failure" and not failed):
        return
    session: LabSession | None = state["session"]
    if session is None or session.lab is None:
        return
    layout = current_layout(session.lab)
    _collect_artifacts(request, session.lab, layout, "")


def _collect_artifacts(request: pytest.FixtureRequest, lab: Lab, layout: str | None,
                       suffix: str) -> None:
    """The lab's artifacts for the requesting test, in <artifacts>/<test id><suffix>; the
    masters of ``layout`` also give their cluster's view."""
    from lab.artifacts import collect

    state = _state(request.config)
    base = request.config.getoption("--lab-artifacts")
    root = Path(base) if base else state["run_dir"] / "artifacts"
    test = _test_id(request.node)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", test) + suffix
    masters = [c.master.split(".")[0] for c in lab.plan.layouts[layout]] if layout else []
    with state["timings"].phase(f"collect artifacts {test}{suffix}"):
        collect(lab, root / safe, masters)


# Secrets ---------------------------------------------------------------------------------------
# Every report is scrubbed of the lab's secrets (lab.secrets) before any other plugin sees it:
# the terminal, JUnit (which reads longrepr, captured output and properties from the reports)
# and pytest-xdist's transport all get the scrubbed report.


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    lab_secrets.scrub_report(report)


@pytest.hookimpl(tryfirst=True)
def pytest_collectreport(report: pytest.CollectReport) -> None:
    lab_secrets.scrub_report(report)


def pytest_plugin_registered(plugin: object, manager: pytest.PytestPluginManager) -> None:
    """pytest's live log (log_cli) and --log-file write records straight to the terminal and
    a file, past the reports: scrub them at the handler."""
    if manager.get_name(plugin) != "logging-plugin":
        return
    for attr in ("log_cli_handler", "log_file_handler"):
        handler = getattr(plugin, attr, None)
        if isinstance(handler, logging.Handler):
            handler.addFilter(lab_secrets.ScrubFilter())


def _scrub_junit(config: pytest.Config) -> None:
    """Last pass over the JUnit file, for what reaches it without a report
    (record_testsuite_property, record_xml_attribute)."""
    xmlpath = config.option.xmlpath
    if not xmlpath or hasattr(config, "workerinput"):
        return
    path = Path(os.path.normpath(os.path.abspath(os.path.expanduser(os.path.expandvars(
        xmlpath)))))  # as junitxml resolves it
    if path.is_file():
        lab_secrets.scrub_file(path)


@pytest.hookimpl(trylast=True)  # after junitxml has written its file
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _scrub_junit(session.config)
    state = _state(session.config)
    timings: Timings = state["timings"]
    if not timings.phases:
        return
    timings.meta["exitstatus"] = int(exitstatus)
    path = timings.write()
    try:
        runs = Path(session.config.getoption("--lab-runs"))
        history = sorted(p.parent for pattern in ("*/timings.json", "*/gw*/timings.json")
                         for p in runs.glob(pattern))
        html = report.render(history or [state["run_dir"]], state["run_dir"] / "report.html")
    except Exception as exc:  # a report problem must not hide the test results
        html = None
        log.warning("report not written: %s", exc)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"[lab] timings: {path}")
        if html:
            reporter.write_line(f"[lab] report: {html}")
