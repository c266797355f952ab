"""Measuring our lab: cold start to SSH + settled, bootstrap, snapshot save, restore to a
verified cluster, per-test reset, two-cluster bootstrap (``lab``); bring-up + bootstrap with 2, 4
and 6 hypervisors and two tiny labs at once (``scaling``). Every lab made is destroyed."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil

from lab import accel, snapshots, statecache, topology
from lab.bench.cleanup import (
    LAB_NAME,
    PAIR_NAMES,
    ClaimedLab,
    _box_volumes_present,
    _claim,
    _destroy,
)
from lab.bench.figures import _bootstrap_figures, _error, _r, _timed, median, skip_reason
from lab.bench.topologies import SCALE_LAYOUT, SCALE_MEMORY_MIB, SCALE_SIZES, scaling_topology_text
from lab.bringup import bring_up
from lab.errors import LabError
from lab.ganeti.bootstrap import (
    clusters_of,
    ensure_layout,
    layout_snapshot,
    patch_digest,
    wait_rapi,
)
from lab.ganeti.health import ensure_healthy
from lab.images import ImageStore
from lab.images.recipe import recipes
from lab.images.store import default_cache_dir
from lab.lab import Lab
from lab.progress import Steps
from lab.timings import Timings

RESET_SAMPLES = 3
SAVE_SNAPSHOT = "bench-save"
TWO_CLUSTERS = "two-clusters"

log = logging.getLogger("lab.bench")


def _boxes_of(topo: topology.Topology, store: ImageStore) -> list[str]:
    keys = {name: r.key() for name, r in recipes().items()}
    return sorted({store.get(m.role, keys[m.role]).box_name for m in topo.machines})


def _bring_up(topo: topology.Topology, name: str, store: ImageStore, timings: Timings,
              doc: dict[str, Any]) -> Lab:
    """Lab.prepare + up, timed as a cold start (accelerator probe included)."""
    doc["boxes_in_libvirt_pool_before_up"] = _box_volumes_present(_boxes_of(topo, store))
    accel.detect.cache_clear()  # a fresh `ganeti-lab up` probes: so does this one
    steps = Steps(f"lab {name}", timings)
    with _timed(doc, "cold_start_to_ssh_seconds"):
        with _timed(doc, "prepare_seconds"):
            lab = Lab.prepare(topo, name, store)
        doc["accelerator"] = lab.accelerator
        with _timed(doc, "up_seconds"):
            bring_up(lab, steps)
    doc["up_steps"] = {k: _r(v) for k, v in steps.durations.items()}
    return lab


def _bootstrap(lab: Lab, layout: str, timings: Timings, doc: dict[str, Any], key: str,
               details: str) -> None:
    since = len(timings.phases)
    try:
        with _timed(doc, key):
            ensure_layout(lab, layout, timings)
    finally:
        doc[details] = _bootstrap_figures(timings, since, lab, layout)


def measure_lab(topo: topology.Topology, name: str, store: ImageStore, timings: Timings,
                more: Callable[[Lab, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Cold start + one-cluster bootstrap of ``topo`` (then ``more``), always destroyed."""
    layout = topo.default_layout
    doc: dict[str, Any] = {"name": name, "topology": topo.source, "layout": layout,
                           "machines": len(topo.machines),
                           "hypervisors": len(topo.hypervisors)}
    with ClaimedLab(name, doc) as claim:
        claim.lab = lab = _bring_up(topo, name, store, timings, doc)
        _bootstrap(lab, layout, timings, doc, "bootstrap_one_cluster_seconds", "bootstrap")
        if more is not None:
            more(lab, doc)
    return doc


