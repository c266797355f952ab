"""Lab lifecycle verbs: check, prepare, up, down, status, ssh, snapshot, destroy."""

from __future__ import annotations

import argparse
import json
import os
import shlex

from rich.table import Table
from rich.text import Text

from lab import rest, snapshots, topology, virt
from lab.bringup import bring_up
from lab.cli.common import (
    apply_cache_option,
    cache_option,
    console,
    errors,
    lab_name,
    lab_options,
    load_topology,
    local_debs,
    print_status,
)
from lab.errors import LabError
from lab.images import current_images
from lab.images.local_debs import check_lab_reuse
from lab.lab import Lab, LabInUse, destroy, destroy_stale
from lab.leases import LeaseBook
from lab.progress import Steps


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a topology and show the plan `up` would make. Creates nothing: no lease, no
    lab directory, no libvirt connection (an invalid file raises TopologyError: exit 2)."""
    running = topology.memory_in_use_mib()
    topo = topology.load(args.topology, running_mib=running)

    def out(text: str = "") -> None:
        # Descriptions are free text: never read them as rich markup.
        console.print(text, markup=False, highlight=False)

    def table(rows: list[list[str]]) -> None:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            out("  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True))
                .rstrip())

    host = topology.host_memory()
    out(f"topology {topo.source}: valid (lab {topo.name!r})")
    if topo.description:
        out(f"  {topo.description}")
    out(f"machines: {len(topo.machines)}, {sum(m.cpus for m in topo.machines)} vCPUs, "
        f"{topo.memory_mib} MiB (host: {host} MiB, {topology.HOST_MEMORY_RESERVE_MIB} MiB "
        f"kept for it, {running} MiB used by running labs)")
    table([[m.name, m.role, f"{m.cpus} vCPU", f"{m.memory_mib} MiB",
            "disks: " + (", ".join(f"{d} GiB" for d in m.disks_gib) or "none")
            + (f" (cache {m.disk_cache})" if m.disks_gib and m.disk_cache != "unsafe" else "")]
           for m in topo.machines])
    out("networks:")
    table([[n.name, n.role, str(n.subnet) if n.subnet else "auto (leased at up)"]
           for n in topo.networks])
    out(f"layouts (default: {topo.default_layout}):")
    for layout, clusters in topo.layouts.items():
        out(f"  {layout}:")
        for c in clusters:
            out(f"    {c.name}: nodes {', '.join(c.nodes)} (master {c.master}); "
                f"disk templates {', '.join(c.disk_templates)}; "
                f"hypervisors {', '.join(c.hypervisors)}; vg {c.vg_name}")
    up = f"ganeti-lab up --topology {shlex.quote(args.topology)}" if args.topology else \
        "ganeti-lab up"
    out(f"nothing was created; `{up}` brings this lab up")
    return 0


def _prepare(args: argparse.Namespace) -> Lab:
    """A new lab from the arguments; with --ganeti-debs, on the hypervisor image layered with
    them (built first if the cache lacks it)."""
    debs = local_debs(args)
    topo = load_topology(args)
    store = current_images(local_debs=debs) if debs else None
    return Lab.prepare(topo, args.name, store, local_debs=debs)


def cmd_prepare(args: argparse.Namespace) -> int:
    lab = _prepare(args)
    lab.keep()
    # Plain `vagrant up` attaches to the lab's networks; they carry its fixed addresses.
    virt.ensure_networks(lab.plan)
    plan_path = lab.dir / "lab.json"
    if args.print_plan:
        print(plan_path)
    else:
        env = lab.vagrant_env()
        for key in ("VAGRANT_HOME", "VAGRANT_CWD", "VAGRANT_DOTFILE_PATH", "GANETI_LAB_PLAN",
                    "VAGRANT_DEFAULT_PROVIDER"):
            print(f"export {key}={env[key]}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    if args.at:
        if args.topology:
            raise LabError("--at wakes an existing lab; --topology describes a new one",
                           "drop one of them")
        lab = Lab.attach(lab_name(args))
        check_lab_reuse(lab.name, lab.dir, local_debs(args))
        woken = rest.wake(lab, args.at)
        lab.keep()
        print_status(lab)
        console.print(f"lab {lab.name} is up at snapshot {woken.snapshot.name} in "
                      f"{woken.seconds:.2f} s")
        return 0
    apply_cache_option(args)
    lab = _prepare(args)
    console.print(f"lab {lab.name}: accelerator {lab.accelerator}")
    bring_up(lab, Steps(f"lab {lab.name}"))
    lab.keep()
    print_status(lab)
    console.print(f"lab {lab.name} is up; `ganeti-lab ssh node1 --name {lab.name}`, "
                  f"`ganeti-lab destroy {lab.name}` when done.")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    lab = Lab.attach(lab_name(args))
    snap = rest.put_to_rest(lab, snapshot=args.snapshot, force=args.force)
    console.print(f"lab {lab.name} is at rest: machines stopped, state kept as snapshot "
                  f"{snap.name}; `ganeti-lab up --name {lab.name} --at {snap.name}` brings it "
                  "back")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    names = [args.name] if args.name else sorted(LeaseBook().all())
    if not names:
        console.print("no labs on this host")
    for name in names:
        lab = Lab.attach(name)
        if args.json:
            print(json.dumps(lab.status(), indent=2))
        else:
            print_status(lab)
            snaps = snapshots.list_snapshots(lab)
            if snaps:
                console.print("snapshots: " + ", ".join(s.name for s in snaps))
            resting = rest.at_rest(lab)
            if resting:
                console.print(f"at rest (state kept as snapshot {resting}): "
                              f"`ganeti-lab up --name {name} --at {resting}` wakes it")
    return 0


def cmd_ssh(args: argparse.Namespace) -> int:
    lab = Lab.attach(lab_name(args))
    m = lab.plan.machine(args.node)
    argv = ["ssh", "-i", lab.plan.key, "-o", f"UserKnownHostsFile={lab.dir / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=accept-new", "-o", "LogLevel=ERROR",
            f"root@{m.mgmt_ip}", *args.remote_command]
    os.execvp("ssh", argv)
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    lab = Lab.attach(lab_name(args))
    if args.action == "list":
        table = Table("snapshot", "created", "seconds", "meta")
        for s in snapshots.list_snapshots(lab):
            table.add_row(s.name, s.created, f"{s.seconds:.2f}", json.dumps(s.meta))
        console.print(table)
        return 0
    if not args.snapshot:
        raise LabError(f"`snapshot {args.action}` needs a snapshot name", "add NAME")
    if args.action == "save":
        snap = snapshots.save(lab, args.snapshot)
        console.print(f"saved {snap.name} in {snap.seconds:.2f} s")
    elif args.action == "restore":
        done = snapshots.restore(lab, args.snapshot)
        console.print(f"restored {args.snapshot}; every machine answers ({done.seconds:.2f} s: "
                      f"revert {done.revert_seconds:.2f}, answers {done.answer_seconds:.2f})")
    elif args.action == "delete":
        snapshots.delete(lab, args.snapshot)
        console.print(f"deleted {args.snapshot}")
    return 0


def cmd_destroy(args: argparse.Namespace) -> int:
    if args.all:
        # Kept labs (no owner) go too; a lab a live run is using only with --force.
        code = 0
        for name in sorted(LeaseBook().all()):
            try:
                console.print(f"lab {name}: removed {destroy(name, force=args.force)}")
            except LabInUse as exc:
                errors.print(Text(f"lab {name}: left alone: {exc}"))
                code = 1
        for lab, objects in destroy_stale().items():
            console.print(f"{lab}: removed {objects}")
        return code
    if args.stale:
        removed = destroy_stale()
        for lab, objects in removed.items():
            console.print(f"{lab}: removed {objects}")
        if not removed:
            console.print("nothing stale")
        return 0
    if not args.lab:
        raise LabError("which lab?", "give a lab name, --stale for labs of dead runs, or --all")
    for name in args.lab:
        objects = destroy(name, force=args.force)
        console.print(f"lab {name}: removed {objects}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sp = sub.add_parser("check", help="validate a topology and show the lab it describes "
                                      "(creates nothing)")
    sp.add_argument("topology", nargs="?", metavar="TOPOLOGY",
                    help="TOML file or built-in profile name (default: ./lab.toml, else the "
                         "`default` profile)")
    sp.set_defaults(fn=cmd_check)

    sp = sub.add_parser("prepare", help="lease subnets, write the plan and create the lab's "
                                        "networks (for plain vagrant)")
    lab_options(sp, topo=True)
    sp.add_argument("--print-plan", action="store_true", help="print the plan file's path")
    sp.set_defaults(fn=cmd_prepare)

    sp = sub.add_parser("up", help="boot a lab (all machines in parallel) and keep it, or "
                                   "wake a resting one (--at)")
    lab_options(sp, topo=True)
    sp.add_argument("--at", metavar="SNAPSHOT",
                    help="bring an existing lab back at SNAPSHOT without a boot (the state "
                         f"`ganeti-lab down` kept is {rest.AT_REST!r})")
    cache_option(sp)
    sp.set_defaults(fn=cmd_up)

    sp = sub.add_parser("down", help="put a lab to rest: save its state, stop its machines "
                                     "(memory freed; disks, snapshots and lease kept)")
    lab_options(sp)
    sp.add_argument("--snapshot", default=rest.AT_REST,
                    help=f"name of the snapshot that keeps the state (default {rest.AT_REST})")
    sp.add_argument("--force", action="store_true",
                    help="even if a live run (a test session) owns the lab")
    sp.set_defaults(fn=cmd_down)

    sp = sub.add_parser("status", help="machines, states, addresses and snapshots of labs")
    lab_options(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_status)

    sp = sub.add_parser("ssh", help="log in to a machine, or run a command: ssh NODE -- CMD")
    lab_options(sp)
    sp.add_argument("node")
    sp.add_argument("remote_command", nargs="*", metavar="CMD",
                    help="command to run (put it after --)")
    sp.set_defaults(fn=cmd_ssh)

    sp = sub.add_parser("snapshot", help="save/restore/list/delete whole-lab snapshots")
    lab_options(sp)
    sp.add_argument("action", choices=["save", "restore", "list", "delete"])
    sp.add_argument("snapshot", nargs="?")
    sp.set_defaults(fn=cmd_snapshot)

    sp = sub.add_parser("destroy", help="remove labs and everything they created")
    sp.add_argument("lab", nargs="*", help="lab name(s)")
    sp.add_argument("--stale", action="store_true",
                    help="remove labs whose owner process is gone, and orphaned objects")
    sp.add_argument("--all", action="store_true",
                    help="remove every lab on this host, kept ones too, and orphans; a lab "
                         "that a live run uses only with --force")
    sp.add_argument("--force", action="store_true",
                    help="also destroy labs whose owner process (a test run, `up`) is alive")
    sp.set_defaults(fn=cmd_destroy)
