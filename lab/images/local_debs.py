"""A contributor's own Ganeti packages (``--ganeti-debs DIR``), layered into the hypervisor
image: for a change beyond Ganeti's Python tree (the Haskell daemons, packaging), where a
patch applied on the nodes (lab.ganeti.patches) cannot reach.

The directory's ``.deb`` files are read and checked on the host before anything is built or
changed: each must be a Debian package for this machine's architecture, no package twice, and
at least one of them Ganeti's (``ganeti`` or ``ganeti-*``). Their content (sha256 of each file)
becomes part of the hypervisor image's key, so a layered image never passes for the stock one,
and every lab and run record built on it says which packages it carries.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lab.errors import LabError

ARCHITECTURES = ("amd64", "all")
_STATE = "ganeti-debs.json"
_HOW = ("build them from Ganeti's source with its debian/ directory (`dpkg-buildpackage -b`) "
        "and pass the directory holding the .deb files")


class LocalDebsError(LabError):
    """A --ganeti-debs directory that cannot be layered into an image."""


@dataclass(frozen=True)
class LocalDeb:
    path: Path
    package: str
    version: str
    architecture: str
    sha256: str

    def describe(self) -> dict[str, str]:
        return {"file": self.path.name, "package": self.package, "version": self.version,
                "architecture": self.architecture, "sha256": self.sha256}


@dataclass(frozen=True)
class LocalDebs:
    directory: Path
    debs: tuple[LocalDeb, ...]

    @classmethod
    def load(cls, directory: str | Path) -> LocalDebs:
        """Read and check every .deb of ``directory``; refuse a directory that cannot serve."""
        path = Path(directory)
        if not path.is_dir():
            raise LocalDebsError(f"--ganeti-debs {path}: no such directory", _HOW)
        files = sorted(p for p in path.iterdir() if p.suffix == ".deb" and p.is_file())
        if not files:
            raise LocalDebsError(f"--ganeti-debs {path}: no .deb files in it", _HOW)
        debs = tuple(_read(f) for f in files)
        seen: dict[str, LocalDeb] = {}
        for deb in debs:
            if deb.architecture not in ARCHITECTURES:
                raise LocalDebsError(
                    f"--ganeti-debs {path}: {deb.path.name} is built for {deb.architecture}; "
                    f"the lab's machines take {' or '.join(ARCHITECTURES)}",
                    "build the packages on (or for) amd64")
            if deb.package in seen:
                raise LocalDebsError(
                    f"--ganeti-debs {path}: package {deb.package} twice "
                    f"({seen[deb.package].path.name}, {deb.path.name})",
                    "keep one build of each package in the directory")
            seen[deb.package] = deb
        if not any(is_ganeti(d.package) for d in debs):
            raise LocalDebsError(
                f"--ganeti-debs {path}: no Ganeti package among its .deb files "
                f"({', '.join(sorted(seen))}); expected ganeti or ganeti-*", _HOW)
        return cls(path, debs)

    @property
    def digest(self) -> str:
        blob = json.dumps(sorted((d.package, d.sha256) for d in self.debs)).encode()
        return hashlib.sha256(blob).hexdigest()

    def key_input(self) -> dict[str, str]:
        """What the image key covers: each package's content, not where it was found."""
        return {d.package: d.sha256 for d in self.debs}

    def describe(self) -> dict[str, object]:
        return {"directory": str(self.directory), "sha256": self.digest,
                "debs": [d.describe() for d in self.debs]}

    def summary(self) -> str:
        return ", ".join(f"{d.package} {d.version}" for d in self.debs)

    def copy_into(self, target: Path) -> list[str]:
        """Copy the packages into ``target``; return their file names there."""
        target.mkdir(parents=True, exist_ok=True)
        for deb in self.debs:
            shutil.copy(deb.path, target / deb.path.name)
        return [d.path.name for d in self.debs]


def is_ganeti(package: str) -> bool:
    return package == "ganeti" or package.startswith("ganeti-")


def _read(path: Path) -> LocalDeb:
    try:
        out = subprocess.run(["dpkg-deb", "--field", str(path), "Package", "Version",
                              "Architecture"], capture_output=True, text=True, check=False,
                             timeout=60)
    except FileNotFoundError:
        raise LocalDebsError("dpkg-deb is not installed; it reads the packages' fields",
                             "apt-get install dpkg") from None
    fields = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    if out.returncode != 0 or not {"Package", "Version", "Architecture"} <= set(fields):
        reason = (out.stderr.strip().splitlines() or ["no Package/Version/Architecture"])[-1]
        raise LocalDebsError(f"--ganeti-debs: {path} is not a Debian package: {reason}",
                             "remove it from the directory, or rebuild it")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return LocalDeb(path, fields["Package"], fields["Version"], fields["Architecture"], sha)


# The lab's own packages -----------------------------------------------------------------------

def lab_debs(lab_dir: Path) -> dict[str, object] | None:
    """What ``describe()`` said of the packages a lab's image was layered with, if any."""
    path = lab_dir / _STATE
    return json.loads(path.read_text()) if path.exists() else None


def record_in_lab(lab_dir: Path, debs: LocalDebs | None) -> None:
    """Note in a new lab's state which packages its hypervisor image was layered with."""
    path = lab_dir / _STATE
    if debs is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(json.dumps(debs.describe(), indent=2))


def check_lab_reuse(name: str, lab_dir: Path, debs: LocalDebs | None) -> None:
    """Refuse to reuse a lab whose machines run other Ganeti packages than this run asks for
    (other local ones, none where some are asked for, or some where none are)."""
    held = lab_debs(lab_dir)
    held_sha = held["sha256"] if held else None
    wanted = debs.digest if debs else None
    if held_sha == wanted:
        return

    def say(sha: object) -> str:
        return f"local Ganeti packages (sha256 {str(sha)[:12]})" if sha else "Debian's Ganeti"
    raise LocalDebsError(f"lab {name} was built with {say(held_sha)}; this run asks for "
                         f"{say(wanted)}",
                         f"destroy the lab (`ganeti-lab destroy {name}`) or run with the "
                         "same --ganeti-debs")
