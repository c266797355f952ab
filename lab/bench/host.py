"""The benchmark's ``host`` section: host facts and the accelerator chosen (with the time of
its probe)."""

from __future__ import annotations

import time
from typing import Any

from lab import accel, virt
from lab.bench.figures import _r
from lab.images import ImageStore
from lab.images.recipe import recipes
from lab.timings import host_facts


def host_section(store: ImageStore) -> dict[str, Any]:
    doc: dict[str, Any] = dict(host_facts())
    key = recipes()["hypervisor"].key()
    kernel = store.get("hypervisor", key).kernel if store.has("hypervisor", key) else None
    accel.detect.cache_clear()
    started = time.monotonic()
    chosen = accel.detect(kernel)
    doc["accelerator"] = {"name": chosen.name, "reason": chosen.reason,
                          "probe_seconds": _r(time.monotonic() - started)}
    doc["libvirt_uri"] = virt.uri()
    return doc
