"""The benchmark's ``images`` section: a cold image build into an empty temporary cache, and a
warm (no-op) build."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from lab.bench.cleanup import _remove_tree
from lab.bench.figures import _error, _r, _timed, skip_reason
from lab.images import ImageStore, build_images
from lab.images.recipe import ROLES, recipes
from lab.progress import Steps
from lab.timings import Timings

log = logging.getLogger("lab.bench")


def images_section(args: Any, store: ImageStore, timings: Timings) -> dict[str, Any]:
    keys = {name: r.key() for name, r in recipes().items()}
    doc: dict[str, Any] = {"keys": keys, "cold_build_seconds": None,
                           "warm_build_seconds": None}
    reason = skip_reason(args, "cold_build")
    if reason:
        doc["cold_build_skipped"] = reason
    else:
        _cold_build(store, timings, doc)
    try:
        missing = [r for r in ROLES if not store.has(r, keys[r])]
        if missing:
            # The real cache must be warm before a "nothing to do" build can be timed.
            with _timed(doc, "real_cache_fill_seconds"):
                build_images(store, steps=Steps("images (filling the real cache)", timings))
        with _timed(doc, "warm_build_seconds"):
            build_images(store, steps=Steps("images (warm)", timings))
        doc["sizes_mib"] = {r: round(store.get(r, keys[r]).size_bytes / 2**20, 1)
                            for r in ROLES}
    except Exception as exc:
        doc["warm_build_error"] = _error(exc)
    return doc


def _cold_build(store: ImageStore, timings: Timings, doc: dict[str, Any]) -> None:
    parent = store.root.parent.parent
    parent.mkdir(parents=True, exist_ok=True)
    stale = sorted(parent.glob("ganeti-lab-bench-cold.*"))
    if stale:
        log.warning("bench: cold caches of earlier runs are still on disk: %s",
                    ", ".join(map(str, stale)))
    tmp = Path(tempfile.mkdtemp(prefix="ganeti-lab-bench-cold.", dir=parent))
    doc["cold_cache_dir"] = str(tmp)
    steps = Steps("images (cold)", timings)
    try:
        with _timed(doc, "cold_build_seconds"):
            build_images(ImageStore(tmp), register=False, steps=steps)
        doc["cold_build_steps"] = {k: _r(v) for k, v in steps.durations.items()}
        doc["cold_build_includes_downloads"] = True
    except Exception as exc:
        doc["cold_build_seconds"] = None
        doc["cold_build_error"] = _error(exc)
    finally:
        try:
            _remove_tree(tmp)
        except Exception as exc:
            doc["cold_cache_left_behind"] = _error(exc)
