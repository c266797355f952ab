"""A benchmark document as a Markdown table (the README's figures are this, pasted).

Every cell is read from the document; a figure the run did not measure says why ("skipped:
--smallest", "error: ...") instead of a number.
"""

from __future__ import annotations

from statistics import median
from typing import Any

from lab.bench import reference

Row = tuple[str, str]


def _first_line(text: Any) -> str:
    return str(text).splitlines()[0][:80] if str(text) else ""


def _why_missing(doc: dict[str, Any], section: str) -> str:
    part = doc.get(section) or {}
    if part.get("skipped"):
        return f"skipped: {part.get('reason')}"
    if part.get("error"):
        return f"error: {_first_line(part['error'])}"
    return "not measured"


def _fmt(seconds: Any, digits: int = 1) -> str | None:
    """A measured figure as text; None when it is not a number (the caller says why)."""
    return f"{seconds:.{digits}f}" if isinstance(seconds, int | float) else None


def _s(doc: dict[str, Any], path: str) -> str:
    return _fmt(reference.value_at(doc, path)) or _why_missing(doc, path.split(".")[0])


def _cluster_parts(bootstrap: dict[str, Any] | None) -> str:
    """init / node adds (min-max) / verify of the first cluster of a bootstrap breakdown."""
    clusters = (bootstrap or {}).get("clusters") or {}
    if not clusters:
        return ""
    first = next(iter(clusters.values()))
    adds = [v for v in (first.get("node_add_seconds") or {}).values() if v is not None]
    add = _span(adds)
    split = [first.get("ganeti_jobs", {}).get(node) for node in first.get("node_add_seconds")
             or {}]
    if split and all(split):
        add += (f" (client {_span([s['before_first_job_seconds'] for s in split])},"
                f" Ganeti's job {_span([s['jobs_ran_seconds'] for s in split])})")
    init, verify = (_fmt(first.get(k), 0) or "-" for k in ("init_seconds", "verify_seconds"))
    return f" (init {init}, node adds {add} each, verify {verify})"


def _span(values: list[Any]) -> str:
    """'33-52' seconds, or '-' without figures."""
    numbers = [v for v in values if isinstance(v, int | float)]
    return f"{min(numbers):.0f}-{max(numbers):.0f}" if numbers else "-"


def _scaling_figure(entry: dict[str, Any], key: str) -> str:
    """One figure of a scaling lab; the step that failed shows its error, not a blank."""
    measured = _fmt(entry.get(key))
    if measured:
        return measured
    if entry.get("failed_step") == key and entry.get("error"):
        return f"error: {_first_line(entry['error'])}"
    return "not measured"


def _cold_build(doc: dict[str, Any]) -> str:
    images = doc.get("images") or {}
    if images.get("cold_build_skipped"):
        return f"skipped: {images['cold_build_skipped']}"
    if images.get("cold_build_error"):
        return f"error: {_first_line(images['cold_build_error'])}"
    return _s(doc, "images.cold_build_seconds")


def _reset_steps(steps: Any) -> str:
    """Where the resets' time went, each step's median: ": revert 5.1, machines answer 4.1,
    rapi 0.3" (documents before the breakdown have none)."""
    if not isinstance(steps, list) or not steps:
        return ""
    names = [k for k in steps[0] if all(isinstance(s.get(k), int | float) for s in steps)]
    return ": " + ", ".join(f"{k.replace('_', ' ')} {median(s[k] for s in steps):.1f}"
                            for k in names)