def _lab_extras(timings: Timings) -> Callable[[Lab, dict[str, Any]], None]:
    """Snapshot save, restore to a verified cluster, per-test reset, two-cluster bootstrap."""
    def more(lab: Lab, doc: dict[str, Any]) -> None:
        layout = doc["layout"]
        with _timed(doc, "snapshot_save_seconds"):
            snap = snapshots.save(lab, SAVE_SNAPSHOT)
        doc["snapshot_save_libvirt_seconds"] = snap.seconds
        with _timed(doc, "snapshot_delete_seconds"):
            snapshots.delete(lab, SAVE_SNAPSHOT)

        with _timed(doc, "restore_to_verified_cluster_seconds"):
            snapshots.restore(lab, layout_snapshot(lab, layout))
            verified = {n: c.verify() for n, c in clusters_of(lab, layout).items()}
            bad = {n: v for n, v in verified.items() if not v.ok}
            if bad:
                raise LabError("gnt-cluster verify after the restore found errors: " + "; ".join(
                    f"{n}: {' | '.join(v.errors[:5]) or v.output[-500:]}"
                    for n, v in bad.items()), "see gnt-cluster verify on the master")
        doc["verify_after_restore"] = {n: {"ok": v.ok, "warnings": len(v.warnings)}
                                       for n, v in verified.items()}

        with _timed(doc, "restore_to_healthy_seconds"):
            snapshots.restore(lab, layout_snapshot(lab, layout))
            checks = {n: ensure_healthy(c) for n, c in clusters_of(lab, layout).items()}
        doc["health_check_seconds"] = {n: h.seconds for n, h in checks.items()}

        samples: list[float] = []
        steps: list[dict[str, float]] = []
        # Timed as a whole under its own key: the figure is the samples' median, below.
        with _timed(doc, "per_test_reset_all_samples_seconds"):
            for _ in range(RESET_SAMPLES):
                started = time.monotonic()
                done = snapshots.restore(lab, layout_snapshot(lab, layout))
                answered = time.monotonic()
                for c in clusters_of(lab, layout).values():
                    wait_rapi(c)
                samples.append(time.monotonic() - started)
                steps.append({"revert": done.revert_seconds, "machines_answer":
                              done.answer_seconds, "rapi": _r(time.monotonic() - answered)})
        doc["per_test_reset_samples"] = [_r(s) for s in samples]
        # Where each reset's time went, so the next speed-up aims at the biggest step.
        doc["per_test_reset_steps"] = steps
        doc["per_test_reset_seconds"] = median(samples)
        log.info("bench: per_test_reset_seconds = %.1f s (median of %d)",
                 doc["per_test_reset_seconds"], len(samples))

        _state_cache_figures(lab, layout, doc)

        if TWO_CLUSTERS in lab.plan.layouts and layout != TWO_CLUSTERS:
            _bootstrap(lab, TWO_CLUSTERS, timings, doc, "bootstrap_two_clusters_seconds",
                       "bootstrap_two_clusters")
        else:
            doc["bootstrap_two_clusters_seconds"] = None
            doc["bootstrap_two_clusters_skipped"] = (
                f"topology {lab.plan.topology} has no {TWO_CLUSTERS!r} layout besides its "
                "default one")
    return more


def _state_cache_figures(lab: Lab, layout: str, doc: dict[str, Any]) -> None:
    """Store the layout's cluster-ready state in a cache of the bench's own (the user's is
    never touched), then start the lab from it until every cluster is healthy."""
    snapshot = layout_snapshot(lab, layout)
    with tempfile.TemporaryDirectory(prefix="bench-states-", dir=default_cache_dir()) as tmp, \
            statecache.setting(tmp, statecache.DIR_ENV):
        snapshots.restore(lab, snapshot)
        with _timed(doc, "state_cache_store_seconds"):
            entry = statecache.store(lab, snapshot, snapshot, patch_digest(lab))
        assert entry is not None, "a new cache directory cannot hold the entry already"
        doc["state_cache_entry_gib"] = round(entry.size / 2**30, 2)
        with _timed(doc, "state_cache_start_to_healthy_seconds"):
            started = time.monotonic()
            restored = statecache.start_from(entry, lab)
            start_seconds = time.monotonic() - started
            for c in clusters_of(lab, layout).values():
                ensure_healthy(c)
        doc["state_cache_start_steps"] = {
            "copy": _r(start_seconds - restored.seconds), "restore": restored.seconds,
            "health": _r(doc["state_cache_start_to_healthy_seconds"] - start_seconds)}


