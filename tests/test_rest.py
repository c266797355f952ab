"""Putting a lab to rest and waking it: the refusals that need no running lab. The real
round trip (state kept, no boot, memory freed) is tests/test_lab_lifecycle.py's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lab import rest
from lab.errors import LabError
from lab.lab import Lab


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
