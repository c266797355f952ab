"""Lab names, and what is left of them: claiming a name (``ClaimedLab``), destroying a lab, box
volumes already in libvirt's pool, directories removed."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lab import virt
from lab.bench.figures import _error, _r
from lab.errors import LabError
from lab.lab import Lab, destroy
from lab.leases import LeaseBook

log = logging.getLogger("lab.bench")

LAB_NAME = "bench-lab"
BASELINE_NAME = "bench-baseline"
PAIR_NAMES = ("bench-pair-a", "bench-pair-b")


def _claim(name: str) -> None:
    """Refuse a name that a live or kept lab holds; clear orphans of an earlier crashed run."""
    lease = LeaseBook().get(name)
    if lease is not None and lease.owner_alive() and lease.owner_pid != os.getpid():
        owner = f"process {lease.owner_pid}" if lease.owner_pid else "kept by a user"
        raise LabError(f"a lab named {name!r} already exists on this host ({owner})",
                       f"`ganeti-lab destroy {name}` first; the benchmark uses that name")
    if lease is None and not virt.find(name).empty():
        log.warning("bench: removing orphaned libvirt objects of lab %s", name)
        destroy(name)


def _destroy(name: str, lab: Lab | None, doc: dict[str, Any],
             key: str = "destroy_seconds") -> None:
    started = time.monotonic()
    if lab is not None:
        try:  # closing SSH connections must never stand between a lab and its destroy
            lab.close()
        except Exception as exc:
            log.warning("bench: closing lab %s: %s", name, exc)
    try:
        destroy(name)
        doc[key] = _r(time.monotonic() - started)
        left = virt.find(name)
        if not left.empty():
            doc["left_behind"] = str(left)
    except Exception as exc:
        doc["destroy_error"] = _error(exc)


class ClaimedLab:
    """``with ClaimedLab(name, doc) as claim:`` claims the name (clearing orphans of a crashed
    run; a name held by a live lab raises here, before anything is made). The body brings the
    lab up and sets ``claim.lab``. On the way out, Ctrl-C included, everything made under the
    name is destroyed; an error of the body is recorded as ``doc["error"]`` and not raised, so
    the benchmark goes on with its next measurement."""

    def __init__(self, name: str, doc: dict[str, Any]) -> None:
        self.name = name
        self.doc = doc
        self.lab: Lab | None = None

    def __enter__(self) -> ClaimedLab:
        _claim(self.name)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> bool:
        recorded = isinstance(exc, Exception)
        if recorded:
            self.doc["error"] = _error(exc)
        _destroy(self.name, self.lab, self.doc)
        return recorded


def _box_volumes_present(boxes: Iterable[str]) -> dict[str, bool] | None:
    """Whether vagrant-libvirt already copied each box into libvirt's 'default' pool."""
    try:
        with virt.connect() as conn:
            pool = conn.storagePoolLookupByName("default")
            pool.refresh(0)
            volumes = pool.listVolumes()
    except Exception:
        return None
    return {b: any(v.startswith(f"{b}_vagrant_box_image_") for v in volumes) for b in boxes}


def _remove_tree(path: Path) -> None:
    """rm -rf, refusing when something is still mounted inside (a crashed chroot step)."""
    path = path.resolve()
    if not path.exists():
        return
    with open("/proc/mounts") as mounts:
        for line in mounts:
            target = line.split()[1]
            if target == str(path) or target.startswith(f"{path}/"):
                raise LabError(f"{target} is still mounted; not deleting {path}",
                               f"umount -R {target} && rm -rf {path}")
    shutil.rmtree(path)


def _remove_quietly(path: Path) -> None:
    """``_remove_tree`` on a failure path: never hides the error being raised."""
    try:
        _remove_tree(path)
    except Exception as exc:
        log.warning("bench: could not remove %s: %s", path, exc)

