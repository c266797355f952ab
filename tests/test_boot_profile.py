"""Where a machine's boot went, from the guest's uptime and systemd's timestamps
(lab/bootprofile.py). Every `ganeti-lab up` records it on real machines (the "SSH on every
machine" phase's metrics, tests/test_lab_lifecycle.py's lab among them)."""
from __future__ import annotations

import logging

import pytest

from lab import bootprofile
from lab.bootprofile import BootProfile
from lab.timings import Timings


def test_the_boot_is_split_at_the_kernel_and_sshd() -> None:
    # Read 150 s after `vagrant up` began; the guest had been up 110 s: its kernel started at
    # 40 s; sshd 98.5 s after the kernel, multi-user at 101.25 s.
    p = bootprofile.parse("node1", "110.00\n98500000\n101250000\n", 150.0)
    assert p == BootProfile("node1", kernel_after_s=40.0, sshd_after_s=98.5,
                            multi_user_after_s=101.25, reached_after_s=150.0)
    assert p.metrics() == {"node1.kernel_after_s": 40.0, "node1.sshd_after_s": 98.5,
                           "node1.multi_user_after_s": 101.2, "node1.reached_after_s": 150.0}
    assert p.line() == "node1: kernel at 40 s, sshd +98 s after it, reached at 150 s"


def test_units_not_started_yet_are_none() -> None:
    p = bootprofile.parse("service", "12.5\n0\n0\n", 10.0)
    assert (p.sshd_after_s, p.multi_user_after_s, p.kernel_after_s) == (None, None, 0.0)
    assert "sshd not started" in p.line()


@pytest.mark.parametrize("facts", ["", "12.5\n", "up\n1\n2\n"])
def test_output_that_is_not_the_facts_is_refused(facts: str) -> None:
    with pytest.raises(ValueError, match="node2"):
        bootprofile.parse("node2", facts, 1.0)


class _Answers:
    def __init__(self, name: str, output: str | Exception) -> None:
        self.name, self.output = name, output

    def succeed(self, command: str, timeout: float) -> str:
        assert command == bootprofile.FACTS_COMMAND
        if isinstance(self.output, Exception):
            raise self.output
        return self.output


def test_a_machine_that_cannot_say_is_logged_and_left_out(
        tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    timings = Timings(tmp_path / "r", "r", host={}, meta={})
    good = bootprofile.read(_Answers("node1", "5.0\n4000000\n0\n"), 0.0)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="lab.bootprofile"):
        bad = bootprofile.read(_Answers("node2", OSError("gone")), 0.0)  # type: ignore[arg-type]
    assert bad is None and "node2: no boot profile: gone" in caplog.text
    with timings.phase("SSH on every machine") as phase:
        bootprofile.record([good, bad], phase, "x")
    metrics = timings.phases[0]["metrics"]
    assert metrics["node1.sshd_after_s"] == 4.0
    assert "node1.multi_user_after_s" not in metrics
    assert not [k for k in metrics if k.startswith("node2")]


class _Lab:
    """What ``take`` uses of a Lab: its name and running a function on every machine."""
    name = "x"

    def __init__(self, machines: list[_Answers]) -> None:
        self.machines = machines

    def on_all(self, fn):  # type: ignore[no-untyped-def]
        return {m.name: fn(m) for m in self.machines}


def test_the_bring_up_step_records_every_machine_on_its_phase(tmp_path) -> None:
    from lab.progress import Steps

    timings = Timings(tmp_path / "r", "r", host={}, meta={})
    steps = Steps("lab x", timings, quiet=True)
    lab = _Lab([_Answers("service", "3.0\n2000000\n2500000\n"),
                _Answers("node1", OSError("gone"))])
    with steps.step("SSH on every machine"):
        bootprofile.take(lab, 0.0, steps.timings)  # type: ignore[arg-type]
    (phase,) = timings.phases
    assert phase["outcome"] == "passed"
    assert phase["metrics"]["service.sshd_after_s"] == 2.0
    assert phase["metrics"]["service.multi_user_after_s"] == 2.5
    assert not [k for k in phase["metrics"] if k.startswith("node1")]
    bootprofile.take(lab, 0.0, None)  # a bring-up without a timings record
