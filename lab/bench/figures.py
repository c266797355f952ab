"""Pure helpers of the benchmark: rounding, medians, error text, timed steps, skip reasons,
and the figures read from a Timings record (bootstrap breakdown, ours against the baseline)."""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from collections.abc import Iterable, Iterator
from typing import Any

from lab.machines import Lab
from lab.timings import Timings

log = logging.getLogger("lab.bench")


# Small helpers --------------------------------------------------------------------------------


def _r(seconds: float) -> float:
    return round(float(seconds), 3)


def _error(exc: BaseException) -> str:
    text = str(exc).strip()
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return message if len(message) <= 4000 else message[:3999] + "…"


@contextlib.contextmanager
def _timed(doc: dict[str, Any], key: str) -> Iterator[None]:
    """Store the block's wall time in ``doc[key]``; on failure name the step that failed."""
    log.info("bench: %s ...", key)
    started = time.monotonic()
    try:
        yield
    except BaseException:
        doc.setdefault("failed_step", key)
        raise
    doc[key] = _r(time.monotonic() - started)
    log.info("bench: %s = %.1f s", key, doc[key])


def _flag(args: Any, name: str) -> bool:
    return bool(getattr(args, name, False))


def skip_reason(args: Any, section: str) -> str | None:
    """Why a section (``cold_build``, ``baseline``, ``scaling``) is skipped, or None."""
    if _flag(args, "smallest"):
        return "--smallest"
    if _flag(args, f"skip_{section}"):
        return f"--skip-{section.replace('_', '-')}"
    return None


def median(samples: list[float]) -> float:
    return _r(statistics.median(samples))


# Figures from a Timings record -----------------------------------------------------------------


def bootstrap_breakdown(phases: list[dict[str, Any]], clusters: Iterable[str]
                        ) -> dict[str, Any]:
    """Per-phase seconds of a bootstrap, and per cluster: init, each node add, verify."""
    seconds = {p["name"]: _r(p["seconds"]) for p in phases}
    result: dict[str, Any] = {"phases": seconds, "clusters": {}}
    for name in clusters:
        prefix = f"{name}: gnt-node add "
        result["clusters"][name] = {
            "init_seconds": seconds.get(f"{name}: gnt-cluster init"),
            "node_add_seconds": {p[len(prefix):]: s for p, s in seconds.items()
                                 if p.startswith(prefix)},
            "verify_seconds": seconds.get(f"{name}: gnt-cluster verify"),
        }
    return result


def _bootstrap_figures(timings: Timings, since: int, lab: Lab, layout: str) -> dict[str, Any]:
    return bootstrap_breakdown(timings.phases[since:],
                               [cp.name for cp in lab.plan.layouts[layout]])


def compute_ratios(lab_doc: dict[str, Any], baseline_doc: dict[str, Any]) -> dict[str, Any]:
    """Ours against the baseline; a reason instead when a figure is missing."""
    if baseline_doc.get("skipped"):
        return {"skipped": True, "reason": f"baseline skipped: {baseline_doc.get('reason')}"}
    base = baseline_doc.get("total_seconds")
    cold = lab_doc.get("cold_start_to_ssh_seconds")
    boot = lab_doc.get("bootstrap_one_cluster_seconds")
    reset = lab_doc.get("per_test_reset_seconds")
    missing = [k for k, v in (("baseline.total_seconds", base),
                              ("lab.cold_start_to_ssh_seconds", cold),
                              ("lab.bootstrap_one_cluster_seconds", boot),
                              ("lab.per_test_reset_seconds", reset))
               if not isinstance(v, int | float) or v <= 0]
    if missing:
        return {"skipped": True, "reason": f"not measured in this run: {', '.join(missing)}"}
    assert isinstance(base, int | float) and isinstance(cold, int | float)
    assert isinstance(boot, int | float) and isinstance(reset, int | float)
    ours = cold + boot
    return {
        "same_topology": lab_doc.get("topology") == baseline_doc.get("topology"),
        "ours_cold_start_and_bootstrap_seconds": _r(ours),
        "ours_per_test_reset_seconds": reset,
        "baseline_total_seconds": base,
        "cold_start_and_bootstrap_over_baseline": round(ours / base, 4),
        "baseline_over_cold_start_and_bootstrap": round(base / ours, 2),
        "per_test_reset_over_baseline": round(reset / base, 5),
        "baseline_over_per_test_reset": round(base / reset, 1),
    }
