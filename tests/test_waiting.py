"""The one wait primitive, on a clock that moves only when it pauses."""

from __future__ import annotations

import logging
import time

import pytest

from lab.errors import LabError
from lab.waiting import WaitTimeout, wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 500.0
        self.pauses: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(time, "monotonic", c.monotonic)
    return c


def test_returns_the_first_truthy_value_after_growing_pauses(clock: Clock) -> None:
    answers = iter([None, "", 0, None, None, "up"])
    assert wait_for("x", lambda: next(answers), timeout=60, interval=2.0,
                    sleep=clock.sleep) == "up"
    assert clock.pauses == [0.25, 0.5, 1.0, 2.0, 2.0]


def test_gives_up_at_the_timeout_and_says_what_it_saw_last(clock: Clock) -> None:
    seen = iter(range(100))
    with pytest.raises(WaitTimeout) as err:
        wait_for("node1 to answer", lambda: [] if next(seen) < 99 else None, timeout=10,
                 interval=2.0, sleep=clock.sleep)
    assert str(err.value) == "timed out after 10 s waiting for node1 to answer; last saw: []"
    assert err.value.what == "node1 to answer"
    # 0.25 + 0.5 + 1 + 2 + 2 + 2 + 2, then 0.25: the last attempt runs at the timeout.
    assert clock.pauses == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0, 0.25]


def test_a_lab_error_is_not_yet_and_is_what_was_seen(clock: Clock) -> None:
    def probe() -> None:
        raise LabError("RAPI GET /2/info failed (HTTP 502): bad gateway\nmore")

    with pytest.raises(WaitTimeout, match=r"last saw: LabError: RAPI GET /2/info failed "
                                          r"\(HTTP 502\): bad gateway$"):
        wait_for("RAPI", probe, timeout=3, sleep=clock.sleep)


def test_other_exceptions_and_interrupts_end_the_wait_at_once(clock: Clock) -> None:
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise KeyError("not a lab error")

    with pytest.raises(KeyError):
        wait_for("x", broken, timeout=60, sleep=clock.sleep)
    assert calls == [1] and clock.pauses == []

    def interrupt() -> None:
        if clock.pauses:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        wait_for("x", lambda: None, timeout=60, sleep=clock.sleep, interrupt=interrupt)
    assert clock.pauses == [0.25]


def test_describe_says_what_was_seen(clock: Clock) -> None:
    with pytest.raises(WaitTimeout, match=r"last saw: node2 offline, 3 jobs queued$"):
        wait_for("cluster healthy", lambda: None, timeout=1, sleep=clock.sleep,
                 describe=lambda: "node2 offline, 3 jobs queued")


def test_the_wait_is_announced_with_its_bound(clock: Clock,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lab.waiting")
    wait_for("SSH on node1", lambda: True, timeout=600, sleep=clock.sleep)
    wait_for("quiet", lambda: True, timeout=5, sleep=clock.sleep, announce=False)
    assert caplog.messages == ["waiting up to 600 s for SSH on node1"]
