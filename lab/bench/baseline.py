"""The baseline: the way Vagrant labs are usually built, on the same topology as ``lab`` (see
``BASELINE_METHOD``), and its untimed inputs (a bootable base box, the hypervisor .debs)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from lab import accel, shell, topology, virt
from lab.bench.cleanup import (
    BASELINE_NAME,
    ClaimedLab,
    _box_volumes_present,
    _remove_quietly,
    _remove_tree,
)
from lab.bench.figures import _bootstrap_figures, _error, _r, _timed, skip_reason
from lab.bringup import settle
from lab.errors import LabError
from lab.ganeti.bootstrap import form_layout
from lab.images import ImageStore
from lab.images.builder import (
    ROOT_DISK_GIB,
    _chroot,
    _chroot_mounts,
    _take_boot_files,
    extra_releases,
)
from lab.images.recipe import recipe_dir, recipes
from lab.images.store import Image, register_box
from lab.lab import Lab, vagrantfile_dir
from lab.progress import Steps
from lab.remote import Machine
from lab.timings import Timings

log = logging.getLogger("lab.bench")

DEBS_TAR = "debs.tar"
REMOTE_DEBS_TAR = "/root/lab-baseline-debs.tar"
ARCHIVES = "/var/cache/apt/archives"
RECIPE_DIR = "/tmp/lab-recipe"   # as in the image build (lab/images/builder.py)

BASELINE_METHOD = (
    "The usual way, measured in this run on the same topology as `lab`: the hypervisors boot "
    "from a box of the role-less `base` image (the base rootfs tarball of the image cache, "
    "packed once into a bootable qcow2 Vagrant box with its own kernel and initrd: no Ganeti, "
    "qemu, LVM or NFS client), the service box is the lab's own baked service image (not "
    "provisioned: favours the baseline). Timed: lab plan (Lab.prepare, as ours) and plain "
    "`vagrant up --provider=libvirt` until every machine answers SSH; then each hypervisor "
    "is provisioned over SSH one after another: the .debs of the hypervisor package list and "
    "their dependency closure (resolved by apt in a chroot of the same base rootfs, exactly as "
    "the image build resolves them) are copied in (Machine.put of one tar, unpacked into "
    "/var/cache/apt/archives) and installed with `apt-get install --no-download` of those "
    "files, then the hypervisor recipe's setup script runs and ganeti.service is started; "
    "then the lab's settle step (hosts, DNS/DHCP, NFS mount, volume group, node SSH keys: the "
    "same code as in our bring-up); then `gnt-cluster init` and the node adds one after "
    "another (the same bootstrap code as ours, RAPI and verify included). NOT timed, which "
    "favours the baseline: downloading the .debs from the Debian mirror and making the base "
    "box (done once before the timed part and cached under <cache>/bench; see "
    "preparation_seconds). The first `vagrant up` of a newly added box also copies it into "
    "libvirt's pool inside the timed part (box_volume_uploaded_during_up says whether that "
    "happened). A lab reset the naive way is a rebuild: total_seconds per reset."
)


def baseline_inputs(store: ImageStore, steps: Steps) -> tuple[Path, dict[str, Any], bool]:
    """The baseline's untimed inputs, made once and cached under ``<cache>/bench``: a bootable
    box of the base image, and the .debs the hypervisor recipe installs (as one tar).

    Returns the directory, its manifest and whether it was already cached.
    """
    all_recipes = recipes()
    base_key, hv = all_recipes["base"].key(), all_recipes["hypervisor"]
    hv_key = hv.key()
    bench_dir = store.root.parent / "bench"
    final = bench_dir / f"baseline-{hv_key}"
    cached = (final / "manifest.json").is_file()
    if not cached:
        if os.geteuid() != 0:
            raise LabError("making the baseline's base box and fetching the hypervisor "
                           "packages needs root (tar with owners, chroot, mkfs)",
                           "run the benchmark as root (as CI does), or pass --skip-baseline")
        if not store.has("base", base_key):
            raise LabError(f"the base image base-{base_key} is not in the cache {store.root}",
                           "run `sudo ganeti-lab images build`")
        bench_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".baseline-{hv_key}.", dir=bench_dir))
        try:
            manifest = _make_baseline_inputs(store, base_key, hv_key, hv.packages, staging,
                                             steps)
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
            if final.exists():
                _remove_tree(final)
            os.replace(staging, final)
        except BaseException:
            _remove_quietly(staging)
            raise
        for old in bench_dir.glob("baseline-*"):  # inputs of older recipes
            if old != final and old.is_dir():
                _remove_quietly(old)
    manifest = json.loads((final / "manifest.json").read_text())
    with steps.step(f"baseline: Vagrant box {manifest['box']}"):
        register_box(Image("base", base_key, final, manifest))
    return final, manifest, cached


def _make_baseline_inputs(store: ImageStore, base_key: str, hv_key: str,
                          packages: tuple[str, ...], staging: Path, steps: Steps
                          ) -> dict[str, Any]:
    where = "benchmark baseline inputs"
    started = time.monotonic()
    root = staging / "rootfs"
    root.mkdir()
    with store.lock(), steps.step("baseline: unpack the base rootfs"):
        shell.run(["tar", "-xpf", store.path("base", base_key) / "rootfs.tar", "-C", root,
                   "--numeric-owner"], where=where, timeout=900)
    with steps.step("baseline: bootable base box (kernel, initrd, qcow2)"):
        _take_boot_files(root, staging)
        raw = staging / "disk.raw"
        shell.run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", root, raw,
                   f"{ROOT_DISK_GIB}G"], where=where, timeout=900)
        shell.run(["qemu-img", "convert", "-O", "qcow2", raw, staging / "box.img"],
                  where=where, timeout=900)
        raw.unlink()
    with steps.step(f"baseline: download the {len(packages)} hypervisor packages and their "
                    "dependencies (apt in a chroot of the base rootfs)"):
        with _chroot_mounts(root):
            resolv = root / "etc" / "resolv.conf"
            resolv.unlink(missing_ok=True)
            shutil.copy("/etc/resolv.conf", resolv)
            # The same releases the image build enables (bookworm-backports for Ganeti 3.1).
            with extra_releases(root, packages):
                _chroot(root, "apt-get", "update", "-qq", where=where)
                _chroot(root, "apt-get", "install", "--download-only", "-y", "-q", *packages,
                        where=where)
        debs = sorted((root / ARCHIVES.lstrip("/")).glob("*.deb"))
        if not debs:
            raise LabError("apt downloaded no .deb for the hypervisor packages",
                           "check that the Debian mirror is reachable from this host")
        with tarfile.open(staging / DEBS_TAR, "w") as tar:
            for deb in debs:
                tar.add(deb, deb.name)
    names = [d.name for d in debs]
    size = sum(d.stat().st_size for d in debs)
    _remove_tree(root)
    return {
        "box": Image("base", base_key, staging, {}).box_name,
        "base_key": base_key, "hypervisor_key": hv_key,
        "virtual_size_gib": ROOT_DISK_GIB,
        "packages": list(packages), "debs": names, "debs_bytes": size,
        "prepared_seconds": _r(time.monotonic() - started),
    }


def _use_box(lab: Lab, box: str, directory: Path) -> None:
    """Boot the lab's hypervisors from ``box`` (with its own kernel and initrd)."""
    kernel = virt.ensure_pool_volume(directory / "vmlinuz", f"{box}-vmlinuz")
    initrd = virt.ensure_pool_volume(directory / "initrd.img", f"{box}-initrd")
    for i, m in enumerate(lab.plan.machines):
        if m.role == "hypervisor":
            lab.plan.machines[i] = dataclasses.replace(m, box=box, kernel=kernel, initrd=initrd)
    lab.plan.save(lab.dir / "lab.json")


