"""A snapshot save pauses the guests while their memory is written; their clocks are set from
the host's again afterwards (CI met a 6 s skew right after a layout snapshot). libvirt is a
recording stand-in here; real saves and restores run in tests/test_lab_lifecycle.py."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lab import snapshots


class Domain:
    def __init__(self, name: str, active: bool = True) -> None:
        self._name, self.active, self.events = name, active, []

    def name(self) -> str:
        return self._name

    def isActive(self) -> bool:
        return self.active

    def state(self) -> list[int]:
        return [1, 0]  # running

    def suspend(self) -> None:
        self.events.append("suspend")

    def resume(self) -> None:
        self.events.append("resume")

    def snapshotCreateXML(self, xml: str, flags: int) -> None:
        self.events.append("snapshot")


def test_a_save_sets_the_paused_guests_clocks_afterwards(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    doms = {"glab-t-node1": Domain("glab-t-node1"), "glab-t-node2": Domain("glab-t-node2"),
            "glab-t-node3": Domain("glab-t-node3", active=False)}
    plan = SimpleNamespace(machines=[SimpleNamespace(name=d.split("-")[-1], domain=d)
                                     for d in doms])
    lab = SimpleNamespace(name="t", dir=tmp_path, plan=plan)
    conn = SimpleNamespace(lookupByName=lambda name: doms[name])
    monkeypatch.setattr(snapshots.virt, "connect", lambda: contextlib.nullcontext(conn))
    monkeypatch.setattr(snapshots, "_keep_state_files", lambda lab, name: None)
    synced: list[Any] = []

    def resync(lab: Any, timeout: float = 180.0, domains: set[str] | None = None) -> None:
        synced.append((domains, [d.events[:] for d in doms.values()]))

    monkeypatch.setattr(snapshots, "resync_clocks", resync)
    snapshots.save(lab, "s1")  # type: ignore[arg-type]
    # Only the guests that were paused, and only once they run again.
    ((domains, events_then),) = synced
    assert domains == {"glab-t-node1", "glab-t-node2"}
    assert events_then[:2] == [["suspend", "snapshot", "resume"]] * 2
    assert snapshots.has(lab, "s1")  # type: ignore[arg-type]