def rows(doc: dict[str, Any]) -> list[Row]:
    lab = doc.get("lab") or {}
    out: list[Row] = [
        ("image build, cold cache (downloads included)", _cold_build(doc)),
        ("image build, warm cache (\"nothing changed\")", _s(doc, "images.warm_build_seconds")),
        (f"lab cold start to SSH on every machine, settled ({lab.get('machines', '?')} "
         "machines)", _s(doc, "lab.cold_start_to_ssh_seconds")),
        ("one-cluster bootstrap to a clean verify" + _cluster_parts(lab.get("bootstrap")),
         _s(doc, "lab.bootstrap_one_cluster_seconds")),
        ("two-cluster bootstrap from the \"booted\" snapshot",
         _s(doc, "lab.bootstrap_two_clusters_seconds")),
        ("whole-lab snapshot save", _s(doc, "lab.snapshot_save_seconds")),
        *([("restore to a healthy cluster (restore + health check)",
            _s(doc, "lab.restore_to_healthy_seconds"))]
          # documents of runs before the health check existed have no such figure
          if "restore_to_healthy_seconds" in lab else []),
        ("restore to a verified cluster (restore + gnt-cluster verify)",
         _s(doc, "lab.restore_to_verified_cluster_seconds")),
        ("per-test reset (median)" + _reset_steps(lab.get("per_test_reset_steps")),
         _s(doc, "lab.per_test_reset_seconds")),
        *([("lab-state cache: store the cluster-ready state / start a lab from it to "
            f"healthy ({lab.get('state_cache_entry_gib', '?')} GiB)",
            f"{_s(doc, 'lab.state_cache_store_seconds')} / "
            f"{_s(doc, 'lab.state_cache_start_to_healthy_seconds')}")]
          # documents of runs before the lab-state cache have no such figures
          if "state_cache_store_seconds" in lab else []),
        ("baseline: plain vagrant up + apt/shell provisioning + init + node adds",
         _s(doc, "baseline.total_seconds")),
    ]
    ratios = doc.get("ratios") or {}
    if "baseline_over_cold_start_and_bootstrap" in ratios:
        out.append(("baseline / (our cold start + bootstrap)",
                    f"{ratios['baseline_over_cold_start_and_bootstrap']}x"))
        out.append(("baseline / our per-test reset", f"{ratios['baseline_over_per_test_reset']}x"))
    else:
        out.append(("ratios to the baseline", f"skipped: {ratios.get('reason', 'not measured')}"))
    scaling = doc.get("scaling") or {}
    for entry in scaling.get("labs") or []:
        n = entry.get("hypervisors")
        if entry.get("error") and entry.get("cold_start_to_ssh_seconds") is None:
            out.append((f"scaling, {n} hypervisors", f"error: {_first_line(entry['error'])}"))
            continue
        out.append((f"scaling, {n} hypervisors: cold start / bootstrap",
                    f"{_scaling_figure(entry, 'cold_start_to_ssh_seconds')} / "
                    f"{_scaling_figure(entry, 'bootstrap_one_cluster_seconds')}"))
    pair = scaling.get("two_tiny_labs_at_once")
    if pair:
        out.append(("two tiny labs (2 machines each) up at once, wall clock",
                    _s(pair, "up_wall_seconds") if "up_wall_seconds" in pair
                    else f"error: {_first_line(pair.get('error'))}"))
    elif scaling.get("skipped"):
        out.append(("scaling (2/4/6 hypervisors, two labs at once)",
                    f"skipped: {scaling.get('reason')}"))
    return out


def ratio_rows(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(our figure, ours, the baseline's counterpart, baseline / ours) for every figure."""
    each = (doc.get("ratios") or {}).get("each_figure") or {}
    out = []
    for figure, entry in each.items():
        ratio = (f"{entry['baseline_over_ours']}x" if "baseline_over_ours" in entry
                 else f"not measured: {entry.get('missing')}")
        base = _fmt(entry.get("baseline_seconds")) or "-"
        out.append((figure, _fmt(entry.get("ours_seconds")) or "-",
                    f"{entry.get('baseline_figure')} {base}", ratio))
    return out


def markdown(doc: dict[str, Any]) -> str:
    host = doc.get("host") or {}
    accelerator = (host.get("accelerator") or {}).get("name", "?")
    head = (f"Benchmark {doc.get('run_id', '?')} ({doc.get('started', '?')}): "
            f"{host.get('cores', '?')} cores, {host.get('memory_mib', '?')} MiB, "
            f"accelerator {accelerator}; total "
            f"{_s(doc, 'total_seconds')} s\n\n")
    stopped = doc.get("interrupted")
    if stopped:
        head += (f"**Interrupted** ({stopped.get('signal')}) in section "
                 f"{stopped.get('section')}: later figures were not measured.\n\n")
    lines = ["| figure | seconds |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows(doc)]
    each = ratio_rows(doc)
    if each:
        lines += ["", "Each of our figures against the baseline's step that does the same job "
                  "(`ratios.each_figure` says why each pair compares):", "",
                  "| our figure | ours (s) | baseline counterpart (s) | baseline / ours |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in each]
    lines += _against_lines(doc.get("against"))
    return head + "\n".join(lines) + "\n"


def _against_lines(comparison: dict[str, Any] | None) -> list[str]:
    """This run against the reference document, and the goals (lab/bench/reference.py)."""
    if not comparison:
        return []
    if comparison.get("skipped"):
        return ["", f"Against an earlier run: skipped: {comparison.get('reason')}"]
    lines = ["", f"Against {comparison.get('reference')} (run "
             f"{comparison.get('reference_run_id', '?')}); reference / ours above 1 means "
             "this run was faster:", "",
             "| figure | ours (s) | reference (s) | reference / ours | goal |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in reference.rows(comparison)]
    return lines
