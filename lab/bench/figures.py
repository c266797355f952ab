"""Pure helpers of the benchmark: rounding, medians, error text, timed steps, skip reasons,
and the figures read from a Timings record (bootstrap breakdown, ours against the baseline)."""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from collections.abc import Iterable, Iterator
from typing import Any

from lab.ganeti.jobs import BEFORE_FIRST_JOB, JOB_RECORD
from lab.lab import Lab
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
    """Per-phase seconds of a bootstrap, and per cluster: init, each node add, verify, and
    each of those split into its client's work and Ganeti's jobs (``ganeti_jobs``)."""
    seconds = {p["name"]: _r(p["seconds"]) for p in phases}
    result: dict[str, Any] = {"phases": seconds, "clusters": {}}
    for name in clusters:
        prefix = f"{name}: gnt-node add "
        adds = {p: s for p, s in seconds.items() if p.startswith(prefix) and ": " not in
                p[len(prefix):]}
        steps = {"init": f"{name}: gnt-cluster init",
                 **{p[len(prefix):]: p for p in adds},
                 "verify": f"{name}: gnt-cluster verify"}
        result["clusters"][name] = {
            "init_seconds": seconds.get(steps["init"]),
            "node_add_seconds": {p[len(prefix):]: s for p, s in adds.items()},
            "verify_seconds": seconds.get(steps["verify"]),
            "ganeti_jobs": {label: split for label, step in steps.items()
                            if (split := _job_split(seconds, step)) is not None},
        }
    return result


def _job_split(seconds: dict[str, float], step: str) -> dict[str, float] | None:
    """A step's time as the bootstrap recorded it (lab/ganeti/jobs.py
    record_jobs_of_phases): the client's work before Ganeti received its first job, and the
    seconds its jobs queued and ran. None for a step without that record."""
    before = seconds.get(f"{step}: {BEFORE_FIRST_JOB}")
    if before is None:
        return None
    jobs = f"{step}: {JOB_RECORD} "

    def total(kind: str) -> float:
        return _r(sum(s for p, s in seconds.items()
                      if p.startswith(jobs) and p.endswith(f") {kind}")))

    return {"before_first_job_seconds": before, "jobs_queued_seconds": total("queued"),
            "jobs_ran_seconds": total("ran")}


def _bootstrap_figures(timings: Timings, since: int, lab: Lab, layout: str) -> dict[str, Any]:
    """The breakdown of a bootstrap; called on the way out of a failed one too, so it never
    raises (that would replace the bootstrap's own error)."""
    try:
        return bootstrap_breakdown(timings.phases[since:],
                                   [cp.name for cp in lab.plan.layouts[layout]])
    except Exception as exc:
        log.warning("bench: no bootstrap breakdown of layout %s: %s", layout, exc)
        return {"error": _error(exc)}


def compute_ratios(lab_doc: dict[str, Any], baseline_doc: dict[str, Any],
                   images_doc: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ours against the baseline: two headline ratios and, under ``each_figure``, every one of
    our figures against its counterpart in the baseline; a reason instead when one is missing."""
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
               if not _positive(v)]
    if missing:
        return {"skipped": True, "reason": f"not measured in this run: {', '.join(missing)}"}
    assert isinstance(base, int | float) and isinstance(cold, int | float)
    assert isinstance(boot, int | float) and isinstance(reset, int | float)
    ours = cold + boot
    return {
        "same_shape": all(lab_doc.get(k) == baseline_doc.get(k)
                          for k in ("machines", "hypervisors", "layout")),
        "ours_cold_start_and_bootstrap_seconds": _r(ours),
        "ours_per_test_reset_seconds": reset,
        "baseline_total_seconds": base,
        "cold_start_and_bootstrap_over_baseline": round(ours / base, 4),
        "baseline_over_cold_start_and_bootstrap": round(base / ours, 2),
        "per_test_reset_over_baseline": round(reset / base, 5),
        "baseline_over_per_test_reset": round(base / reset, 1),
        "each_figure": each_figure_ratios(lab_doc, baseline_doc, images_doc or {}),
    }


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and value > 0


def _sum(doc: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    values = [doc.get(k) for k in keys]
    return sum(v for v in values if isinstance(v, int | float)) \
        if all(_positive(v) for v in values) else None


# Each of our figures, the baseline figure that does the same job, and why they compare. Where
# the usual way has no such step (it keeps no saved state), its counterpart is a rebuild.
_REBUILD = ("baseline.total_seconds", "the usual way keeps no saved state: it rebuilds")
_COUNTERPARTS: tuple[tuple[str, str, str], ...] = (
    ("images.cold_build_seconds", "baseline.provision_seconds",
     "making Ganeti nodes of a base system: our images (once for every node, then cached) "
     "against apt + shell on each node"),
    ("images.warm_build_seconds", "baseline.provision_seconds",
     "the same, when nothing changed since the last build"),
    ("lab.cold_start_to_ssh_seconds", "baseline.up_to_settled_seconds",
     "machines booted with Ganeti installed, settled: vagrant up + provisioning + settle"),
    ("lab.bootstrap_one_cluster_seconds", "baseline.bootstrap_seconds",
     "the same bootstrap code on the same topology (ours also saves two snapshots)"),
    ("lab.cold_start_and_bootstrap_seconds", "baseline.total_seconds",
     "an empty host to a verified cluster"),
    ("lab.bootstrap_two_clusters_seconds", *_REBUILD),
    ("lab.snapshot_save_seconds", "baseline.total_seconds",
     "what a saved state spares: the usual way keeps none, so getting back to it is a rebuild"),
    ("lab.restore_to_healthy_seconds", *_REBUILD),
    ("lab.restore_to_verified_cluster_seconds", *_REBUILD),
    ("lab.per_test_reset_seconds", *_REBUILD),
    ("lab.state_cache_start_to_healthy_seconds", "baseline.total_seconds",
     "a verified cluster on a host that made it before: ours starts from the lab-state cache, "
     "the usual way keeps nothing and rebuilds"),
)


def each_figure_ratios(lab_doc: dict[str, Any], baseline_doc: dict[str, Any],
                       images_doc: dict[str, Any]) -> dict[str, Any]:
    """``{our figure: {ours_seconds, baseline_figure, baseline_seconds, baseline_over_ours,
    why}}``; a figure either side did not measure carries ``missing`` instead of a ratio."""
    values: dict[str, Any] = {f"lab.{k}": v for k, v in lab_doc.items()}
    values.update({f"images.{k}": v for k, v in images_doc.items()})
    values.update({f"baseline.{k}": v for k, v in baseline_doc.items()})
    values["lab.cold_start_and_bootstrap_seconds"] = _sum(
        lab_doc, ("cold_start_to_ssh_seconds", "bootstrap_one_cluster_seconds"))
    values["baseline.up_to_settled_seconds"] = _sum(
        baseline_doc, ("prepare_seconds", "vagrant_up_seconds", "provision_seconds",
                       "settle_seconds"))
    result: dict[str, Any] = {}
    for ours_key, base_key, why in _COUNTERPARTS:
        ours, base = values.get(ours_key), values.get(base_key)
        entry: dict[str, Any] = {"ours_seconds": ours, "baseline_figure": base_key,
                                 "baseline_seconds": base, "why": why}
        if _positive(ours) and _positive(base):
            entry["baseline_over_ours"] = round(base / ours, 2)
        else:
            entry["missing"] = ", ".join(k for k, v in ((ours_key, ours), (base_key, base))
                                         if not _positive(v))
        result[ours_key] = entry
    return result
