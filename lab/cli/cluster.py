"""`ganeti-lab cluster init|health`: a layout's Ganeti clusters."""

from __future__ import annotations

import argparse
from pathlib import Path

from lab.cli.common import apply_cache_option, cache_option, console, lab_name, lab_options
from lab.errors import LabError
from lab.ganeti import health
from lab.ganeti.bootstrap import clusters_of, current_layout, ensure_layout
from lab.lab import Lab
from lab.timings import Timings, new_run_id


def cmd_cluster_init(args: argparse.Namespace) -> int:
    apply_cache_option(args)
    lab = Lab.attach(lab_name(args))
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
    lab = Lab.attach(lab_name(args))
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


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sp = sub.add_parser("cluster", help="form the lab's Ganeti clusters (a layout), verified")
    csub = sp.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    init = csub.add_parser("init", help="form LAYOUT (default: the topology's), snapshot it")
    lab_options(init)
    init.add_argument("--layout", help="layout of the topology (e.g. one-cluster)")
    init.add_argument("--runs", default="runs", help="where the timings record goes")
    cache_option(init)
    init.set_defaults(fn=cmd_cluster_init)
    check = csub.add_parser("health", help="the live layout's clusters: daemons, nodes, jobs, "
                            "clocks, shared storage (seconds); exit 1 if unhealthy")
    lab_options(check)
    check.add_argument("--verify", action="store_true", help="also run gnt-cluster verify")
    check.set_defaults(fn=cmd_cluster_health)