def lab_section(topo: topology.Topology, store: ImageStore, timings: Timings
                ) -> dict[str, Any]:
    doc = measure_lab(topo, LAB_NAME, store, timings, _lab_extras(timings))
    doc["notes"] = (
        "cold_start_to_ssh_seconds = Lab.prepare (lease, keys, plan, accelerator probe) + "
        "Lab.up (libvirt networks, vagrant up, SSH on every machine, settle). "
        "bootstrap_one_cluster_seconds = ensure_layout of the default layout: saves the "
        "'booted' snapshot, forms the clusters (init, node adds, RAPI, verify) and saves the "
        "layout snapshot. per_test_reset_seconds = snapshots.restore of the layout snapshot "
        "until every machine answers (its guest agent) and each cluster's RAPI answers "
        f"(median of {RESET_SAMPLES}); restore_to_healthy_seconds adds the health check "
        "(lab/ganeti/health.py) instead; restore_to_verified_cluster_seconds adds "
        "gnt-cluster verify. state_cache_store_seconds = the layout's state stored in a "
        "lab-state cache of the bench's own (machines stopped, disks copied, the lab back at "
        "the snapshot); state_cache_start_to_healthy_seconds = the lab started from that "
        "entry (copy out, restore) until every cluster is healthy. "
        "bootstrap_two_clusters_seconds = ensure_layout('two-clusters'): "
        "restores 'booted', forms both clusters at once, saves their snapshot.")
    return doc


# Scaling --------------------------------------------------------------------------------------


def scaling_section(args: Any, store: ImageStore, timings: Timings) -> dict[str, Any]:
    reason = skip_reason(args, "scaling")
    if reason:
        return {"skipped": True, "reason": reason}
    source = topology.profiles()["default"]
    doc: dict[str, Any] = {"base_topology": str(source), "hypervisor_memory_mib": SCALE_MEMORY_MIB,
                           "layout": SCALE_LAYOUT, "labs": []}
    text = source.read_text()
    for n in SCALE_SIZES:
        try:
            topo = topology.parse(scaling_topology_text(text, n),
                                  f"{source} with {n} hypervisors")
        except Exception as exc:
            doc["labs"].append({"hypervisors": n, "error": _error(exc)})
            continue
        name = f"bench-scale-{n}"
        try:
            doc["labs"].append(measure_lab(topo, name, store, timings))
        except Exception as exc:  # the name is held by a live lab: nothing was made
            doc["labs"].append({"name": name, "hypervisors": n, "error": _error(exc)})
    doc["two_tiny_labs_at_once"] = two_labs_at_once(store)
    return doc


def _end_child_processes() -> None:
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.terminate()


def two_labs_at_once(store: ImageStore) -> dict[str, Any]:
    doc: dict[str, Any] = {"labs": {name: {} for name in PAIR_NAMES}}
    labs: list[Lab] = []
    owned: list[str] = []
    try:
        tiny = topology.load("tiny")
        doc["topology"] = tiny.source
        started = time.monotonic()
        for name in PAIR_NAMES:  # plans one at a time: leases and boot files are shared
            _claim(name)
            owned.append(name)
            with _timed(doc["labs"][name], "prepare_seconds"):
                labs.append(Lab.prepare(tiny, name, store))

        def up(lab: Lab) -> tuple[float, dict[str, float]]:
            t0 = time.monotonic()
            steps = Steps(f"lab {lab.name}")
            bring_up(lab, steps)
            return time.monotonic() - t0, dict(steps.durations)

        ups_started = time.monotonic()
        pool = ThreadPoolExecutor(max_workers=len(labs))
        results: dict[str, tuple[float, dict[str, float]]] = {}
        try:
            futures = {lab.name: pool.submit(up, lab) for lab in labs}
            for name, future in futures.items():
                try:
                    results[name] = future.result()
                except Exception as exc:
                    doc["labs"][name]["error"] = _error(exc)
        except BaseException:
            # Ctrl-C/SIGTERM reach the main thread only: end the `vagrant up`s the workers
            # wait on, so they unwind now instead of booting on while we destroy their labs.
            _end_child_processes()
            raise
        finally:
            pool.shutdown(wait=True)
        doc["up_wall_seconds"] = _r(time.monotonic() - ups_started)
        doc["wall_seconds"] = _r(time.monotonic() - started)
        for name, (seconds, durations) in results.items():
            lab_doc = doc["labs"][name]
            lab_doc["up_seconds"] = _r(seconds)
            lab_doc["cold_start_to_ssh_seconds"] = _r(seconds + lab_doc["prepare_seconds"])
            lab_doc["up_steps"] = {k: _r(v) for k, v in durations.items()}
        if len(results) != len(labs):
            doc["error"] = "not every lab came up: see labs.*.error"
    except Exception as exc:
        doc["error"] = _error(exc)
    finally:
        started = time.monotonic()
        by_name = {lab.name: lab for lab in labs}
        for name in owned:
            _destroy(name, by_name.get(name), doc["labs"][name])
        doc["destroy_seconds"] = _r(time.monotonic() - started)
    return doc