def _provision(m: Machine, directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """apt + shell on one hypervisor: the .debs in, installed, the recipe's script, Ganeti on."""
    part: dict[str, Any] = {}
    with _timed(part, "copy_seconds"):
        m.put(directory / DEBS_TAR, REMOTE_DEBS_TAR)
        m.succeed(f"mkdir -p {ARCHIVES} && tar -xf {REMOTE_DEBS_TAR} -C {ARCHIVES} "
                  f"&& rm -f {REMOTE_DEBS_TAR}", timeout=900)
    files = " ".join(shlex.quote(f"{ARCHIVES}/{name}") for name in manifest["debs"])
    with _timed(part, "install_seconds"):
        m.succeed("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-download "
                  "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "
                  f"{files}", timeout=3600)
    recipe = recipes()["hypervisor"]
    with _timed(part, "configure_seconds"):
        # The script and its files where the image build puts them (lab-os, ...).
        m.succeed(f"mkdir -p {RECIPE_DIR}")
        for name in (recipe.setup_script, *recipe.files):
            m.write_file(f"{RECIPE_DIR}/{name}", (recipe_dir() / name).read_text(), 0o755)
        m.succeed(f"sh {RECIPE_DIR}/{recipe.setup_script} && rm -rf {RECIPE_DIR} "
                  "&& systemctl start ganeti", timeout=600)
    part["ganeti_version"] = m.succeed("dpkg-query -W -f '${Version}' ganeti").strip()
    return part


def baseline_section(args: Any, topo: topology.Topology, store: ImageStore,
                     timings: Timings) -> dict[str, Any]:
    reason = skip_reason(args, "baseline")
    if reason:
        return {"skipped": True, "reason": reason}
    layout = topo.default_layout
    doc: dict[str, Any] = {"method": BASELINE_METHOD, "name": BASELINE_NAME,
                           "topology": topo.source, "layout": layout,
                           "machines": len(topo.machines), "hypervisors": len(topo.hypervisors)}
    try:
        steps = Steps("baseline inputs (not timed)", timings)
        with _timed(doc, "preparation_seconds"):
            directory, manifest, cached = baseline_inputs(store, steps)
        doc["preparation_cached"] = cached
        doc["preparation_steps"] = {k: _r(v) for k, v in steps.durations.items()}
        doc["box"] = manifest["box"]
        doc["debs"] = len(manifest["debs"])
        doc["debs_mib"] = round(manifest["debs_bytes"] / 2**20, 1)
        hv_key = recipes()["hypervisor"].key()
        if store.has("hypervisor", hv_key):
            doc["ganeti_version_in_image"] = store.get("hypervisor", hv_key).manifest.get(
                "ganeti_versions", {}).get("ganeti")
        present = _box_volumes_present([manifest["box"]])
        doc["box_volume_uploaded_during_up"] = (None if present is None
                                                else not present[manifest["box"]])
    except Exception as exc:
        doc["error"] = _error(exc)
        return doc
    with ClaimedLab(BASELINE_NAME, doc) as claim:
        accel.detect.cache_clear()  # as in our cold start
        with _timed(doc, "total_seconds"):
            with _timed(doc, "prepare_seconds"):
                claim.lab = lab = Lab.prepare(topo, BASELINE_NAME, store)
                _use_box(lab, manifest["box"], directory)
            with _timed(doc, "vagrant_up_seconds"):
                virt.ensure_default_pool()
                virt.ensure_networks(lab.plan)
                shell.run(["vagrant", "up", "--provider=libvirt"], cwd=vagrantfile_dir(),
                          env=lab.vagrant_env(), timeout=3600,
                          where=f"baseline lab {BASELINE_NAME}: vagrant up",
                          hint=f"read the console logs in {lab.plan.console_dir}")
                lab.on_all(lambda m: m.wait_for_ssh(timeout=600))
            doc["provision"] = {}
            with _timed(doc, "provision_seconds"):
                for m in lab.hypervisors:  # one after another, as a provisioner does
                    log.info("bench: baseline: provisioning %s", m.name)
                    doc["provision"][m.name] = _provision(m, directory, manifest)
            with _timed(doc, "settle_seconds"):
                settle(lab)
            since = len(timings.phases)
            try:
                with _timed(doc, "bootstrap_seconds"):
                    form_layout(lab, layout, timings)
            finally:
                doc["bootstrap"] = _bootstrap_figures(timings, since, lab, layout)
    return doc
