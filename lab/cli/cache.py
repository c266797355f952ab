"""`ganeti-lab cache list|prune`: the lab-state cache (lab/statecache.py)."""

from __future__ import annotations

import argparse

from rich.table import Table

from lab import statecache
from lab.cli.common import console


def cmd_cache_list(args: argparse.Namespace) -> int:
    table = Table("entry", "state", "subnets", "size", "stored", "made by lab", "last used",
                  "current")
    total = 0
    for entry in statecache.entries():
        total += entry.size
        table.add_row(entry.path.name, entry.state, ", ".join(entry.manifest["subnets"]),
                      f"{entry.size / 2**30:.2f} GiB", entry.manifest["created"],
                      entry.manifest["made_by"], entry.last_used(),
                      "yes" if entry.current() else "stale (the code changed)")
    console.print(table)
    partial = statecache.partial_dirs()
    console.print(f"{statecache.root()}: {total / 2**30:.2f} GiB in entries"
                  + (f"; {len(partial)} being written or left half-written" if partial else "")
                  + f"; the cache is {'on' if statecache.enabled() else 'off'} "
                    f"({statecache.ENV})")
    return 0


def cmd_cache_prune(args: argparse.Namespace) -> int:
    removed = statecache.prune(everything=args.all, older_than_days=args.older_than)
    for name, size in removed:
        console.print(f"removed {name} ({size / 2**30:.2f} GiB)")
    if not removed:
        console.print("nothing to remove")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="the lab-state cache: booted and cluster-ready labs kept "
                                     "on the host (list, prune)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    sp = actions.add_parser("list", help="entries with their state, subnets, size and age")
    sp.set_defaults(fn=cmd_cache_list)
    sp = actions.add_parser("prune", help="remove half-written and stale entries, and old "
                                          "or all ones")
    sp.add_argument("--all", action="store_true", help="remove every entry")
    sp.add_argument("--older-than", type=float, metavar="DAYS",
                    help="remove entries not used for DAYS days")
    sp.set_defaults(fn=cmd_cache_prune)
