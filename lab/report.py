"""HTML report of one or more runs' timings.json: phase table, timeline and trends.

``render([runs/<a>, runs/<b>, ...])`` writes ``report.html`` plus PNG plots next
to it (default: into the latest run's directory). The page is self-contained:
no JavaScript, no external resources, only relative links to its own PNGs.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from lab import secrets as lab_secrets
from lab.errors import LabError
from lab.timings import FILENAME, Timings, TimingsError

__all__ = ["REGRESSION_RATIO", "TREND_LIMIT", "ReportError", "render"]

# A phase counts as regressed when latest / median(earlier runs) exceeds this.
REGRESSION_RATIO = 1.25
# More series than this makes the trend plot unreadable.
TREND_LIMIT = 12
# Timeline rows beyond this get too thin to read; deeper levels are dropped first.
TIMELINE_MAX_ROWS = 60
# A phase with this metric set gets a timeline of its own (lab.timings.Timings.phase).
RUNBOOK_METRIC = "timeline"
# Phases with this metric (a title) become the rows of one table under that title, their other
# metrics its columns: figures a scenario compares side by side (moves, submission modes).
TABLE_METRIC = "table"

_COLOURS = {
    "passed": "#3b7dd8",
    "failed": "#d62728",
    "error": "#8c564b",  # the harness broke (a machine, libvirt, SSH), not Ganeti
    "interrupted": "#f28e2b",
    "skipped": "#a0a0a0",
    "xfailed": "#9467bd",  # a known bug proven by a strict xfail: expected, not a failure
}


# Written as escapes: ruff flags these look-alike characters in source.
_SEP = " \u203a "  # single right angle quote: path of a nested phase
_TIMES = "\u00d7"  # multiplication sign: ratio
_DASH = "\u2013"  # en dash: no value


class ReportError(LabError):
    """A run directory or its timings.json cannot be used for a report."""


@dataclass
class _Phase:
    name: str
    parent: str | None
    id: int | None  # schema 2: unique in the run; parent_id names the parent exactly
    parent_id: int | None
    start: datetime
    seconds: float
    outcome: str
    error: str | None
    metrics: dict[str, Any]
    depth: int = 0
    key: str = ""  # ancestor names and own name joined by _SEP: same phase across runs
    offset: float = 0.0  # seconds since the run's origin
    up: _Phase | None = None
    children: list[_Phase] = field(default_factory=list)

    @property
    def end(self) -> float:
        return self.offset + self.seconds


@dataclass
class _Run:
    file: Path
    run_id: str
    started: datetime
    finished: datetime | None
    host: dict[str, Any]
    meta: dict[str, Any]
    phases: list[_Phase]  # depth-first tree order

    @property
    def duration(self) -> float:
        """Wall time of the run: from its start to the latest phase end / finish stamp."""
        ends = [p.end for p in self.phases]
        if self.finished is not None:
            ends.append((self.finished - self.started).total_seconds())
        return max(ends, default=0.0)

    def totals(self) -> dict[str, tuple[float, bool]]:
        """Seconds per phase key (repeats summed) and whether any of them failed."""
        out: dict[str, tuple[float, bool]] = {}
        for p in self.phases:
            secs, failed = out.get(p.key, (0.0, False))
            bad = p.outcome in ("failed", "error", "interrupted")
            out[p.key] = (secs + p.seconds, failed or bad)
        return out


# ---------------------------------------------------------------- loading


def _parse_time(value: Any, what: str) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"{what} is not an ISO 8601 string: {value!r}")
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{what} is not an ISO 8601 time: {value!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _parse_phase(raw: Any, idx: int) -> _Phase:
    what = f"phase #{idx}"
    if not isinstance(raw, dict):
        raise ValueError(f"{what} is not an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} has no name")
    what = f"phase #{idx} ({name!r})"
    secs = raw.get("seconds")
    if isinstance(secs, bool) or not isinstance(secs, int | float) or not secs >= 0:
        raise ValueError(f"{what} has a bad 'seconds': {secs!r}")
    parent = raw.get("parent")
    if parent is not None and not isinstance(parent, str):
        raise ValueError(f"{what} has a bad 'parent': {parent!r}")
    metrics = raw.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise ValueError(f"{what} has bad 'metrics'")
    error = raw.get("error")
    ids = {key: raw.get(key) for key in ("id", "parent_id")}
    for key, value in ids.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{what} has a bad {key!r}: {value!r}")
    return _Phase(
        name=name,
        parent=parent,
        id=ids["id"],
        parent_id=ids["parent_id"],
        start=_parse_time(raw.get("start"), f"{what} 'start'"),
        seconds=float(secs),
        outcome=str(raw.get("outcome") or "passed"),
        error=None if error is None else str(error),
        metrics=metrics,
    )


def _link_tree(phases: list[_Phase], origin: datetime) -> list[_Phase]:
    """Attach each phase to its parent and return them in depth-first order.

    Schema 2 names each parent by id. Schema 1 named it only by name, so when a name repeats
    the parent is the same-named phase whose interval holds the child's start (innermost).
    """
    for p in phases:
        p.offset = (p.start - origin).total_seconds()
    # Longer first on equal starts, so a parent sorts before its first child.
    phases = sorted(phases, key=lambda p: (p.offset, -p.seconds))
    by_id = {p.id: p for p in phases if p.id is not None}
    by_name: dict[str, list[_Phase]] = {}
    for p in phases:
        by_name.setdefault(p.name, []).append(p)
    eps = 0.005  # start stamps are rounded to milliseconds
    for p in phases:
        found = by_id.get(p.parent_id) if p.parent_id is not None else None
        if found is not None and found is not p:
            up = found
        else:
            cands = [q for q in by_name.get(p.parent or "", []) if q is not p]
            if not cands:
                continue
            holding = [q for q in cands if q.offset - eps <= p.offset <= q.end + eps]
            before = [q for q in cands if q.offset <= p.offset + eps]
            pool = holding or before or cands
            up = max(pool, key=lambda q: (q.offset, -q.seconds))
        # Malformed data could make a loop; such a phase is shown at top level.
        anc = up
        while anc is not None and anc is not p:
            anc = anc.up
        if anc is None:
            p.up = up
            up.children.append(p)
    ordered: list[_Phase] = []

    def walk(p: _Phase, depth: int, prefix: str) -> None:
        p.depth = depth
        p.key = f"{prefix}{_SEP}{p.name}" if prefix else p.name
        ordered.append(p)
        for c in sorted(p.children, key=lambda c: (c.offset, -c.seconds)):
            walk(c, depth + 1, p.key)

    for p in phases:
        if p.up is None:
            walk(p, 0, "")
    return ordered


def _load_run(file: Path) -> _Run:
    try:
        doc = Timings.load(file)
    except TimingsError as exc:
        raise ReportError(f"malformed or missing timings file: {exc}") from exc
    # Runs of the history may predate scrubbing: the plots (images, which cannot be scrubbed
    # afterwards) and the HTML are drawn from scrubbed figures only.
    doc = json.loads(lab_secrets.scrub(json.dumps(doc, default=str)))
    try:
        phases = [_parse_phase(raw, i) for i, raw in enumerate(doc["phases"])]
        if doc.get("started") is not None:
            started = _parse_time(doc["started"], "'started'")
        elif phases:
            started = min(p.start for p in phases)
        else:
            raise ValueError("no 'started' and no phases")
        finished = doc.get("finished")
        finished_dt = _parse_time(finished, "'finished'") if finished is not None else None
        host, meta = doc.get("host") or {}, doc.get("meta") or {}
        if not isinstance(host, dict) or not isinstance(meta, dict):
            raise ValueError("'host' and 'meta' must be objects")
    except ValueError as exc:
        raise ReportError(f"malformed timings file {file}: {exc}") from exc
    # Phases recorded with an explicit earlier start must not get negative offsets.
    origin = min([started, *(p.start for p in phases)])
    return _Run(
        file=file,
        run_id=str(doc.get("run_id") or file.parent.name),
        started=origin,
        finished=finished_dt,
        host=host,
        meta=meta,
        phases=_link_tree(phases, origin),
    )


def _expand(run_dirs: Iterable[Path | str] | Path | str) -> list[Path]:
    """timings.json files for the given run dirs, files, or parents of run dirs."""
    if isinstance(run_dirs, str | Path):
        run_dirs = [run_dirs]
    files: list[Path] = []
    for entry in map(Path, run_dirs):
        if entry.is_file():
            files.append(entry)
        elif (entry / FILENAME).exists():
            files.append(entry / FILENAME)
        elif entry.is_dir():
            found = sorted(d / FILENAME for d in entry.iterdir() if (d / FILENAME).exists())
            if not found:
                raise ReportError(f"{entry / FILENAME}: no such file (nor in any subdirectory)")
            files.extend(found)
        else:
            raise ReportError(f"{entry / FILENAME}: no such file or directory")
    unique = list(dict.fromkeys(f.resolve() for f in files))
    if not unique:
        raise ReportError("no run directories given")
    return unique


# ---------------------------------------------------------------- plots


def _save(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # attaches the Agg canvas; no pyplot, no global backend state
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight", facecolor="white")


def _timeline_rows(run: _Run) -> tuple[list[_Phase], int | None]:
    rows, cut = run.phases, None
    while len(rows) > TIMELINE_MAX_ROWS and max(p.depth for p in rows) > 0:
        cut = max(p.depth for p in rows) - 1
        rows = [p for p in rows if p.depth <= cut]
    return rows[:TIMELINE_MAX_ROWS], cut


def _runbooks(run: _Run) -> list[tuple[_Phase, list[_Phase]]]:
    """Each phase recorded with the metric ``timeline`` (a scenario's runbook: an upgrade, a
    roll) with its own phases, timed from its start, for a timeline of its own."""
    found = []
    for top in run.phases:
        if not top.metrics.get(RUNBOOK_METRIC):
            continue
        rows: list[_Phase] = []

        def walk(p: _Phase, top: _Phase = top, rows: list[_Phase] = rows) -> None:
            rows.append(replace(p, offset=p.offset - top.offset, depth=p.depth - top.depth))
            for c in sorted(p.children, key=lambda c: (c.offset, -c.seconds)):
                walk(c)

        walk(top)
        found.append((top, rows[:TIMELINE_MAX_ROWS]))
    return found


def _plot_timeline(rows: list[_Phase], path: Path,
                   xlabel: str = "seconds since run start") -> None:
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    span = max((p.end for p in rows), default=1.0) or 1.0
    labels = ["  " * p.depth + _trim(p.name, 48 - 2 * p.depth) for p in rows]
    fig = Figure(figsize=(11, 0.28 * len(rows) + 1.1))
    ax = fig.add_subplot()
    colours = [
        _shade(_COLOURS["passed"], p.depth)
        if p.outcome == "passed"
        else _COLOURS.get(p.outcome, "#666666")
        for p in rows
    ]
    # A minimum width keeps sub-second phases visible next to long ones.
    widths = [max(p.seconds, span * 0.002) for p in rows]
    ax.barh(
        range(len(rows)),
        widths,
        left=[p.offset for p in rows],
        height=0.7,
        color=colours,
        edgecolor="none",
    )
    for i, p in enumerate(rows):
        ax.text(
            p.offset + widths[i] + span * 0.005,
            i,
            _fmt_secs(p.seconds),
            va="center",
            ha="left",
            fontsize=7.5,
            color="#333333",
        )
    ax.set_yticks(range(len(rows)))
    # Left-aligned monospace labels so the indentation shows the nesting; the
    # pad pushes them left of the axis by the width of the longest one.
    font_pt = 8.5
    pad = max(len(s) for s in labels) * font_pt * 0.61 + 6
    ax.set_yticklabels(labels, fontsize=font_pt, family="monospace", ha="left")
    ax.tick_params(axis="y", pad=pad, length=0)
    ax.set_ylim(len(rows) - 0.4, -0.6)  # first phase on top
    ax.set_xlim(0, span * 1.1)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", color="#e4e4e4")
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    present = [o for o in _COLOURS if any(p.outcome == o for p in rows)]
    if len(present) > 1:
        ax.legend(
            handles=[Patch(color=_COLOURS[o], label=o) for o in present],
            loc="upper right",
            fontsize=8,
            frameon=False,
        )
    _save(fig, path)


@dataclass
class _Trend:
    key: str
    top_level: bool
    points: list[tuple[datetime, float, bool]]  # (run start, seconds, failed)
    latest: float | None  # in this run
    earlier_median: float | None
    earlier_runs: int

    @property
    def ratio(self) -> float | None:
        if self.latest is None or not self.earlier_median:
            return None
        return self.latest / self.earlier_median

    @property
    def regressed(self) -> bool:
        return self.ratio is not None and self.ratio > REGRESSION_RATIO


def _trends(runs: list[_Run]) -> list[_Trend]:
    totals = [r.totals() for r in runs]
    this = totals[-1]
    top = {p.key for r in runs for p in r.phases if p.depth == 0}
    keys = list(dict.fromkeys(k for t in totals for k in t))
    out = []
    for key in keys:
        points = [
            (r.started, t[key][0], t[key][1]) for r, t in zip(runs, totals, strict=True) if key in t
        ]
        earlier = [t[key][0] for t in totals[:-1] if key in t]
        out.append(
            _Trend(
                key=key,
                top_level=key in top,
                points=points,
                latest=this[key][0] if key in this else None,
                earlier_median=statistics.median(earlier) if earlier else None,
                earlier_runs=len(earlier),
            )
        )
    return out


def _plot_trends(trends: list[_Trend], path: Path) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    # Small multiples with their own y scale: a 30 % regression of a 10 s phase
    # would be invisible on an axis shared with a 10 min one.
    ncols = min(3, len(trends))
    nrows = math.ceil(len(trends) / ncols)
    fig = Figure(figsize=(11, 2.3 * nrows + 0.3), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True)
    for i, (ax, tr) in enumerate(zip(axes.flat, trends, strict=False)):
        xs = [p[0] for p in tr.points]
        ys = [p[1] for p in tr.points]
        ax.plot(xs, ys, color="#3b7dd8", marker="o", markersize=4, linewidth=1.5)
        bad = [(x, y) for x, y, failed in tr.points if failed]
        if bad:
            ax.plot(
                *zip(*bad, strict=True),
                linestyle="none",
                marker="x",
                color="#d62728",
                markersize=8,
                markeredgewidth=2,
                zorder=5,  # above the "this run" dot, which would hide it
                label="failed",
            )
        if tr.earlier_median is not None:
            ax.axhline(tr.earlier_median, color="#888888", linestyle="--", linewidth=1)
        if tr.latest is not None:
            ax.plot(
                [xs[-1]],
                [tr.latest],
                marker="o",
                markersize=7,
                linestyle="none",
                color="#d62728" if tr.regressed else "#1b4f9c",
            )
        title = _trim_left(tr.key, 40)
        if tr.ratio is not None:
            title += f"  {_TIMES}{tr.ratio:.2f}"
        ax.set_title(
            title,
            fontsize=9,
            loc="left",
            color="#b00000" if tr.regressed else "#222222",
            fontweight="bold" if tr.regressed else "normal",
        )
        ax.set_ylim(bottom=0, top=max(ys) * 1.18 or 1)
        ax.set_ylabel("s", fontsize=8, rotation=0, labelpad=6)
        locator = AutoDateLocator(minticks=2, maxticks=4)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        ax.tick_params(labelsize=7.5)
        if i + ncols < len(trends):
            # Shared time axis: dates only under the lowest plot of each column.
            ax.tick_params(labelbottom=False)
            ax.xaxis.get_offset_text().set_visible(False)
        ax.grid(color="#ececec")
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    for ax in list(axes.flat)[len(trends) :]:
        ax.set_visible(False)
    _save(fig, path)


def _shade(hex_colour: str, depth: int) -> tuple[float, float, float]:
    """Lighter tint of a colour for deeper nesting levels."""
    r, g, b = (int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    t = min(depth * 0.22, 0.66)
    return (r + (1 - r) * t, g + (1 - g) * t, b + (1 - b) * t)


# ---------------------------------------------------------------- HTML


def _trim(text: str, width: int) -> str:
    width = max(width, 8)
    return text if len(text) <= width else text[: width - 1] + "…"


def _trim_left(text: str, width: int) -> str:
    """Shorten from the left: the end of a phase path is its most specific part."""
    width = max(width, 8)
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def _fmt_secs(secs: float | None) -> str:
    if secs is None:
        return _DASH
    if secs >= 120:
        m, s = divmod(secs, 60)
        return f"{secs:.1f} s ({int(m)}m{s:02.0f}s)"
    return f"{secs:.2f} s"


def _fmt_value(value: Any) -> str:
    if value is None:
        return _DASH
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt_value(v)}" for k, v in value.items())
    if isinstance(value, list | tuple | set):
        return ", ".join(_fmt_value(v) for v in value)
    return str(value)


def _fmt_time(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# Headline facts: label and the keys (in host, then meta) callers may use for it.
_FACTS = [
    ("Cores", ("cores", "cpus")),
    ("Memory", ("memory_mib", "memory")),
    ("Accelerator", ("accelerator", "accel")),
    ("Image keys", ("image_keys", "image_key", "images", "image")),
    ("Ganeti", ("ganeti_versions", "ganeti_version", "ganeti")),
    ("Git commit", ("git_commit", "commit")),
]


def _facts(run: _Run) -> list[tuple[str, str]]:
    out = []
    for label, keys in _FACTS:
        for src in (run.host, run.meta):
            key = next((k for k in keys if src.get(k) not in (None, "", [], {})), None)
            if key is None:
                continue
            val = src[key]
            if key == "memory_mib" and isinstance(val, int | float):
                text = f"{val / 1024:.1f} GiB"
            elif label == "Git commit" and isinstance(val, str):
                text = val[:12]
            else:
                text = _fmt_value(val)
            out.append((label, text))
            break
    return out


def _phase_rows(run: _Run) -> list[dict[str, Any]]:
    span = run.duration or 1.0
    return [
        {
            "name": p.name,
            "depth": p.depth,
            "offset": f"+{p.offset:.2f}",
            "seconds": _fmt_secs(p.seconds),
            "share": min(100.0, 100 * p.seconds / span),
            "outcome": p.outcome,
            "error": p.error,
            "metrics": [(k, _fmt_value(v)) for k, v in p.metrics.items()],
        }
        for p in run.phases
    ]


def _tables(run: _Run) -> list[dict[str, Any]]:
    """Phases carrying the ``table`` metric, one table per title, in the order first seen;
    columns are the union of their metrics in the order first seen."""
    tables: dict[str, dict[str, Any]] = {}
    for p in sorted(run.phases, key=lambda p: p.offset):
        title = p.metrics.get(TABLE_METRIC)
        if not title:
            continue
        table = tables.setdefault(str(title), {"title": str(title), "columns": [], "rows": []})
        figures = {k: v for k, v in p.metrics.items() if k != TABLE_METRIC}
        for key in figures:
            if key not in table["columns"]:
                table["columns"].append(key)
        table["rows"].append({"name": p.name, "outcome": p.outcome, "seconds": p.seconds,
                              "figures": figures})
    for table in tables.values():
        for row in table["rows"]:
            row["cells"] = [_fmt_value(row["figures"][c]) if c in row["figures"] else _DASH
                            for c in table["columns"]]
            row["seconds"] = _fmt_secs(row["seconds"])
            del row["figures"]
    return list(tables.values())


def _counts(run: _Run) -> str:
    seen: dict[str, int] = {}
    for p in run.phases:
        seen[p.outcome] = seen.get(p.outcome, 0) + 1
    if not seen:
        return "no phases"
    return ", ".join(f"{n} {o}" for o, n in sorted(seen.items(), key=lambda kv: -kv[1]))


def _run_summary(run: _Run) -> dict[str, str]:
    commit = run.host.get("git_commit") or run.meta.get("git_commit")
    return {
        "run_id": run.run_id,
        "started": _fmt_time(run.started),
        "duration": _fmt_secs(run.duration),
        "counts": _counts(run),
        "commit": str(commit)[:12] if commit else _DASH,
    }


def render(run_dirs: list[Path], out: Path | None = None) -> Path:
    """Write an HTML report of the given runs; return the path of the HTML file.

    ``run_dirs`` entries may be run directories, timings.json files, or parent
    directories of several runs. The run that started last is "this run".
    ``out`` defaults to ``<this run's dir>/report.html`` (a directory, or a
    path without suffix, gets ``report.html`` inside); the PNG plots are
    written next to it.
    """
    runs = sorted((_load_run(f) for f in _expand(run_dirs)), key=lambda r: r.started)
    this = runs[-1]
    out = Path(out) if out is not None else this.file.parent / "report.html"
    if out.is_dir() or not out.suffix:  # a directory, existing or to be made
        out = out / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)

    timeline_png = out.with_name(f"{out.stem}-timeline.png")
    trend_png = out.with_name(f"{out.stem}-trend.png")
    # Stale plots from an earlier render must not sit beside a report lacking them.
    for png in (timeline_png, trend_png, *out.parent.glob(f"{out.stem}-runbook-*.png")):
        png.unlink(missing_ok=True)

    rows, cut = _timeline_rows(this)
    if rows:
        _plot_timeline(rows, timeline_png)
    runbooks = []
    for i, (top, book) in enumerate(_runbooks(this), start=1):
        png = out.with_name(f"{out.stem}-runbook-{i}.png")
        _plot_timeline(book, png, xlabel=f"seconds since {top.name!r} started")
        runbooks.append({"name": top.key, "png": png.name, "seconds": _fmt_secs(top.seconds),
                         "outcome": top.outcome})

    trend_rows: list[dict[str, Any]] = []
    plotted: list[_Trend] = []
    if len(runs) > 1:
        trends = _trends(runs)
        wanted = [t for t in trends if t.top_level or len(t.points) >= 2]
        # Regressions first (they are the point of the plot), then the slowest.
        plotted = sorted(
            wanted,
            key=lambda t: (
                not t.regressed,
                -(t.latest if t.latest is not None else t.earlier_median or 0.0),
            ),
        )[:TREND_LIMIT]
        if plotted:
            _plot_trends(plotted, trend_png)
        # Table: everything comparable; regressions first, then the slowest.
        comparable = [t for t in trends if t.latest is not None and t.earlier_runs]
        comparable.sort(key=lambda t: (not t.regressed, -(t.latest or 0.0)))
        trend_rows = [
            {
                "key": t.key,
                "latest": _fmt_secs(t.latest),
                "median": _fmt_secs(t.earlier_median),
                "ratio": f"{_TIMES}{t.ratio:.2f}" if t.ratio is not None else _DASH,
                "regressed": t.regressed,
                "better": t.ratio is not None and t.ratio < 1 / REGRESSION_RATIO,
                "earlier_runs": t.earlier_runs,
            }
            for t in comparable
        ]

    env = jinja2.Environment(loader=jinja2.PackageLoader("lab", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    html = env.get_template("report.html.j2").render(
        run=_run_summary(this),
        runs=[_run_summary(r) for r in runs],
        facts=_facts(this),
        phases=_phase_rows(this),
        timeline=timeline_png.name if rows else None,
        timeline_cut=cut,
        runbooks=runbooks,
        tables=_tables(this),
        trends=trend_rows,
        plotted=plotted,
        trend_png=trend_png.name if plotted else None,
        threshold=f"{REGRESSION_RATIO:g}",
        host=[(k, _fmt_value(v)) for k, v in this.host.items()],
        meta=[(k, _fmt_value(v)) for k, v in this.meta.items()],
        generated=_fmt_time(datetime.now(UTC)),
        source=", ".join(str(r.file) for r in runs) if len(runs) <= 3 else f"{len(runs)} runs",
    )
    out.write_text(lab_secrets.scrub(html), encoding="utf-8")
    return out
