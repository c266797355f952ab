"""`ganeti-lab`: a thin command-line front over the library (every verb is a library call).
One module per group of subcommands; each registers its own parsers."""

from __future__ import annotations

import argparse
import logging
import sys

import filelock
import libvirt
import paramiko
from rich.text import Text

from lab import topology
from lab.cli import bench, cache, cluster, images, lifecycle, run
from lab.cli.common import errors
from lab.errors import LabError
from lab.secrets import ScrubFilter

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
  ganeti-lab cache list               # what `up` and `cluster init` kept: the next lab of this
                                      # topology starts there (the lab-state cache)
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ganeti-lab", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Real Ganeti test labs on Vagrant + libvirt: images, lifecycle, snapshots, "
                    "clusters, scenarios and timing reports.",
        epilog=EPILOG % {"profiles": ", ".join(topology.profiles())})
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (images, lifecycle, cluster, cache, run, bench):
        group.register(sub)
    return p


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
    for handler in logging.getLogger().handlers:  # the live log may quote a command
        handler.addFilter(ScrubFilter())
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
