"""`ganeti-lab`: a thin command-line front over the library (every verb is a library call)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

import filelock
import libvirt
import paramiko
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lab import rest, snapshots, topology, virt
from lab.errors import LabError
from lab.images import ImageStore, build_images
from lab.images.recipe import recipes
from lab.images.store import unregister_box, vagrant_boxes
from lab.leases import LeaseBook
from lab.machines import Lab, LabInUse, destroy, destroy_stale
from lab.names import name_problem
from lab.progress import Steps

console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
# Errors go to stderr: stdout may be a document someone pipes (bench JSON, prepare's exports).
errors = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 160)
EPILOG = """\
A lab is 1 service box + N hypervisors described by a TOML topology (default: ./lab.toml, else
the built-in `default` profile; built-ins: %(profiles)s). Typical session:

  sudo ganeti-lab images build        # once: bake the boxes (cached by content)
  ganeti-lab up                       # boot the default lab (keeps running)
  ganeti-lab cluster init             # form its Ganeti cluster(s), verified
  ganeti-lab ssh node1 -- gnt-cluster verify
  ganeti-lab snapshot save clean      # ... break things ...
  ganeti-lab snapshot restore clean   # back in seconds
  ganeti-lab destroy default
"""


def _name_arg(text: str) -> str:
    problem = name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"invalid lab name: {problem}")
    return text


def _lab_name(args: argparse.Namespace) -> str:
    if getattr(args, "name", None):
        return str(args.name)
    labs = sorted(LeaseBook().all())
    if len(labs) == 1:
        return labs[0]
    if not labs:
        raise LabError("no lab is running on this host", "bring one up with `ganeti-lab up`")
    raise LabError(f"several labs are running ({', '.join(labs)})", "pick one with --name")


# images ---------------------------------------------------------------------------------------


def cmd_images_build(args: argparse.Namespace) -> int:
    store = ImageStore(args.cache_dir)
    images = build_images(store, tuple(args.role) if args.role else ("hypervisor", "service"),
                          force=args.force)
    for role, image in images.items():
        console.print(f"{role}: {image.box_name}  ({image.size_bytes / 2**30:.2f} GiB)")
    return 0


def cmd_images_list(args: argparse.Namespace) -> int:
    store = ImageStore(args.cache_dir)
    current = {name: r.key() for name, r in recipes().items()}
    boxes = vagrant_boxes()
    table = Table("image", "key", "size", "built", "ganeti", "current", "vagrant box")
    for image in store.images():
        versions = image.manifest.get("ganeti_versions", {})
        ganeti = ", ".join(f"{k} {v}" for k, v in sorted(versions.items()) if
                           k in ("ganeti", "ganeti-3.0", "ganeti-3.1")) or "-"
        repo = [d for d in image.manifest.get("repo", []) if d.startswith("ganeti")]
        if repo:
            ganeti += f" (serves {len(repo)} ganeti debs)"
        table.add_row(image.role, image.key, f"{image.size_bytes / 2**30:.2f} GiB",
                      image.manifest.get("built_at", "?"), ganeti,
                      "yes" if current.get(image.role) == image.key else "stale",
                      "added" if image.role == "base" or image.box_name in boxes else "-")
    console.print(table)
    return 0


def cmd_images_prune(args: argparse.Namespace) -> int:
    store = ImageStore(args.cache_dir)
    keep = {(name, r.key()) for name, r in recipes().items()}
    with store.lock():
        removed = store.prune(keep)
    current_boxes = {f"ganeti-lab-{n}-{k}" for n, k in keep}
    for box in sorted(vagrant_boxes()):
        if box.startswith("ganeti-lab-") and box not in current_boxes:
            unregister_box(box)
            console.print(f"removed Vagrant box {box}")
    for path in removed:
        console.print(f"removed {path}")
    console.print(f"kept the current images ({len(keep)}).")
    return 0


# lifecycle ------------------------------------------------------------------------------------


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
            "disks: " + (", ".join(f"{d} GiB" for d in m.disks_gib) or "none")]
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


def cmd_prepare(args: argparse.Namespace) -> int:
    topo = _load_topology(args)
    lab = Lab.prepare(topo, args.name)
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
        lab = Lab.attach(_lab_name(args))
        snap = rest.wake(lab, args.at)
        lab.keep()
        _print_status(lab)
        console.print(f"lab {lab.name} is up at snapshot {snap.name}")
        return 0
    topo = _load_topology(args)
    lab = Lab.prepare(topo, args.name)
    console.print(f"lab {lab.name}: accelerator {lab.accelerator}")
    lab.up(Steps(f"lab {lab.name}"))
    lab.keep()
    _print_status(lab)
    console.print(f"lab {lab.name} is up; `ganeti-lab ssh node1 --name {lab.name}`, "
                  f"`ganeti-lab destroy {lab.name}` when done.")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    lab = Lab.attach(_lab_name(args))
    snap = rest.put_to_rest(lab, snapshot=args.snapshot, force=args.force)
    console.print(f"lab {lab.name} is at rest: machines stopped, state kept as snapshot "
                  f"{snap.name}; `ganeti-lab up --name {lab.name} --at {snap.name}` brings it "
                  "back")
    return 0


def _print_status(lab: Lab) -> None:
    status = lab.status()
    table = Table("machine", "role", "state", "management IP", "lab IP", "console log",
                  title=f"lab {lab.name} ({status['accelerator']})")
    for m in status["machines"]:
        table.add_row(m["name"], m["role"], m["state"], m["mgmt_ip"], m["lab_ip"],
                      m["console"])
    console.print(table)


def cmd_status(args: argparse.Namespace) -> int:
    names = [args.name] if args.name else sorted(LeaseBook().all())
    if not names:
        console.print("no labs on this host")
    for name in names:
        lab = Lab.attach(name)
        if args.json:
            print(json.dumps(lab.status(), indent=2))
        else:
            _print_status(lab)
            snaps = snapshots.list_snapshots(lab)
            if snaps:
                console.print("snapshots: " + ", ".join(s.name for s in snaps))
            resting = rest.at_rest(lab)
            if resting:
                console.print(f"at rest (state kept as snapshot {resting}): "
                              f"`ganeti-lab up --name {name} --at {resting}` wakes it")
    return 0


def cmd_ssh(args: argparse.Namespace) -> int:
    lab = Lab.attach(_lab_name(args))
    m = lab.plan.machine(args.node)
    argv = ["ssh", "-i", lab.plan.key, "-o", f"UserKnownHostsFile={lab.dir / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=accept-new", "-o", "LogLevel=ERROR",
            f"root@{m.mgmt_ip}", *args.remote_command]
    os.execvp("ssh", argv)
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    lab = Lab.attach(_lab_name(args))
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
        import time

        started = time.monotonic()
        snapshots.restore(lab, args.snapshot)
        console.print(f"restored {args.snapshot}; every machine answers "
                      f"({time.monotonic() - started:.2f} s)")
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


def _load_topology(args: argparse.Namespace) -> topology.Topology:
    """The topology, with memory checked against what the host's other labs already use."""
    others = topology.memory_in_use_mib(exclude={args.name} if args.name else ())
    return topology.load(args.topology, running_mib=others)


