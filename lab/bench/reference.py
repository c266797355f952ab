"""This run's figures against an earlier benchmark document and against the speed goals.

A benchmark is only worth its comparison: `ganeti-lab bench` reads a reference document
(by default the newest ``docs/bench-*.json`` of the checkout, or ``--against FILE``) and says
for every figure the two have in common how many times faster or slower this run was, and
for the figures the project has a goal for, whether this run met it. Both documents are only
read: no figure is ever taken from anywhere but a clock reading of a run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.errors import LabError

DOCS = Path(__file__).resolve().parents[2] / "docs"
NO_REFERENCE = {"skipped": True,
                "reason": f"no reference document (none in {DOCS}, and no --against FILE)"}


@dataclass(frozen=True)
class Figure:
    label: str
    path: str                    # dotted path in a benchmark document
    goal: float | None = None    # seconds this figure should not exceed (issue #17)


FIGURES = (
    Figure("image build, cold cache", "images.cold_build_seconds"),
    Figure("image build, warm cache", "images.warm_build_seconds"),
    Figure("cold start of the default lab to SSH, settled", "lab.cold_start_to_ssh_seconds",
           120.0),
    Figure("one-cluster bootstrap to a clean verify", "lab.bootstrap_one_cluster_seconds",
           180.0),
    Figure("two-cluster bootstrap", "lab.bootstrap_two_clusters_seconds"),
    Figure("whole-lab snapshot save", "lab.snapshot_save_seconds"),
    Figure("restore to a healthy cluster", "lab.restore_to_healthy_seconds", 10.0),
    Figure("restore to a verified cluster", "lab.restore_to_verified_cluster_seconds"),
    Figure("per-test reset (median)", "lab.per_test_reset_seconds", 5.0),
    Figure("baseline: the naive Vagrant way", "baseline.total_seconds"),
)


def value_at(doc: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of a benchmark document (``lab.per_test_reset_seconds``),
    or None."""
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _seconds(doc: dict[str, Any], path: str) -> float | None:
    value = value_at(doc, path)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


def default_reference() -> Path | None:
    """The newest benchmark document kept in the checkout's ``docs/``, if any."""
    found = sorted(DOCS.glob("bench-*.json")) if DOCS.is_dir() else []
    return found[-1] if found else None


def load(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LabError(f"cannot read the reference benchmark document {path}: {exc}",
                       "pass a file written by `ganeti-lab bench --output FILE` to --against"
                       ) from exc
    if not isinstance(doc, dict) or doc.get("kind") != "ganeti-lab benchmark":
        raise LabError(f"{path} is not a ganeti-lab benchmark document",
                       "pass a file written by `ganeti-lab bench --output FILE` to --against")
    return doc


def compare(doc: dict[str, Any], reference: dict[str, Any], source: str) -> dict[str, Any]:
    """Every figure of ``FIGURES``: this run's seconds, the reference's, reference / ours
    (above 1: this run was faster), and the goal with whether it was met; a figure one of the
    documents lacks says which."""
    figures: dict[str, Any] = {}
    for f in FIGURES:
        ours, theirs = _seconds(doc, f.path), _seconds(reference, f.path)
        entry: dict[str, Any] = {"path": f.path, "ours_seconds": ours,
                                 "reference_seconds": theirs}
        if ours is None or theirs is None:
            entry["missing"] = " and ".join(
                name for name, value in (("this run", ours), ("the reference", theirs))
                if value is None)
        elif ours > 0:
            entry["reference_over_ours"] = round(theirs / ours, 2)
        else:
            entry["missing"] = "this run (0 s)"
        if f.goal is not None:
            entry["goal_seconds"] = f.goal
            entry["goal_met"] = None if ours is None else ours <= f.goal
        figures[f.label] = entry
    return {"reference": source, "reference_run_id": reference.get("run_id"),
            "reference_cores": reference.get("host", {}).get("cores"),
            "figures": figures}


def rows(comparison: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(figure, ours, reference, reference / ours, goal) for the Markdown summary."""
    out = []
    for label, e in (comparison.get("figures") or {}).items():
        ours = f"{e['ours_seconds']:.1f}" if e.get("ours_seconds") is not None else "-"
        theirs = (f"{e['reference_seconds']:.1f}" if e.get("reference_seconds") is not None
                  else "-")
        ratio = (f"{e['reference_over_ours']}x" if "reference_over_ours" in e
                 else f"not in {e.get('missing')}")
        goal = ""
        if "goal_seconds" in e:
            met = {True: "met", False: "not met", None: "not measured"}[e.get("goal_met")]
            goal = f"<= {e['goal_seconds']:.0f} s: {met}"
        out.append((label, ours, theirs, ratio, goal))
    return out
