"""The build pipeline: mmdebstrap a base root filesystem, then one bootable image per role.

Steps run as root (mmdebstrap, chroot, mkfs); a laptop user runs the build through sudo.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lab import shell
from lab.errors import LabError
from lab.images.local_debs import LocalDebs, LocalDebsError
from lab.images.recipe import MIRROR, ROLES, SUITE, Recipe, recipe_dir, recipes
from lab.images.store import Image, ImageStore, register_box
from lab.progress import Steps
from lab.timings import Timings, maybe_phase

ROOT_DISK_GIB = 8
APT_ENV = {
    "DEBIAN_FRONTEND": "noninteractive",
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C.UTF-8",
}
DPKG_OPTS = ["-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"]


def current_images(store: ImageStore | None = None, timings: Timings | None = None,
                   local_debs: LocalDebs | None = None) -> ImageStore:
    """The image cache holding the current image of every role (the hypervisor's layered
    with ``local_debs`` when given), what is missing built first (phase "images"): the one
    place a run gets its images (the plugin's ``lab_host`` and LabSession). A warm cache does
    no work and needs no root."""
    store = store or ImageStore()
    keys = {name: recipe.key() for name, recipe in recipes(local_debs=local_debs).items()}
    if any(not store.has(role, keys[role]) for role in ROLES):
        with maybe_phase(timings, "images"):
            build_images(store, steps=Steps("images", timings), local_debs=local_debs)
    return store


def build_images(
    store: ImageStore,
    roles: tuple[str, ...] = ROLES,
    *,
    force: bool = False,
    steps: Steps | None = None,
    register: bool = True,
    local_debs: LocalDebs | None = None,
) -> dict[str, Image]:
    """Build what is missing from the cache; return the image of each role.

    With a warm cache this does no work. ``force`` rebuilds the roles (not the base).
    ``local_debs`` are layered into the hypervisor image (a key of its own).
    """
    steps = steps or Steps("images")
    if os.geteuid() != 0:
        raise LabError("building images needs root (mmdebstrap, chroot, mkfs)",
                       "run it as `sudo ganeti-lab images build`")
    all_recipes = recipes(local_debs=local_debs)
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise LabError(f"unknown image role(s): {', '.join(sorted(unknown))}",
                       f"choose from {', '.join(ROLES)}")
    built: dict[str, Image] = {}
    # Keys are computed once: a recipe edited during the build must not mix two keys.
    keys = {name: recipe.key() for name, recipe in all_recipes.items()}
    with store.lock():
        store.discard_stale_staging()
        base = all_recipes["base"]
        needs = [r for r in roles if force or not store.has(r, keys[r])]
        if needs and not store.has("base", keys["base"]):
            _build_base(store, base, keys["base"], steps)
        for role in roles:
            recipe = all_recipes[role]
            if role in needs:
                base_tar = store.path("base", keys["base"]) / "rootfs.tar"
                _build_role(store, recipe, keys[role], base_tar, steps)
            image = store.get(role, keys[role])
            if register:
                with steps.step(f"register Vagrant box {image.box_name}"):
                    register_box(image)
            built[role] = image
        if not needs:
            steps.say("images: nothing changed; every image is in the cache "
                      f"({', '.join(f'{r}-{built[r].key}' for r in roles)})")
    return built


def _manifest(
    recipe: Recipe, key: str, started: float, extra: dict[str, Any]
) -> dict[str, Any]:
    return {
        "role": recipe.name,
        "key": key,
        "inputs": recipe.inputs(recipe_dir()),
        "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "build_seconds": round(time.monotonic() - started, 1),
        **extra,
    }


@contextlib.contextmanager
def _staging(store: ImageStore, name: str, key: str) -> Iterator[Path]:
    path = store.staging(name, key)
    try:
        yield path
    except BaseException:
        store.discard(path)
        raise


def downloading(command: list[Any]) -> list[Any]:
    """A command that reaches the Debian mirror.

    A lab may run inside a network namespace with no way out (scripts/labrun does that on hosts
    where lab networks must be isolated); GANETI_LAB_DOWNLOAD_NETNS then names a namespace that
    can reach the mirror, and only the download steps of a build run there.
    """
    netns = os.environ.get("GANETI_LAB_DOWNLOAD_NETNS", "")
    return ["ip", "netns", "exec", netns, *command] if netns else command


def _build_base(store: ImageStore, recipe: Recipe, key: str, steps: Steps) -> None:
    started = time.monotonic()
    src = recipe_dir()
    with _staging(store, "base", key) as staging:
        with steps.step(f"mmdebstrap {SUITE} base ({len(recipe.packages)} packages)"):
            files = " ".join(f'"{src / f}"' for f in (recipe.setup_script, *recipe.files))
            shell.run(
                downloading([
                    "mmdebstrap", "--mode=root", "--variant=minbase",
                    f"--include={','.join(recipe.packages)}",
                    "--customize-hook=mkdir -p \"$1/tmp/lab-recipe\"",
                    f"--customize-hook=copy-in {files} /tmp/lab-recipe",
                    f"--customize-hook=chroot \"$1\" sh /tmp/lab-recipe/{recipe.setup_script}",
                    "--customize-hook=rm -rf \"$1/tmp/lab-recipe\"",
                    SUITE, str(staging / "rootfs.tar"), MIRROR,
                ]),
                where="image build (base)", timeout=1800,
                hint="check that the Debian mirror is reachable and mmdebstrap is installed",
            )
        store.publish(staging, "base", key, _manifest(recipe, key, started, {}))


@contextlib.contextmanager
def _chroot_mounts(root: Path) -> Iterator[None]:
    """/proc for maintainer scripts; unmounted even when the step fails."""
    (root / "proc").mkdir(exist_ok=True)
    shell.run(["mount", "-t", "proc", "proc", root / "proc"])
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(root / "proc")], check=False)


def _chroot(root: Path, *command: str, where: str, timeout: float = 1800) -> str:
    # Every chroot step may fetch packages (apt-get, the service recipe's repo download).
    return shell.run(downloading(["chroot", root, *command]), where=where, env=APT_ENV,
                     timeout=timeout).stdout


def _build_role(
    store: ImageStore, recipe: Recipe, key: str, base_tar: Path, steps: Steps
) -> None:
    started = time.monotonic()
    where = f"image build ({recipe.name})"
    with _staging(store, recipe.name, key) as staging:
        root = staging / "rootfs"
        root.mkdir()
        with steps.step(f"{recipe.name}: unpack base"):
            shell.run(["tar", "-xpf", base_tar, "-C", root, "--numeric-owner"], where=where)
        with _chroot_mounts(root):
            # The build needs the host's resolver; the machine gets the lab's at boot.
            resolv = root / "etc" / "resolv.conf"
            resolv.unlink(missing_ok=True)
            shutil.copy("/etc/resolv.conf", resolv)
            with steps.step(f"{recipe.name}: install {len(recipe.packages)} packages"), \
                    extra_releases(root, recipe.packages):
                _chroot(root, "apt-get", "update", "-qq", where=where)
                _chroot(root, "apt-get", "install", "-y", "-q", *DPKG_OPTS, *recipe.packages,
                        where=where)
                if recipe.local_debs:
                    _layer_local_debs(root, recipe.local_debs, steps, where)
            with steps.step(f"{recipe.name}: configure ({recipe.setup_script})"):
                dest = root / "tmp" / "lab-recipe"
                dest.mkdir(parents=True, exist_ok=True)
                for name in (recipe.setup_script, *recipe.files):
                    shutil.copy(recipe_dir() / name, dest / name)
                _chroot(root, "sh", f"/tmp/lab-recipe/{recipe.setup_script}", where=where)
                shutil.rmtree(dest)
            versions = _package_versions(root)
            served = _repo_contents(root) if recipe.name == "service" else []
            _chroot(root, "apt-get", "clean", where=where)
            resolv.unlink()
            resolv.write_text("# written at boot by lab-firstboot\n")
        with steps.step(f"{recipe.name}: kernel, initrd and qcow2 disk"):
            _take_boot_files(root, staging)
            raw = staging / "disk.raw"
            shell.run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", root, raw,
                       f"{ROOT_DISK_GIB}G"], where=where)
            shell.run(["qemu-img", "convert", "-O", "qcow2", raw, staging / "box.img"],
                      where=where, timeout=900)
            raw.unlink()
            store.discard(root)
        extra = {
            "virtual_size_gib": ROOT_DISK_GIB,
            "ganeti_versions": {k: v for k, v in versions.items() if k.startswith("ganeti")},
            "kernel_cmdline": "root=/dev/vda rw console=ttyS0 net.ifnames=0",
            "packages": versions,
            "repo": served,
            **({"local_debs": recipe.local_debs.describe()} if recipe.local_debs else {}),
        }
        store.publish(staging, recipe.name, key, _manifest(recipe, key, started, extra))


def _layer_local_debs(root: Path, debs: LocalDebs, steps: Steps, where: str) -> None:
    """Install a contributor's packages over the image's own (their dependencies from the
    mirror), then prove each is installed at exactly the version of its file."""
    with steps.step(f"hypervisor: layer {len(debs.debs)} local packages ({debs.summary()})"):
        inside = Path("/tmp/lab-debs")
        names = debs.copy_into(root / inside.relative_to("/"))
        _chroot(root, "apt-get", "install", "-y", "-q", "--allow-downgrades", *DPKG_OPTS,
                *(str(inside / n) for n in names), where=where)
        shutil.rmtree(root / inside.relative_to("/"))
        installed = _package_versions(root)
        wrong = {d.package: installed.get(d.package, "not installed") for d in debs.debs
                 if installed.get(d.package) != d.version}
        if wrong:
            raise LocalDebsError(
                f"--ganeti-debs {debs.directory}: after the install the image has "
                + ", ".join(f"{p} {v}" for p, v in sorted(wrong.items()))
                + " instead of the directory's "
                + ", ".join(f"{d.package} {d.version}" for d in debs.debs if d.package in wrong),
                "check that the packages install together on Debian " + SUITE
                + " (dpkg -i them in a bookworm chroot shows why)")


@contextlib.contextmanager
def extra_releases(root: Path, packages: tuple[str, ...]) -> Iterator[None]:
    """Debian releases besides the suite that ``<package>/<release>`` entries ask for
    (bookworm-backports for Ganeti 3.1): enabled for the install only, so the image keeps no
    source it could not reach at run time."""
    releases = sorted({p.split("/", 1)[1] for p in packages if "/" in p} - {SUITE})
    listing = root / "etc" / "apt" / "sources.list.d" / "lab-extra-releases.list"
    if releases:
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text("".join(f"deb {MIRROR} {r} main\n" for r in releases))
    try:
        yield
    finally:
        if releases:
            listing.unlink(missing_ok=True)
            for release in releases:
                for cached in (root / "var" / "lib" / "apt" / "lists").glob(f"*_{release}_*"):
                    cached.unlink()


def _package_versions(root: Path) -> dict[str, str]:
    out = _chroot(root, "dpkg-query", "-W", "-f", "${Package} ${Version}\\n", where="dpkg-query")
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def _take_boot_files(root: Path, staging: Path) -> None:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise LabError(f"no kernel/initrd in {root / 'boot'}",
                       "keep linux-image-amd64 and initramfs-tools in base.packages")
    shutil.copy(kernels[-1], staging / "vmlinuz")
    shutil.copy(initrds[-1], staging / "initrd.img")


def _repo_contents(root: Path) -> list[str]:
    """The .debs the service box serves, read back from the image before it is packed."""
    repo = root / "srv" / "repo"
    return sorted(p.name for p in repo.glob("*.deb"))
