"""A contributor's change to Ganeti, brought into the lab: a unified diff against Ganeti's
Python tree, applied on the nodes of every cluster of one Ganeti series before the cluster
forms (or in place on a running cluster, its Python daemons restarted).

Paths in the diff are those of Ganeti's source tree (``lib/client/gnt_cluster.py``, with or
without git's ``a/`` and ``b/``) or of the installed package (``ganeti/client/...``); on a
node they live under ``/usr/share/ganeti/<series>/ganeti/``. The diff is applied on the host
to the node's own copy of each file, every hunk exactly where it says: a patch that does not
apply is refused, naming the file and the hunk, before any node is changed.

A patch may say which upstream bugs it fixes with ``Fixes: ganeti/ganeti#N`` lines in its
header (as git trailers do); the lab skips its own workaround for a bug the patch fixes.

The lab holds at most one patch for its whole life (``adopt``): its hash is part of the name
of every layout snapshot and of the run record, so a patched and an unpatched lab never mix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import whatthepatch
from whatthepatch.exceptions import HunkApplyException, WhatThePatchException

from lab.errors import LabError
from lab.ganeti.versions import PATCH_MARKER, patch_in
from lab.remote import Machine

if TYPE_CHECKING:
    from lab.lab import Lab

log = logging.getLogger("lab.ganeti.patches")

PYTHON_DAEMONS = ("ganeti-noded", "ganeti-rapi")  # the others of 3.x are Haskell
DAEMON_UTIL = "/usr/lib/ganeti/daemon-util"
_FIXES = re.compile(r"^Fixes:\s*(\S+)", re.MULTILINE)
_STATE = "ganeti-patch.json"


class PatchError(LabError):
    """A Ganeti patch that cannot be used: unreadable, not a diff, or not for this tree."""


@dataclass(frozen=True)
class GanetiPatch:
    file: str                      # the name it was given by (for messages and the record)
    text: str
    series: str                    # the Ganeti series it is for, e.g. "3.0"
    files: tuple[str, ...] = field(default=())   # paths under the installed ganeti package
    fixes: tuple[str, ...] = field(default=())

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def short(self) -> str:
        return self.sha256[:10]

    def describe(self) -> str:
        """One line for the run record and the report (never the patch's text)."""
        fixes = f"; fixes {', '.join(self.fixes)}" if self.fixes else ""
        return (f"{Path(self.file).name} (sha256 {self.short}) on Ganeti {self.series}: "
                f"{', '.join(self.files)}{fixes}")

    def fixes_issue(self, issue: str) -> bool:
        return issue in self.fixes

    @property
    def daemons_run_it(self) -> bool:
        """Whether a running daemon may have loaded a file it changes: every file but the
        command-line clients' (``ganeti/client/``, which each `gnt-*` process loads anew)."""
        return any(not f.startswith("ganeti/client/") for f in self.files)

    @classmethod
    def load(cls, path: Path | str, series: str) -> GanetiPatch:
        path = Path(path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise PatchError(f"cannot read the Ganeti patch {path}: {exc}",
                             "give a unified diff (`git diff`, `diff -u`) as a text file"
                             ) from None
        return cls.parse(text, series, str(path))

    @classmethod
    def parse(cls, text: str, series: str, file: str = "<patch>") -> GanetiPatch:
        try:
            diffs = [d for d in whatthepatch.parse_patch(text) if d.header is not None]
        except WhatThePatchException as exc:
            raise PatchError(f"{file} is not a unified diff: {exc}",
                             "give a unified diff (`git diff`, `diff -u`)") from None
        if not diffs or not any(d.changes for d in diffs):
            raise PatchError(f"{file} changes nothing: no file header or hunk found",
                             "give a unified diff (`git diff`, `diff -u`)")
        files = []
        for d in diffs:
            files.append(_installed_path(d.header.new_path or d.header.old_path, file))
        return cls(file, text, series, tuple(files), tuple(_FIXES.findall(text)))

    def patched(self, originals: dict[str, str]) -> dict[str, str]:
        """Each file's content with the patch applied to ``originals`` (path -> content);
        PatchError names the file and the hunk that does not apply."""
        out = {}
        for d in whatthepatch.parse_patch(self.text):
            if d.header is None:
                continue
            path = _installed_path(d.header.new_path or d.header.old_path, self.file)
            if path not in originals:
                raise PatchError(f"{self.file}: {path} does not exist in Ganeti {self.series}",
                                 "the patch is for another version of Ganeti, or creates a "
                                 "file, which the lab does not do")
            try:
                lines = whatthepatch.apply_diff(d, originals[path])
            except HunkApplyException as exc:
                raise PatchError(
                    f"{self.file} does not apply to Ganeti {self.series}: {path}, hunk "
                    f"#{exc.hunk}: {exc}",
                    "make the patch against that version's tree (Debian's "
                    f"/usr/share/ganeti/{self.series}/ganeti), or choose the series it was "
                    "made for (--ganeti-patch-series)") from None
            ending = "\n" if originals[path].endswith("\n") else ""
            out[path] = "\n".join(lines) + ending
        return out


def _installed_path(raw: str, file: str) -> str:
    path = raw.strip()
    for prefix in ("a/", "b/"):
        if path.startswith(prefix):
            path = path[len(prefix):]
            break
    if path.startswith("lib/"):
        path = "ganeti/" + path[len("lib/"):]
    if not path.startswith("ganeti/") or ".." in path.split("/"):
        raise PatchError(f"{file} changes {raw}, outside Ganeti's Python package (lib/)",
                         "the lab patches Ganeti's Python code only; build packages for the "
                         "rest")
    return path


def tree(series: str) -> str:
    return f"/usr/share/ganeti/{series}"


def prepare(patch: GanetiPatch, m: Machine) -> dict[str, str]:
    """The patched files, from ``m``'s copy of the series' tree (every node has the same
    image): nothing is written anywhere yet."""
    originals = {}
    for path in patch.files:
        result = m.run(f"cat {shlex.quote(tree(patch.series) + '/' + path)}", announce=False)
        if result.ok:
            originals[path] = result.stdout
    if not m.run(f"test -d {tree(patch.series)}/ganeti", announce=False).ok:
        raise PatchError(f"{patch.file} is for Ganeti {patch.series}, which {m.name} does not "
                         "carry", "choose the series the patch was made for "
                         "(--ganeti-patch-series)")
    return patch.patched(originals)


def install(patch: GanetiPatch, m: Machine, patched: dict[str, str],
            restart: bool = False) -> None:
    """Write the patched files on ``m``, byte-compile them and mark the node; ``restart``:
    restart the Python daemons that run (a node already in a cluster)."""
    for path, content in patched.items():
        target = f"{tree(patch.series)}/{path}"
        m.write_file(target, content, 0o644)
        m.succeed(f"python3 -m py_compile {shlex.quote(target)}")
    m.succeed(f"mkdir -p {shlex.quote(str(Path(PATCH_MARKER).parent))}")
    m.write_file(PATCH_MARKER, f"{patch.series} {patch.sha256} {patch.file}\n", 0o644)
    if restart and not patch.daemons_run_it:
        log.info("%s: no daemon restarted: %s changes only command-line client code", m.name,
                 Path(patch.file).name)
    elif restart:
        # Through Ganeti's daemon-util, which knows how this node runs them (Debian's 3.x
        # packages ship an init script, not systemd units); only those that run are restarted.
        m.succeed("; ".join(
            f"if {DAEMON_UTIL} check {d} >/dev/null 2>&1; then "
            f"{DAEMON_UTIL} stop {d} && {DAEMON_UTIL} start {d} || exit 1; fi"
            for d in PYTHON_DAEMONS), timeout=300)


def apply(lab: Lab, patch: GanetiPatch, machines: list[Machine],
          restart: bool = False) -> None:
    """Apply ``patch`` on ``machines`` (those that do not run it yet): checked against one
    node's files before any is changed, then written on all of them at once."""
    machines = [m for m in machines if applied(m) != patch.sha256]
    if not machines:
        return
    patched = prepare(patch, machines[0])
    log.warning("patching %s with %s", ", ".join(m.name for m in machines), patch.describe())
    lab.on_all(lambda m: install(patch, m, patched, restart), machines)


def applied(m: Machine) -> str | None:
    """The sha256 of the patch a node runs, or None."""
    result = m.run(f"cat {PATCH_MARKER}", announce=False)
    found = patch_in(result.stdout) if result.ok else None
    return found[1] if found else None


# The lab's own patch ------------------------------------------------------------------------

def lab_patch(lab: Lab) -> GanetiPatch | None:
    """The patch the lab was brought up with, if any."""
    path = lab.dir / _STATE
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    return GanetiPatch.parse(saved["text"], saved["series"], saved["file"])


def adopt(lab: Lab, patch: GanetiPatch | None) -> None:
    """Make ``patch`` the lab's patch. A lab keeps the patch it was first given: a reused lab
    asked for another one (or for none) is refused, so snapshots never mix them."""
    held = lab_patch(lab)
    if held is None and patch is None:
        return
    if held is not None and patch is not None and held.sha256 == patch.sha256 \
            and held.series == patch.series:
        return
    if (lab.dir / "layout").exists() or (lab.dir / "snapshots.json").exists():
        def say(p: GanetiPatch | None) -> str:
            return f"patch {p.file} (sha256 {p.short}) on {p.series}" if p else "no patch"
        raise PatchError(f"lab {lab.name} runs Ganeti with {say(held)}; this run asks for "
                         f"{say(patch)}",
                         f"destroy the lab (`ganeti-lab destroy {lab.name}`) or run it with "
                         "the same --ganeti-patch")
    path = lab.dir / _STATE
    if patch is None:
        path.unlink(missing_ok=True)
        return
    path.write_text(json.dumps({"file": patch.file, "series": patch.series,
                                "text": patch.text}))
