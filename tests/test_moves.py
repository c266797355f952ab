"""Unit tests for lab.ganeti.moves: what the lab reads from move-instance's output, how it
names the state a failed move left, and the command it builds."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lab.ganeti import moves
from lab.ganeti.moves import MoveState, ToolRun
from lab.remote import Result

# As move-instance --verbose prints it (utils.SetupToolLogging with thread names); the
# bracketed times are the jobs' own.
MOVE_LOG = """\
2026-11-26 23:10:00,100: MainThread INFO Source cluster: rack2.lab
2026-11-26 23:10:01,000: Move1 INFO Preparing to move inst1.lab from cluster rack2.lab to rack1.lab
2026-11-26 23:11:10,500: Move1 INFO [Thu Nov 26 23:11:10 2026] Shutting down instance inst1.lab
2026-11-26 23:11:20,000: Move1 INFO [Thu Nov 26 23:11:19 2026] Disk 0 is now sending data
2026-11-26 23:11:40,000: Move1 INFO [Thu Nov 26 23:11:39 2026] Disk 0 sent 40M, 2.6 MiB/s
2026-11-26 23:11:45,000: DestForMove1 INFO [Thu Nov 26 23:11:44 2026] Disk 0 finished receiving data
2026-11-26 23:11:46,000: Move1 INFO [Thu Nov 26 23:11:45 2026] Disk 0 finished sending data
2026-11-26 23:12:05,000: DestForMove1 INFO Import successful
2026-11-26 23:12:09,000: MainThread INFO inst1.lab: Success
"""

CRASH = """\
Traceback (most recent call last):
  File "/usr/share/ganeti/3.0/move-instance", line 1090, in <module>
    main()
  File "/usr/share/ganeti/3.0/move-instance", line 946, in _CheckAllocatorOptions
    if not options.iallocator and (options.opportunistic_tries > 0):
