"""Putting a lab to rest and waking it: the refusals that need no running lab. The real
round trip (state kept, no boot, memory freed) is tests/test_lab_lifecycle.py's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lab import rest, spec, topology
from lab.errors import LabError
from lab.machines import Lab


@pytest.fixture
def planned_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lab:
    monkeypatch.setenv("GANETI_LAB_STATE", str(tmp_path / "state"))
    tiny = topology.load("tiny", host_memory_mib=1 << 20)
    plan = spec.plan(tiny, "t", {n.name: f"10.201.{i}.0/24" for i, n in
                                 enumerate(tiny.networks)},
                     tmp_path / "key", tmp_path / "console", "qemu", "custom")
    return Lab(tmp_path, plan)


def test_a_lab_not_at_rest_needs_a_snapshot_named(planned_lab: Lab) -> None:
    assert rest.at_rest(planned_lab) is None
    with pytest.raises(LabError) as info:
        rest.wake(planned_lab)
    assert "lab t is not at rest, and no snapshot was named" in str(info.value)
    assert "--at SNAPSHOT" in str(info.value)


def test_up_at_a_snapshot_takes_no_topology(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "lab.cli", "up", "--at", "at-rest",
                           "--topology", "tiny", "--name", "x"], capture_output=True, text=True,
                          env={"GANETI_LAB_STATE": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert "--at wakes an existing lab; --topology describes a new one" in proc.stderr