# parser ---------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ganeti-lab", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Real Ganeti test labs on Vagrant + libvirt: images, lifecycle, snapshots, "
                    "clusters, scenarios and timing reports.",
        epilog=EPILOG % {"profiles": ", ".join(topology.profiles())})
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    images = sub.add_parser("images", help="build, list and prune the cached lab images")
    isub = images.add_subparsers(dest="images_command", required=True, metavar="ACTION")
    for name, fn, text in (("build", cmd_images_build, "build what is missing (needs root)"),
                           ("list", cmd_images_list, "show cached images and their keys"),
                           ("prune", cmd_images_prune, "remove images and boxes not current")):
        sp = isub.add_parser(name, help=text)
        sp.add_argument("--cache-dir", type=Path, default=None,
                        help="image cache (default: $GANETI_LAB_CACHE or ~/.cache/ganeti-lab)")
        sp.set_defaults(fn=fn)
        if name == "build":
            sp.add_argument("--role", action="append", choices=["hypervisor", "service"])
            sp.add_argument("--force", action="store_true", help="rebuild the role images")

    def lab_opts(sp: argparse.ArgumentParser, topo: bool = False) -> None:
        sp.add_argument("--name", type=_name_arg,
                        help="lab name (default: the topology's, or the only lab)")
        if topo:
            sp.add_argument("--topology", help="TOML file or built-in profile name")

    sp = sub.add_parser("check", help="validate a topology and show the lab it describes "
                                      "(creates nothing)")
    sp.add_argument("topology", nargs="?", metavar="TOPOLOGY",
                    help="TOML file or built-in profile name (default: ./lab.toml, else the "
                         "`default` profile)")
    sp.set_defaults(fn=cmd_check)

    sp = sub.add_parser("prepare", help="lease subnets, write the plan and create the lab's "
                                        "networks (for plain vagrant)")
    lab_opts(sp, topo=True)
    sp.add_argument("--print-plan", action="store_true", help="print the plan file's path")
    sp.set_defaults(fn=cmd_prepare)

    sp = sub.add_parser("up", help="boot a lab (all machines in parallel) and keep it, or "
                                   "wake a resting one (--at)")
    lab_opts(sp, topo=True)
    sp.add_argument("--at", metavar="SNAPSHOT",
                    help="bring an existing lab back at SNAPSHOT without a boot (the state "
                         f"`ganeti-lab down` kept is {rest.AT_REST!r})")
    sp.set_defaults(fn=cmd_up)

    sp = sub.add_parser("down", help="put a lab to rest: save its state, stop its machines "
                                     "(memory freed; disks, snapshots and lease kept)")
    lab_opts(sp)
    sp.add_argument("--snapshot", default=rest.AT_REST,
                    help=f"name of the snapshot that keeps the state (default {rest.AT_REST})")
    sp.add_argument("--force", action="store_true",
                    help="even if a live run (a test session) owns the lab")
    sp.set_defaults(fn=cmd_down)

    sp = sub.add_parser("status", help="machines, states, addresses and snapshots of labs")
    lab_opts(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_status)

    sp = sub.add_parser("ssh", help="log in to a machine, or run a command: ssh NODE -- CMD")
    lab_opts(sp)
    sp.add_argument("node")
    sp.add_argument("remote_command", nargs="*", metavar="CMD",
                    help="command to run (put it after --)")
    sp.set_defaults(fn=cmd_ssh)

    sp = sub.add_parser("snapshot", help="save/restore/list/delete whole-lab snapshots")
    lab_opts(sp)
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

    _extra_commands(sub)
    return p