TypeError: '>' not supported between instances of 'NoneType' and 'int'
"""


def tool_run(stderr: str, status: int = 0, started: float = 0.0) -> ToolRun:
    return ToolRun("move-instance ...", Result("node3", "move-instance", status, "", stderr,
                                               1.0), seconds=130.0, started=started)


def test_the_phases_of_a_move_are_read_from_the_tools_log() -> None:
    run = tool_run(MOVE_LOG)
    t0 = run.stamp(r"Source cluster")
    assert t0 is not None
    assert run.stamp(r"Disk \d+ is now sending data") == pytest.approx(t0 + 79.9)
    # The last of several matching lines when asked for it.
    assert run.stamp(r"finished (sending|receiving) data", last=True) == pytest.approx(
        t0 + 105.9)
    assert run.stamp(r"never logged") is None
    assert run.crash() is None


def test_figures_of_a_move_that_ran_whole() -> None:
    run = tool_run(MOVE_LOG)
    run.started = run.stamp("Source cluster") or 0.0
    cluster = SimpleNamespace(name="rack2.lab", version_summary=lambda: "3.1 (3.1.0~rc2-3)")
    dest = SimpleNamespace(name="rack1.lab", version_summary=lambda: "3.0 (3.0.2-3)")
    route = SimpleNamespace(source=cluster, dest=dest, series="3.1")
    before = SimpleNamespace(disk_template="plain", disk_sizes=(64,), admin_up=True)
    figures = moves._figures(route, "inst1.lab", before, run)  # type: ignore[arg-type]
    assert figures.fixed_seconds == pytest.approx(79.9)
    assert figures.copy_seconds == pytest.approx(26.0)
    assert figures.mib_per_s == pytest.approx(64 / 26.0, abs=0.01)
    # Shut down at the source until the destination job (which starts it) ended.
    assert figures.downtime_seconds == pytest.approx(54.5)
    metrics = figures.metrics()
    assert metrics["bytes"] == 64 * 2**20 and metrics["outcome"] == "moved"
    assert metrics["source version"].startswith("3.1")


def test_a_crash_is_the_tracebacks_exception_line() -> None:
    assert tool_run(CRASH, status=1).crash() == (
        "TypeError: '>' not supported between instances of 'NoneType' and 'int'")
    refused = "2026-11-26 23:10:00,100: Move1 ERROR Instance x not found\n"
    assert tool_run(refused, status=1).crash() is None


def state(**kw: object) -> MoveState:
    fields = dict(instance="inst1.lab", source="rack1.lab", dest="rack2.lab",
                  source_present=True, source_running=True, source_was_up=True,
                  dest_present=False, dest_running=False, dest_data="absent")
    fields.update(kw)
    return MoveState(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kw", "summary", "lost"), [
    ({}, "nothing changed", False),
    ({"source_running": False}, "source left down", False),
    ({"source_running": False, "dest_present": True, "dest_running": True,
      "dest_data": "all zeros"}, "destination copy (all zeros), source left down",
     False),
    ({"source_present": False, "dest_present": True, "dest_data": "same"}, "moved", False),
    ({"source_present": False, "dest_present": True, "dest_data": "all zeros"},
     "source removed, destination data all zeros", True),
    ({"source_present": False}, "instance lost on both sides", False),
])
def test_the_state_a_move_left_is_named(kw: dict[str, object], summary: str,
                                        lost: bool) -> None:
    found = state(**kw)
    assert found.summary == summary
    assert found.data_lost is lost
    assert found.describe().startswith(summary)


def test_the_description_names_both_sides() -> None:
    text = state(source_running=False, dest_present=True, dest_running=True,
                 dest_data="all zeros").describe()
    assert "on source rack1.lab inst1.lab is down (it was up before the move)" in text
    assert "on destination rack2.lab it is running, disks all zeros" in text
    assert "recover()" in state(source_running=False).advice()
    assert "restore" in state(source_present=False, dest_present=True,
                              dest_data="all zeros").advice()


def _route(series: str) -> moves.Route:
    def cluster(name: str) -> SimpleNamespace:
        return SimpleNamespace(plan=SimpleNamespace(fqdn=f"{name}.lab"))
    return moves.Route(cluster("rack1"), cluster("rack2"), host=None,  # type: ignore[arg-type]
                       series=series)


def test_the_30_tool_gets_its_workaround_and_the_31_tool_does_not() -> None:
    old = moves.tool_command(_route("3.0"), ["inst1.lab"], dest_pnode="node3.lab")
    new = moves.tool_command(_route("3.1"), ["inst1.lab"], dest_pnode="node3.lab")
    assert "--opportunistic-tries=0" in old and "--opportunistic-tries" not in new
    assert "/usr/share/ganeti/3.0/move-instance" in old
    assert old.endswith("rack1.lab rack2.lab inst1.lab")
    bare = moves.tool_command(_route("3.0"), ["a.lab"], work_around=False)
    assert "--opportunistic-tries" not in bare and "--dest-primary-node" not in bare
    # Passwords only ever as files the tool reads.
    assert "--src-password-file=/root/ganeti-lab-move/rack1.lab.password" in old


def test_a_moves_own_error_logged_with_its_traceback_is_not_a_crash() -> None:
    handled = ("2026-11-26 23:48:19,686: Move1 ERROR Caught unhandled exception\n"
               "Traceback (most recent call last):\n  File \"x\", line 1, in RunTask\n"
               "ganeti.errors.OpPrereqError: ('Instance not found', 'wrong_input')\n"
               "2026-11-26 23:48:19,765: MainThread INFO Instance move results:\n"
               "2026-11-26 23:48:19,765: MainThread INFO x.lab: Failed (Source error: ...)\n")
    assert tool_run(handled, status=1).crash() is None
    died = CRASH.replace("TypeError: '>' not supported between instances of 'NoneType' and "
                         "'int'", "ganeti.rapi.client.GanetiApiError: 401 Unauthorized")
    assert tool_run(died, status=1).crash() == (
        "ganeti.rapi.client.GanetiApiError: 401 Unauthorized")


def test_a_failure_is_named_in_the_tools_own_words() -> None:
    run = tool_run("2026-11-26 23:59:31,957: MainThread INFO inst1.lab: Failed (Source error: "
                   "Export failed, errors in disk export: disk(s) 0, destination error: None)\n",
                   status=1)
    assert moves._last_error(run) == ("inst1.lab: Failed (Source error: Export failed, errors "
                                      "in disk export: disk(s) 0, destination error: None)")
