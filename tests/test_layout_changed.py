"""What a test leaves in a cluster goes with the next restore of the layout's snapshot: the
instance factory marks the layout changed instead of removing its instances through Ganeti,
and the next test that asks for the layout starts from the snapshot, reset or not."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from lab import snapshots
from lab.ganeti import bootstrap, instances
from lab.ganeti.instances import InstanceFactory

LAYOUT = "one"
SNAPSHOT = "cluster-one-3.0"


def _lab(tmp_path: Path) -> SimpleNamespace:
    (tmp_path / "layout").write_text(LAYOUT)
    return SimpleNamespace(name="t", dir=tmp_path,
                           plan=SimpleNamespace(default_layout=LAYOUT, layouts={LAYOUT: []}))


@pytest.fixture
def restores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Snapshot restores, done as far as the lab's state directory goes."""
    done: list[str] = []

    def restore(lab: SimpleNamespace, name: str) -> None:
        done.append(name)
        snapshots._restore_state_files(lab, name)  # type: ignore[arg-type]

    monkeypatch.setattr(bootstrap, "layout_snapshot", lambda lab, layout: SNAPSHOT)
    monkeypatch.setattr(instances, "layout_snapshot", lambda lab, layout: SNAPSHOT)
    monkeypatch.setattr(snapshots, "has", lambda lab, name: name == SNAPSHOT)
    monkeypatch.setattr(snapshots, "restore", restore)
    monkeypatch.setattr(bootstrap, "ensure_healthy", lambda cluster: None)
    return done


def test_a_live_layout_nobody_changed_is_used_as_it_is(tmp_path: Path,
                                                       restores: list[str]) -> None:
    lab = _lab(tmp_path)
    bootstrap.ensure_layout(lab, LAYOUT)  # type: ignore[arg-type]
    assert restores == []


def test_a_layout_a_test_changed_is_restored_for_the_next_one(tmp_path: Path,
                                                              restores: list[str]) -> None:
    lab = _lab(tmp_path)
    snapshots._keep_state_files(lab, SNAPSHOT)  # type: ignore[arg-type]
    bootstrap.mark_layout_changed(lab, "test_pool left instances a, b")  # type: ignore[arg-type]
    assert bootstrap.layout_changed(lab) == "test_pool left instances a, b"  # type: ignore[arg-type]

    bootstrap.ensure_layout(lab, LAYOUT)  # type: ignore[arg-type]
    assert restores == [SNAPSHOT]
    assert bootstrap.layout_changed(lab) is None  # type: ignore[arg-type]
    bootstrap.ensure_layout(lab, LAYOUT)  # type: ignore[arg-type]
    assert restores == [SNAPSHOT]


def test_a_snapshot_of_a_changed_layout_stays_changed(tmp_path: Path) -> None:
    """A load kept as a snapshot of its own: whoever restores it holds the load."""
    lab = _lab(tmp_path)
    bootstrap.mark_layout_changed(lab, "the load of snapshot x")  # type: ignore[arg-type]
    snapshots._keep_state_files(lab, "x")  # type: ignore[arg-type]
    (tmp_path / bootstrap.LAYOUT_CHANGED).unlink()
    snapshots._restore_state_files(lab, "x")  # type: ignore[arg-type]
    assert bootstrap.layout_changed(lab) == "the load of snapshot x"  # type: ignore[arg-type]


class _Factory(InstanceFactory):
    removed: list[list[str]]

    def remove_all(self) -> list[str]:
        self.removed.append(list(self.made))
        self.made.clear()
        return []


def _factory(lab: SimpleNamespace) -> _Factory:
    factory = _Factory(SimpleNamespace(lab=lab, name="cluster1"),  # type: ignore[arg-type]
                       made=["inst1.lab", "inst2.lab"])
    factory.removed = []
    return factory


def test_a_factory_leaves_its_instances_to_the_next_restore(tmp_path: Path,
                                                            restores: list[str]) -> None:
    lab = _lab(tmp_path)
    factory = _factory(lab)
    factory.clean_up(by="scenarios/test_x.py::test_pool")
    assert factory.removed == [] and factory.made == []
    assert bootstrap.layout_changed(lab) == (  # type: ignore[arg-type]
        "scenarios/test_x.py::test_pool left instances inst1.lab, inst2.lab")


def test_without_a_snapshot_the_factory_removes_its_instances(
        tmp_path: Path, restores: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshots, "has", lambda lab, name: False)
    lab = _lab(tmp_path)
    factory = _factory(lab)
    factory.clean_up(by="test_pool")
    assert factory.removed == [["inst1.lab", "inst2.lab"]]
    assert bootstrap.layout_changed(lab) is None  # type: ignore[arg-type]


def test_a_factory_that_made_nothing_changes_nothing(tmp_path: Path,
                                                     restores: list[str]) -> None:
    lab = _lab(tmp_path)
    factory = _factory(lab)
    factory.made.clear()
    factory.clean_up(by="test_pool")
    assert factory.removed == [] and bootstrap.layout_changed(lab) is None  # type: ignore[arg-type]


def test_starting_over_restores_the_snapshot_once_and_forgets_the_rapi_session(
        tmp_path: Path, restores: list[str]) -> None:
    lab = _lab(tmp_path)
    snapshots._keep_state_files(lab, SNAPSHOT)  # type: ignore[arg-type]
    factory = _factory(lab)
    forgotten: list[bool] = []
    factory.cluster.forget_rapi = lambda: forgotten.append(True)  # type: ignore[method-assign]
    assert factory.start_over("the one by one instances") == "restored"
    assert restores == [SNAPSHOT] and forgotten == [True]
    assert factory.removed == [] and factory.made == []
    assert bootstrap.layout_changed(lab) is None  # type: ignore[arg-type]


def test_starting_over_without_a_snapshot_removes_the_instances(
        tmp_path: Path, restores: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshots, "has", lambda lab, name: False)
    factory = _factory(_lab(tmp_path))
    assert factory.start_over("the one by one instances") == "removed"
    assert factory.removed == [["inst1.lab", "inst2.lab"]] and restores == []
