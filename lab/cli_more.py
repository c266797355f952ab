"""CLI commands of the upper layers: clusters, the main job, reports and the benchmark."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.console import Console

from lab import report
from lab.errors import LabError
from lab.ganeti import health
from lab.ganeti.bootstrap import clusters_of, current_layout, ensure_layout
from lab.machines import Lab
from lab.timings import Timings, new_run_id

console = Console(soft_wrap=True)


def cmd_cluster_init(args: argparse.Namespace) -> int:
    from lab.cli import _lab_name

    lab = Lab.attach(_lab_name(args))
    run_id = new_run_id()
    timings = Timings(Path(args.runs) / run_id, run_id)
    clusters = ensure_layout(lab, args.layout, timings)
    timings.write()
    for name, c in clusters.items():
        info = c.rapi.info()
        console.print(f"cluster {name}: {info['name']} master {info['master']}, "
                      f"RAPI https://{c.plan.ip}:5080 (CA {c.state_dir / 'rapi-ca.pem'}, "
                      f"user/password in {c.state_dir / 'rapi.json'})")
    console.print(f"timings: {timings.path}")
    return 0


def cmd_cluster_health(args: argparse.Namespace) -> int:
    """The live layout's clusters: the quick health check, or `gnt-cluster verify` too."""
    from lab.cli import _lab_name

    lab = Lab.attach(_lab_name(args))
    layout = current_layout(lab)
    if layout is None:
        raise LabError(f"lab {lab.name} runs no cluster", "form one: `ganeti-lab cluster init`")
    healthy = True
    for name, c in clusters_of(lab, layout).items():
        found = health.check(c)
        healthy &= found.ok
        console.print(f"cluster {name}: " + ("healthy" if found.ok else "NOT healthy")
                      + f" ({found.seconds:.1f} s)")
        for problem in found.problems:
            console.print(f"  {problem}")
        if args.verify:
            result = c.verify()
            healthy &= result.ok
            console.print(f"cluster {name}: gnt-cluster verify "
                          + ("clean" if result.ok else "found errors")
                          + f" ({len(result.warnings)} warnings)")
            for line in result.errors:
                console.print(f"  {line.strip()}")
    return 0 if healthy else 1


NIGHTLY_TESTS = ("tests/test_bench.py::test_smoke_smallest_bench_on_a_tiny_lab",
                 "tests/test_plain_vagrant.py")


def cmd_run(args: argparse.Namespace) -> int:
    """The main job: images if needed, the lab, every scenario, timings and report."""
    import pytest

    run_id = new_run_id()
    os.environ["GANETI_LAB_RUN_ID"] = run_id
    # The tests CI leaves to the nightly run, when the project's tests are at hand.
    nightly = [test for test in NIGHTLY_TESTS if Path(test.split("::")[0]).exists()]
    argv = [args.scenarios, *nightly, "--lab-nightly", f"--lab-profile={args.profile}",
            f"--lab-keep={args.keep}", f"--lab-runs={args.runs}", "-p", "no:cacheprovider",
            "-v"]
    if args.topology:
        argv.append(f"--lab-topology={args.topology}")
    if args.name:
        argv.append(f"--lab-name={args.name}")
    if args.reuse:
        argv.append("--lab-reuse")
    argv += args.pytest_args
    code = int(pytest.main(argv))
    console.print(f"run {run_id}: {Path(args.runs) / run_id}")
    return code


def cmd_report(args: argparse.Namespace) -> int:
    dirs = [Path(d) for d in args.run_dirs] or [Path(args.runs)]
    out = report.render(dirs, Path(args.output) if args.output else None)
    console.print(f"report: {out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from lab.bench import run_bench
    from lab.bench.summary import markdown

    if args.summarize:  # a saved document as the README's Markdown table; nothing is run
        try:
            saved = json.loads(Path(args.summarize).read_text())
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot read the benchmark document {args.summarize}: {exc}",
                           "pass the file written by `ganeti-lab bench --output FILE`") from exc
        sys.stdout.write(markdown(saved))
        return 0
    document = run_bench(args)
    text = json.dumps(document, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    sys.stdout.write(text + "\n")
    sys.stderr.write(markdown(document))  # stdout is the JSON document alone
    if document.get("interrupted"):  # what was measured is out; the exit says it is partial
        return 130
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sp = sub.add_parser("cluster", help="form the lab's Ganeti clusters (a layout), verified")
    csub = sp.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    init = csub.add_parser("init", help="form LAYOUT (default: the topology's), snapshot it")
    init.add_argument("--name", help="lab name")
    init.add_argument("--layout", help="layout of the topology (e.g. one-cluster)")
    init.add_argument("--runs", default="runs", help="where the timings record goes")
    init.set_defaults(fn=cmd_cluster_init)
    check = csub.add_parser("health", help="the live layout's clusters: daemons, nodes, jobs, "
                            "clocks, shared storage (seconds); exit 1 if unhealthy")
    check.add_argument("--name", help="lab name")
    check.add_argument("--verify", action="store_true", help="also run gnt-cluster verify")
    check.set_defaults(fn=cmd_cluster_health)

    sp = sub.add_parser("run", help="main job: images, lab, all scenarios, timings + report")
    sp.add_argument("--topology", help="TOML file or built-in profile")
    sp.add_argument("--name", help="lab name")
    sp.add_argument("--profile", choices=("small", "full"), default="full",
                    help="scenario sizes (default full; CI runs small)")
    sp.add_argument("--keep", choices=("always", "failed", "never"), default="failed")
    sp.add_argument("--reuse", action="store_true", help="reuse a running lab of that name")
    sp.add_argument("--runs", default="runs", help="directory of run records")
    sp.add_argument("--scenarios", default="scenarios", help="scenario directory or file")
    sp.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    sp.set_defaults(fn=cmd_run)

    sp = sub.add_parser("report", help="HTML report (table, timeline, trends) of run(s)")
    sp.add_argument("run_dirs", nargs="*", help="run directories (default: all under --runs)")
    sp.add_argument("--runs", default="runs")
    sp.add_argument("--output", help="report.html path (default: in the newest run)")
    sp.set_defaults(fn=cmd_report)

    sp = sub.add_parser("bench", help="benchmark: image build, bring-up, reset, baseline; JSON")
    sp.add_argument("--output", help="also write the JSON document to this file")
    sp.add_argument("--smallest", action="store_true",
                    help="smoke settings: tiny lab only, no scaling, no baseline")
    sp.add_argument("--skip-cold-build", action="store_true",
                    help="do not rebuild images from a cold cache")
    sp.add_argument("--skip-baseline", action="store_true")
    sp.add_argument("--skip-scaling", action="store_true")
    sp.add_argument("--summarize", metavar="FILE",
                    help="print a saved document as a Markdown table of figures; run nothing")
    sp.set_defaults(fn=cmd_bench)


