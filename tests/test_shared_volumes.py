"""Shared pool volumes (boxes, kernels, initrds) are used only when an upload finished: a
volume left half-filled by a killed upload is filled again, never booted from. Real libvirt
(its default pool); the volumes made here are removed afterwards."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from lab import virt
from lab.errors import LabError
from lab.lab import prune_failure_logs

VOLUME = "ganeti-lab-test-shared-volume"


@pytest.fixture
def pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[libvirt.virStoragePool]:
    try:
        virt.ensure_default_pool()
    except LabError as exc:
        pytest.skip(f"needs libvirt: {exc}")
    monkeypatch.setenv("GANETI_LAB_STATE", str(tmp_path / "state"))
    with virt.connect() as conn:
        pool = conn.storagePoolLookupByName(virt.POOL)
        yield pool
        with contextlib.suppress(libvirt.libvirtError):
            pool.storageVolLookupByName(VOLUME).delete(0)


def _content(pool: libvirt.virStoragePool) -> bytes:
    return Path(pool.storageVolLookupByName(VOLUME).path()).read_bytes()


def test_an_interrupted_upload_is_done_again(pool: libvirt.virStoragePool,
                                             tmp_path: Path) -> None:
    source = tmp_path / "vmlinuz"
    source.write_bytes(os.urandom(3 * 2**20))
    # What a killed upload leaves: the volume exists, a third of it written, no marker.
    pool.createXML(f"<volume><name>{VOLUME}</name><capacity unit='B'>{3 * 2**20}</capacity>"
                   "<target><format type='raw'/></target></volume>", 0)
    Path(pool.storageVolLookupByName(VOLUME).path()).write_bytes(source.read_bytes()[:2**20])
    path = virt.ensure_pool_volume(source, VOLUME)
    assert Path(path).read_bytes() == source.read_bytes()
    # Done once: a second call uses it as it is.
    before = Path(path).stat().st_mtime_ns
    time.sleep(0.01)
    assert virt.ensure_pool_volume(source, VOLUME) == path
    assert Path(path).stat().st_mtime_ns == before
    # New content (a rebuilt kernel under the same name) replaces it.
    source.write_bytes(os.urandom(2**20))
    virt.ensure_pool_volume(source, VOLUME)
    assert _content(pool) == source.read_bytes()


def test_old_failure_logs_are_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GANETI_LAB_STATE", str(tmp_path / "state"))
    root = tmp_path / "state" / "failed"
    for i in range(25):
        (root / f"lab-{i:02d}").mkdir(parents=True)
        os.utime(root / f"lab-{i:02d}", (time.time() - 60 * (25 - i),) * 2)
    ancient = root / "lab-ancient"
    ancient.mkdir()
    os.utime(ancient, (time.time() - 30 * 86400,) * 2)
    removed = prune_failure_logs(keep=20, days=14)
    kept = sorted(p.name for p in root.iterdir())
    assert kept == [f"lab-{i:02d}" for i in range(5, 25)]  # the newest 20
    assert ancient in removed and len(removed) == 6
