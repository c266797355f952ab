"""The image cache on disk, and the Vagrant boxes registered from it.

Layout: ``<cache>/images/<name>-<key>/`` holds one finished image (a base root filesystem tarball,
or a role's ``box.img`` + kernel + initrd + ``manifest.json``). A directory appears only by an
atomic rename at the end of a successful build, so the cache never holds a half-written image.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from lab import shell
from lab.errors import LabError


def default_cache_dir() -> Path:
    """``$GANETI_LAB_CACHE``, else ``$XDG_CACHE_HOME/ganeti-lab``, else ``~/.cache/ganeti-lab``."""
    if env := os.environ.get("GANETI_LAB_CACHE"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "ganeti-lab"


@dataclass(frozen=True)
class Image:
    role: str
    key: str
    path: Path
    manifest: dict[str, Any]

    @property
    def box_name(self) -> str:
        return f"ganeti-lab-{self.role}-{self.key}"

    @property
    def box_img(self) -> Path:
        return self.path / "box.img"

    @property
    def kernel(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.path / "initrd.img"

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())


class ImageStore:
    def __init__(self, cache_dir: Path | None = None) -> None:
        self.root = (cache_dir or default_cache_dir()) / "images"
        self.root.mkdir(parents=True, exist_ok=True)

    def lock(self) -> FileLock:
        """Held for a whole build: two builds into one cache would race on the same names."""
        return FileLock(str(self.root / ".build.lock"))

    def path(self, name: str, key: str) -> Path:
        return self.root / f"{name}-{key}"

    def has(self, name: str, key: str) -> bool:
        return (self.path(name, key) / "manifest.json").is_file()

    def get(self, role: str, key: str) -> Image:
        path = self.path(role, key)
        if not (path / "manifest.json").is_file():
            raise LabError(
                f"image {role}-{key} is not in the cache {self.root}",
                "run `ganeti-lab images build` (or point GANETI_LAB_CACHE at the cache holding it)",
            )
        return Image(role, key, path, json.loads((path / "manifest.json").read_text()))

    def images(self) -> list[Image]:
        found = []
        for manifest in sorted(self.root.glob("*-*/manifest.json")):
            data = json.loads(manifest.read_text())
            found.append(Image(data["role"], data["key"], manifest.parent, data))
        return found

    def staging(self, name: str, key: str) -> Path:
        """A private directory to build into; ``publish`` renames it into place."""
        return Path(tempfile.mkdtemp(prefix=f".{name}-{key}.", dir=self.root))

    def publish(self, staging: Path, name: str, key: str, manifest: dict[str, Any]) -> Path:
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        final = self.path(name, key)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        return final

    def adopt(self, other: ImageStore, name: str, key: str) -> bool:
        """Take image ``name-key`` from another cache when this one lacks it (hard links where
        both share a filesystem): a build made elsewhere, e.g. by a test into an empty cache,
        is not paid for twice. Whole or not at all: it appears by a rename."""
        with self.lock():
            if self.has(name, key):
                return False
            staging = self.staging(name, key)
            try:
                shutil.copytree(other.path(name, key), staging, dirs_exist_ok=True,
                                copy_function=_link_or_copy)
                os.replace(staging, self.path(name, key))
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return True

    def discard(self, staging: Path) -> None:
        """Remove a failed build's directory, refusing if anything is still mounted inside."""
        staging = staging.resolve()
        with open("/proc/mounts") as mounts:
            for line in mounts:
                target = line.split()[1]
                if target == str(staging) or target.startswith(f"{staging}/"):
                    raise LabError(
                        f"{target} is still mounted; not deleting {staging}",
                        f"umount -R {target} && rm -rf {staging}",
                    )
        shutil.rmtree(staging, ignore_errors=True)

    def discard_stale_staging(self) -> list[Path]:
        """Staging directories left by a crashed build (the build lock is held by the caller)."""
        stale = sorted(self.root.glob(".*-*.*"))
        for path in stale:
            if path.is_dir():
                self.discard(path)
        return stale

    def prune(self, keep: set[tuple[str, str]]) -> list[Path]:
        removed = []
        for entry in sorted(self.root.iterdir()):
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            name, _, key = entry.name.rpartition("-")
            if (name, key) not in keep:
                shutil.rmtree(entry)
                removed.append(entry)
        return removed


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


# Vagrant ---------------------------------------------------------------------------------------


def _box_cmd(*args: str, check: bool = True, timeout: float = 900) -> str:
    """`vagrant box ...` run away from any Vagrantfile (Vagrant loads the one in its cwd)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VAGRANT_CWD", "GANETI_LAB_PLAN")}
    return shell.run(["vagrant", "box", *args], cwd=tempfile.gettempdir(), env=env,
                     timeout=timeout, check=check,
                     hint="check that vagrant and vagrant-libvirt are installed").stdout


def vagrant_boxes() -> set[str]:
    out = _box_cmd("list", "--machine-readable", timeout=120)
    boxes = set()
    for line in out.splitlines():
        fields = line.split(",")
        if len(fields) >= 4 and fields[2] == "box-name":
            boxes.add(fields[3])
    return boxes


def register_box(image: Image) -> str:
    """Add the image to Vagrant as a libvirt box named after its key (idempotent)."""
    if image.box_name in vagrant_boxes():
        return image.box_name
    virtual_gib = image.manifest["virtual_size_gib"]
    with tempfile.TemporaryDirectory(dir=image.path.parent, prefix=".box.") as tmp:
        meta = Path(tmp) / "metadata.json"
        meta.write_text(json.dumps(
            {"provider": "libvirt", "format": "qcow2", "virtual_size": virtual_gib}))
        vagrantfile = Path(tmp) / "Vagrantfile"
        vagrantfile.write_text(BOX_VAGRANTFILE)
        box = Path(tmp) / f"{image.box_name}.box"
        with tarfile.open(box, "w") as tar:
            tar.add(meta, "metadata.json")
            tar.add(vagrantfile, "Vagrantfile")
            tar.add(image.box_img, "box.img")
        _box_cmd("add", "--force", "--name", image.box_name, str(box))
    return image.box_name


def registered_box_image(box: str) -> Path:
    """Where Vagrant keeps the image of a registered (unversioned, libvirt) box."""
    home = Path(os.environ.get("VAGRANT_HOME", Path.home() / ".vagrant.d"))
    return home / "boxes" / box.replace("/", "-VAGRANTSLASH-") / "0" / "libvirt" / "box.img"


def ensure_registered(image: Image) -> Path:
    """The registered box image of ``image``, registering the box first if Vagrant lacks it
    (a warm image cache on a host whose Vagrant boxes were removed)."""
    path = registered_box_image(image.box_name)
    if not path.is_file():
        register_box(image)
    return path


def unregister_box(name: str) -> None:
    _box_cmd("remove", "--force", "--all", name, check=False, timeout=300)


BOX_VAGRANTFILE = """\
# ganeti-lab box: boots by direct kernel boot (kernel and initrd sit beside the image in the
# ganeti-lab cache; the lab's Vagrantfile passes them). Login is root with the lab's own key.
Vagrant.configure("2") do |config|
  config.ssh.username = "root"
  config.ssh.insert_key = false
  config.ssh.sudo_command = "%c"
  config.vm.synced_folder ".", "/vagrant", disabled: true
end
"""
