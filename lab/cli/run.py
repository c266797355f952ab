"""`ganeti-lab run` (the main job) and `ganeti-lab report`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from lab import report
from lab.cli.common import cache_option, console, lab_options
from lab.timings import new_run_id

NIGHTLY_TESTS = ("tests/test_bench.py::test_smoke_smallest_bench_on_a_tiny_lab",
                 "tests/test_plain_vagrant.py",
                 "tests/test_ganeti_clusters.py::test_two_clusters_from_the_booted_snapshot",
                 "tests/test_ganeti_debs_lab.py")


def cmd_run(args: argparse.Namespace) -> int:
    """The main job: images if needed, the lab, every scenario, timings and report."""
    import pytest

    run_id = new_run_id()
    os.environ["GANETI_LAB_RUN_ID"] = run_id
    # The tests CI leaves to the nightly run, when the project's tests are at hand.
    nightly = [test for test in NIGHTLY_TESTS if Path(test.split("::")[0]).exists()]
    argv = [args.scenarios, *nightly, "--lab-nightly", f"--lab-profile={args.profile}",
            f"--lab-keep={args.keep}", f"--lab-runs={args.runs}", f"--lab-cache={args.cache}",
            "-p", "no:cacheprovider", "-v"]
    if args.topology:
        argv.append(f"--lab-topology={args.topology}")
    if args.name:
        argv.append(f"--lab-name={args.name}")
    if args.reuse:
        argv.append("--lab-reuse")
    if args.ganeti_patch:
        argv += [f"--ganeti-patch={args.ganeti_patch}",
                 f"--ganeti-patch-series={args.ganeti_patch_series}"]
    if args.ganeti_debs:
        argv.append(f"--ganeti-debs={args.ganeti_debs}")
    argv += args.pytest_args
    code = int(pytest.main(argv))
    console.print(f"run {run_id}: {Path(args.runs) / run_id}")
    return code


def cmd_report(args: argparse.Namespace) -> int:
    dirs = [Path(d) for d in args.run_dirs] or [Path(args.runs)]
    out = report.render(dirs, Path(args.output) if args.output else None)
    console.print(f"report: {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sp = sub.add_parser("run", help="main job: images, lab, all scenarios, timings + report")
    lab_options(sp, topo=True)
    sp.add_argument("--profile", choices=("small", "full"), default="full",
                    help="scenario sizes (default full; CI runs small)")
    sp.add_argument("--keep", choices=("always", "failed", "never"), default="failed")
    sp.add_argument("--reuse", action="store_true", help="reuse a running lab of that name")
    sp.add_argument("--runs", default="runs", help="directory of run records")
    # Off unless asked: the main job measures every phase, the boot and bootstraps included.
    cache_option(sp, default="off")
    sp.add_argument("--scenarios", default="scenarios", help="scenario directory or file")
    sp.add_argument("--ganeti-patch", metavar="FILE",
                    help="a unified diff against Ganeti's Python tree (lib/...), applied on "
                         "the nodes of every cluster of --ganeti-patch-series before it forms; "
                         "its hash names the lab's layout snapshots and is in the run record")
    sp.add_argument("--ganeti-patch-series", default="3.0", metavar="SERIES",
                    help="the Ganeti series the patch is for (default 3.0)")
    sp.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    sp.set_defaults(fn=cmd_run)

    sp = sub.add_parser("report", help="HTML report (table, timeline, trends) of run(s)")
    sp.add_argument("run_dirs", nargs="*", help="run directories (default: all under --runs)")
    sp.add_argument("--runs", default="runs")
    sp.add_argument("--output", help="report.html path (default: in the newest run)")
    sp.set_defaults(fn=cmd_report)