def _extra_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Commands of the upper layers (clusters, runs, reports, benchmark)."""
    from lab import cli_more

    cli_more.register(sub)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after "--" is a remote command (`ganeti-lab ssh node1 -- CMD ...`).
    remote: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, remote = argv[:cut], argv[cut + 1:]
    args = parser().parse_args(argv)
    if hasattr(args, "remote_command"):
        args.remote_command = args.remote_command + remote
    elif hasattr(args, "pytest_args"):
        args.pytest_args = args.pytest_args + remote
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("paramiko", "urllib3", "matplotlib", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.fn(args) or 0)
    except LabError as exc:
        # The message quotes user input (file contents, names): print it as plain text, as
        # rich markup a "[/x]" in it would crash the error report itself.
        errors.print(Text.assemble(("error:", "red"), " ", str(exc)), highlight=False)
        return 2
    except KeyboardInterrupt:
        errors.print("[red]interrupted[/]")
        return 130
    except (libvirt.libvirtError, filelock.Timeout, paramiko.SSHException, OSError) as exc:
        # Failures of the tools below the library: one clear line, never a traceback.
        errors.print(Text.assemble(("error:", "red"), " ", _tool_error(exc)), highlight=False)
        return 2


def _tool_error(exc: BaseException) -> str:
    if isinstance(exc, libvirt.libvirtError):
        return (f"libvirt: {exc}\n  fix: check that libvirtd runs (`virsh list --all`); "
                "in a sandbox run the command through scripts/labrun")
    if isinstance(exc, filelock.Timeout):
        return (f"another ganeti-lab process holds the lock {exc.lock_file}\n  fix: wait for "
                "it to finish (`ganeti-lab status` shows the labs and their owners)")
    if isinstance(exc, paramiko.SSHException):
        return (f"SSH: {exc}\n  fix: check the machine with `ganeti-lab status` and its "
                "console log")
    return f"{exc}\n  fix: check the path and its permissions"


if __name__ == "__main__":
    sys.exit(main())
