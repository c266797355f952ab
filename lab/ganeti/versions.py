"""Which Ganeti a node runs. The hypervisor image carries 3.0 and 3.1 side by side
(/usr/lib/ganeti/<series>, /usr/share/ganeti/<series>); the active one is where the symlinks
/etc/ganeti/lib and /etc/ganeti/share point, as Debian's packaging and `gnt-cluster upgrade`
have it. A cluster-less node is switched by repointing them; a node in a cluster only ever by
`gnt-cluster upgrade`.
"""

from __future__ import annotations

import shlex

from lab.errors import LabError
from lab.remote import Machine

LIB, SHARE = "/etc/ganeti/lib", "/etc/ganeti/share"
# Written by lab/ganeti/patches.py on a node it patched: "<series> <sha256> <file>".
PATCH_MARKER = "/var/lib/ganeti-lab/patch"


class VersionError(LabError):
    """A node cannot run the Ganeti version asked for."""


def active(m: Machine) -> str:
    """The series the node runs (``3.0``, ``3.1``): the directory /etc/ganeti/lib points to."""
    return m.succeed(f"basename \"$(readlink -f {LIB})\"").strip()


def package_version(m: Machine, series: str) -> str:
    """The Debian version of the node's ``ganeti-<series>`` package, e.g. ``3.0.2-3``."""
    return m.succeed("dpkg-query -W -f '${Version}' " + shlex.quote(f"ganeti-{series}")).strip()


def describe(m: Machine) -> str:
    """What the node runs, as the run record shows it: ``3.1 (3.1.0~rc2-3~bpo12+1)``, with
    ``+ patch <sha256 prefix>`` when the lab patched that series (lab/ganeti/patches.py)."""
    out = m.succeed(
        f"s=$(basename \"$(readlink -f {LIB})\"); echo \"$s\"; "
        "dpkg-query -W -f '${Version}\\n' \"ganeti-$s\"; "
        f"cat {PATCH_MARKER} 2>/dev/null || true").splitlines()
    series, version = out[0].strip(), out[1].strip()
    patch = patch_in(out[2]) if len(out) > 2 else None
    patched = f" + patch {patch[1][:10]}" if patch and patch[0] == series else ""
    return f"{series} ({version}){patched}"


def patch_in(marker: str) -> tuple[str, str] | None:
    """The series and sha256 a node's patch marker names, or None for an empty one."""
    fields = marker.split()
    return (fields[0], fields[1]) if len(fields) >= 2 else None


def activate(m: Machine, series: str) -> None:
    """Make a node that is in no cluster run Ganeti ``series``."""
    lib, share = f"/usr/lib/ganeti/{series}", f"/usr/share/ganeti/{series}"
    if not m.run(f"test -d {shlex.quote(lib)} && test -d {shlex.quote(share)}").ok:
        carried = m.succeed("ls /usr/lib/ganeti | grep -E '^[0-9]+[.][0-9]+$' || true").split()
        raise VersionError(f"{m.name} has no Ganeti {series} (its image carries "
                           f"{', '.join(carried) or 'none'})",
                           "rebuild the images (`ganeti-lab images build`) after adding the "
                           "version to lab/images/recipes/hypervisor.packages, or choose one "
                           "of the versions above in the topology")
    if m.run("test -e /var/lib/ganeti/config.data").ok:
        raise VersionError(f"{m.name} already belongs to a cluster; its version changes only "
                           "through `gnt-cluster upgrade`",
                           "restore the lab's \"booted\" snapshot before forming a layout")
    m.succeed(f"ln -sfn {shlex.quote(lib)} {LIB} && ln -sfn {shlex.quote(share)} {SHARE}")
    if active(m) != series:
        raise VersionError(f"{m.name}: /etc/ganeti/lib does not point to {lib} after relinking",
                           "inspect the node's /etc/ganeti")
