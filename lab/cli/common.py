"""What every subcommand shares: the consoles, lab names and topologies from arguments, the
status table."""

from __future__ import annotations

import argparse
import os
import sys

from rich.console import Console
from rich.table import Table

from lab import statecache, topology
from lab.errors import LabError
from lab.images.local_debs import LocalDebs
from lab.lab import Lab
from lab.leases import LeaseBook
from lab.names import name_problem

console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
# Errors go to stderr: stdout may be a document someone pipes (bench JSON, prepare's exports).
errors = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 160)


def name_arg(text: str) -> str:
    problem = name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"invalid lab name: {problem}")
    return text


def lab_name(args: argparse.Namespace) -> str:
    if getattr(args, "name", None):
        return str(args.name)
    labs = sorted(LeaseBook().all())
    if len(labs) == 1:
        return labs[0]
    if not labs:
        raise LabError("no lab is running on this host", "bring one up with `ganeti-lab up`")
    raise LabError(f"several labs are running ({', '.join(labs)})", "pick one with --name")


def lab_options(sp: argparse.ArgumentParser, topo: bool = False) -> None:
    sp.add_argument("--name", type=name_arg,
                    help="lab name (default: the topology's, or the only lab)")
    if topo:
        sp.add_argument("--topology", help="TOML file or built-in profile name")
        ganeti_debs_option(sp)


def cache_option(sp: argparse.ArgumentParser, default: str | None = None) -> None:
    sp.add_argument("--cache", choices=("on", "off"), default=default,
                    help="the lab-state cache: start from a cached booted or cluster-ready "
                         "state when the host holds one, and keep new ones (default: "
                         + (default or "$GANETI_LAB_STATE_CACHE, else on") + ")")


def apply_cache_option(args: argparse.Namespace) -> None:
    if getattr(args, "cache", None) is not None:
        os.environ[statecache.ENV] = args.cache


def ganeti_debs_option(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--ganeti-debs", metavar="DIR",
                    help="locally built Ganeti packages (.deb) layered into the hypervisor "
                         "image, which gets a key of its own (built if missing; needs root)")


def local_debs(args: argparse.Namespace) -> LocalDebs | None:
    """The packages of --ganeti-debs, read and checked before anything is changed."""
    return LocalDebs.load(args.ganeti_debs) if getattr(args, "ganeti_debs", None) else None


def load_topology(args: argparse.Namespace) -> topology.Topology:
    """The topology, with memory checked against what the host's other labs already use."""
    others = topology.memory_in_use_mib(exclude={args.name} if args.name else ())
    return topology.load(args.topology, running_mib=others)


def print_status(lab: Lab) -> None:
    status = lab.status()
    table = Table("machine", "role", "state", "management IP", "lab IP", "console log",
                  title=f"lab {lab.name} ({status['accelerator']})")
    for m in status["machines"]:
        table.add_row(m["name"], m["role"], m["state"], m["mgmt_ip"], m["lab_ip"],
                      m["console"])
    console.print(table)
