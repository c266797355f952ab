"""Fixtures shared by the library's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import spec, topology
from lab.lab import Lab


@pytest.fixture
def planned_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lab:
    """A tiny lab's plan in a throw-away state directory; nothing of it exists in libvirt."""
    monkeypatch.setenv("GANETI_LAB_STATE", str(tmp_path / "state"))
    tiny = topology.load("tiny", host_memory_mib=1 << 20)
    plan = spec.plan(tiny, "t", {n.name: f"10.201.{i}.0/24" for i, n in
                                 enumerate(tiny.networks)},
                     tmp_path / "key", tmp_path / "console", "qemu", "custom")
    return Lab(tmp_path, plan)
