"""The benchmark (`ganeti-lab bench`): one JSON document of figures measured in this run.

Sections (each catches its own failure as ``{"error": ...}`` and always destroys what it made):

``host``      host facts and the accelerator chosen (with the time of its probe)
``images``    a cold image build into an empty temporary cache, and a warm (no-op) build
``lab``       the default lab: cold start to SSH + settled, one-cluster bootstrap, snapshot
              save, restore to a verified cluster, per-test reset, two-cluster bootstrap, destroy
``baseline``  the way Vagrant labs are usually built, on the same topology: `vagrant up` of a
              role-less base box, apt + shell provisioning one hypervisor after another, then
              `gnt-cluster init` and node adds one after another (see ``BASELINE_METHOD``)
``ratios``    ours against the baseline
``against``   every figure against an earlier document (``--against``, default the newest
              ``docs/bench-*.json``) and against the speed goals (lab/bench/reference.py)
``scaling``   bring-up + bootstrap with 2, 4 and 6 hypervisors; two tiny labs at once

Nothing here is a constant of the result: every figure is a clock reading of this run.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab import statecache, topology
from lab.bench import reference
from lab.bench.baseline import BASELINE_METHOD, baseline_section
from lab.bench.cleanup import (
    BASELINE_NAME,
    LAB_NAME,
    PAIR_NAMES,
    _remove_tree,
)
from lab.bench.figures import (
    _error,
    _flag,
    _r,
    _timed,
    bootstrap_breakdown,
    compute_ratios,
    median,
    skip_reason,
)
from lab.bench.host import host_section
from lab.bench.images import images_section
from lab.bench.labs import RESET_SAMPLES, lab_section, scaling_section
from lab.bench.topologies import SCALE_LAYOUT, SCALE_MEMORY_MIB, SCALE_SIZES, scaling_topology_text
from lab.images import ImageStore
from lab.lab import sigterm_as_interrupt
from lab.timings import Timings, iso, new_run_id, utc_now

__all__ = [
    "BASELINE_METHOD",
    "BASELINE_NAME",
    "LAB_NAME",
    "PAIR_NAMES",
    "RESET_SAMPLES",
    "SCALE_LAYOUT",
    "SCALE_MEMORY_MIB",
    "SCALE_SIZES",
    "SCHEMA",
    "_error",
    "_remove_tree",
    "_timed",
    "baseline_section",
    "bootstrap_breakdown",
    "compute_ratios",
    "median",
    "run_bench",
    "scaling_section",
    "scaling_topology_text",
    "skip_reason",
]

log = logging.getLogger("lab.bench")

SCHEMA = 1


# The document ---------------------------------------------------------------------------------


class SectionInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a section (its labs are destroyed on the way out)."""

    def __init__(self, section: str, signal: str) -> None:
        super().__init__(signal)
        self.section, self.signal = section, signal


def _guarded(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    log.info("bench: section %s", name)
    started = time.monotonic()
    try:
        doc = fn()
    except KeyboardInterrupt as exc:
        raise SectionInterrupted(name, str(exc) or "Ctrl-C") from exc
    except Exception as exc:
        log.error("bench: section %s failed: %s", name, exc)
        return {"error": _error(exc), "section_seconds": _r(time.monotonic() - started)}
    if "error" in doc:
        log.error("bench: section %s: %s", name, doc["error"].splitlines()[0])
    log.info("bench: section %s done in %.1f s", name, time.monotonic() - started)
    return doc


def run_bench(args: Any) -> dict[str, Any]:
    """Run every section the arguments ask for; return one JSON-serialisable document."""
    # The reference is read before anything runs: a bad --against costs no lab.
    against = getattr(args, "against", None)
    ref_path = Path(against) if against else reference.default_reference()
    ref_doc = reference.load(ref_path) if ref_path is not None else None
    run_id = new_run_id()
    started_at, started = utc_now(), time.monotonic()
    # Phases are kept in memory only (figures are pulled into the document); never written.
    timings = Timings(Path(tempfile.gettempdir()) / "ganeti-lab-bench" / run_id, run_id)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": "ganeti-lab benchmark",
        "run_id": run_id,
        "started": iso(started_at),
        "settings": {k: _flag(args, k) for k in
                     ("smallest", "skip_cold_build", "skip_lab", "skip_baseline",
                      "skip_scaling")},
    }
    try:
        # Off: the bench times the real boot and bootstrap (its cache figures use a cache of
        # their own); a CI timeout or `kill` still destroys every lab.
        with statecache.setting("off"), sigterm_as_interrupt():
            _run_sections(args, doc, timings)
    except KeyboardInterrupt as exc:
        # Every lab made so far was destroyed on the way here; keep what was measured.
        section = exc.section if isinstance(exc, SectionInterrupted) else None
        doc["interrupted"] = {"section": section, "signal": str(exc) or "Ctrl-C"}
        log.error("bench: interrupted (%s) in section %s; the document holds what was "
                  "measured before", doc["interrupted"]["signal"], section)
    doc["finished"] = iso(utc_now())
    doc["total_seconds"] = _r(time.monotonic() - started)
    doc["against"] = (reference.compare(doc, ref_doc, str(ref_path))
                      if ref_doc is not None and ref_path is not None else reference.NO_REFERENCE)
    return doc


def _run_sections(args: Any, doc: dict[str, Any], timings: Timings) -> None:
    """The sections in order, each into ``doc`` as it ends."""
    smallest = _flag(args, "smallest")
    store = ImageStore()
    doc["host"] = _guarded("host", lambda: host_section(store))
    doc["images"] = _guarded("images", lambda: images_section(args, store, timings))
    topo: topology.Topology | None = None
    try:
        topo = topology.load("tiny" if smallest else None)
    except Exception as exc:
        doc["lab"] = {"error": _error(exc)}
    if topo is not None:
        lab_topo = topo
        # Unlike the other sections, --smallest keeps the lab's: on a tiny lab.
        doc["lab"] = ({"skipped": True, "reason": "--skip-lab"} if _flag(args, "skip_lab")
                      else _guarded("lab", lambda: lab_section(lab_topo, store, timings)))
        doc["baseline"] = _guarded(
            "baseline", lambda: baseline_section(args, lab_topo, store, timings))
    else:
        doc["baseline"] = ({"skipped": True, "reason": skip_reason(args, "baseline")}
                           if skip_reason(args, "baseline")
                           else {"error": "the default topology did not load"})
    doc["ratios"] = compute_ratios(doc["lab"], doc["baseline"], doc["images"])
    doc["scaling"] = _guarded("scaling", lambda: scaling_section(args, store, timings))
