"""The benchmark (`ganeti-lab bench`): one JSON document of figures measured in this run.

Sections (each catches its own failure as ``{"error": ...}`` and always destroys what it made):

``host``      host facts and the accelerator chosen (with the time of its probe)
``images``    a cold image build into an empty temporary cache, and a warm (no-op) build
``lab``       the default lab: cold start to SSH + settled, one-cluster bootstrap, snapshot
              save, restore to a verified cluster, per-test reset, two-cluster bootstrap, destroy
``baseline``  the way Vagrant labs are usually built, on the same topology: `vagrant up` of a
              role-less base box, apt + shell provisioning one hypervisor after another, then
              `gnt-cluster init` and node adds one after another (see ``BASELINE_METHOD``)
``ratios``    ours against the baseline
``scaling``   bring-up + bootstrap with 2, 4 and 6 hypervisors; two tiny labs at once

Nothing here is a constant of the result: every figure is a clock reading of this run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shlex
import shutil
import signal
import statistics
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lab import accel, shell, snapshots, topology, virt
from lab.errors import LabError
from lab.ganeti.bootstrap import clusters_of, ensure_layout, form_layout, layout_snapshot
from lab.images import ImageStore, build_images
from lab.images.builder import ROOT_DISK_GIB, _chroot, _chroot_mounts, _take_boot_files
from lab.images.recipe import ROLES, recipe_dir, recipes
from lab.images.store import Image, register_box
from lab.leases import LeaseBook
from lab.machines import Lab, destroy, vagrantfile_dir
from lab.paths import object_prefix
from lab.progress import Steps
from lab.remote import Machine
from lab.settle import settle
from lab.timings import Timings, host_facts, iso, new_run_id, utc_now

log = logging.getLogger("lab.bench")

SCHEMA = 1
# Lab names: no name followed by "-" is a prefix of another's, so destroying one (by object
# prefix) never touches another.
LAB_NAME = "bench-lab"
BASELINE_NAME = "bench-baseline"
PAIR_NAMES = ("bench-pair-a", "bench-pair-b")
SCALE_SIZES = (2, 4, 6)
SCALE_MEMORY_MIB = 1024
SCALE_LAYOUT = "scale"
RESET_SAMPLES = 3
SAVE_SNAPSHOT = "bench-save"
TWO_CLUSTERS = "two-clusters"
DEBS_TAR = "debs.tar"
REMOTE_DEBS_TAR = "/root/lab-baseline-debs.tar"
ARCHIVES = "/var/cache/apt/archives"

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


# Small helpers --------------------------------------------------------------------------------


def _r(seconds: float) -> float:
    return round(float(seconds), 3)


def _error(exc: BaseException) -> str:
    text = str(exc).strip()
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return message if len(message) <= 4000 else message[:3999] + "…"


@contextlib.contextmanager
def _timed(doc: dict[str, Any], key: str) -> Iterator[None]:
    """Store the block's wall time in ``doc[key]``; on failure name the step that failed."""
    log.info("bench: %s ...", key)
    started = time.monotonic()
    try:
        yield
    except BaseException:
        doc.setdefault("failed_step", key)
        raise
    doc[key] = _r(time.monotonic() - started)
    log.info("bench: %s = %.1f s", key, doc[key])


def _flag(args: Any, name: str) -> bool:
    return bool(getattr(args, name, False))


def skip_reason(args: Any, section: str) -> str | None:
    """Why a section (``cold_build``, ``baseline``, ``scaling``) is skipped, or None."""
    if _flag(args, "smallest"):
        return "--smallest"
    if _flag(args, f"skip_{section}"):
        return f"--skip-{section.replace('_', '-')}"
    return None


def median(samples: list[float]) -> float:
    return _r(statistics.median(samples))


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so every lab is destroyed."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _remove_tree(path: Path) -> None:
    """rm -rf, refusing when something is still mounted inside (a crashed chroot step)."""
    path = path.resolve()
    if not path.exists():
        return
    with open("/proc/mounts") as mounts:
        for line in mounts:
            target = line.split()[1]
            if target == str(path) or target.startswith(f"{path}/"):
                raise LabError(f"{target} is still mounted; not deleting {path}",
                               f"umount -R {target} && rm -rf {path}")
    shutil.rmtree(path)


def _remove_quietly(path: Path) -> None:
    """``_remove_tree`` on a failure path: never hides the error being raised."""
    try:
        _remove_tree(path)
    except Exception as exc:
        log.warning("bench: could not remove %s: %s", path, exc)


# Topologies with N hypervisors -----------------------------------------------------------------


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a valid TOML basic string (\uXXXX escapes included)
    if isinstance(value, list):
        if any(isinstance(v, dict) for v in value):
            raise TypeError("arrays of tables are not supported")
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dump_toml(data: dict[str, Any]) -> str:
    """TOML text of nested tables of scalars and arrays (what a topology holds)."""
    lines: list[str] = []

    def table(path: list[str], values: dict[str, Any]) -> None:
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in values.items() if isinstance(v, dict)}
        if path and (scalars or not tables):
            lines.append(f"[{'.'.join(_toml_key(p) for p in path)}]")
        for key, value in scalars.items():
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        if scalars or (path and not tables):
            lines.append("")
        for key, sub in tables.items():
            table([*path, key], sub)

    table([], data)
    return "\n".join(lines).rstrip("\n") + "\n"


def scaling_topology_text(base_text: str, hypervisors: int,
                          memory_mib: int = SCALE_MEMORY_MIB,
                          layout: str = SCALE_LAYOUT) -> str:
    """The topology ``base_text`` (TOML) with its service box and ``hypervisors`` hypervisors
    node1..nodeN of ``memory_mib`` each, and one layout: one cluster of all of them."""
    if hypervisors < 1:
        raise ValueError(f"a lab needs at least one hypervisor, not {hypervisors}")
    data = tomllib.loads(base_text)
    services = {name: spec for name, spec in data.get("machines", {}).items()
                if isinstance(spec, dict) and spec.get("role") == "service"}
    nodes = [f"node{i}" for i in range(1, hypervisors + 1)]
    data["machines"] = {**services,
                        **{n: {"role": "hypervisor", "memory": memory_mib} for n in nodes}}
    data["layouts"] = {layout: {"cluster1": {"nodes": nodes}}}
    lab = dict(data.get("lab", {}))
    lab["name"] = f"scale-{hypervisors}"
    lab["default_layout"] = layout
    lab["description"] = (f"benchmark: 1 service box + {hypervisors} hypervisors "
                          f"({memory_mib} MiB each), one cluster of all of them")
    data["lab"] = lab
    return dump_toml(data)


# Figures from a Timings record -----------------------------------------------------------------


def bootstrap_breakdown(phases: list[dict[str, Any]], clusters: Iterable[str]
                        ) -> dict[str, Any]:
    """Per-phase seconds of a bootstrap, and per cluster: init, each node add, verify."""
    seconds = {p["name"]: _r(p["seconds"]) for p in phases}
    result: dict[str, Any] = {"phases": seconds, "clusters": {}}
    for name in clusters:
        prefix = f"{name}: gnt-node add "
        result["clusters"][name] = {
            "init_seconds": seconds.get(f"{name}: gnt-cluster init"),
            "node_add_seconds": {p[len(prefix):]: s for p, s in seconds.items()
                                 if p.startswith(prefix)},
            "verify_seconds": seconds.get(f"{name}: gnt-cluster verify"),
        }
    return result


def _bootstrap_figures(timings: Timings, since: int, lab: Lab, layout: str) -> dict[str, Any]:
    return bootstrap_breakdown(timings.phases[since:],
                               [cp.name for cp in lab.plan.layouts[layout]])


def compute_ratios(lab_doc: dict[str, Any], baseline_doc: dict[str, Any]) -> dict[str, Any]:
    """Ours against the baseline; a reason instead when a figure is missing."""
    if baseline_doc.get("skipped"):
        return {"skipped": True, "reason": f"baseline skipped: {baseline_doc.get('reason')}"}
    base = baseline_doc.get("total_seconds")
    cold = lab_doc.get("cold_start_to_ssh_seconds")
    boot = lab_doc.get("bootstrap_one_cluster_seconds")
    reset = lab_doc.get("per_test_reset_seconds")
    missing = [k for k, v in (("baseline.total_seconds", base),
                              ("lab.cold_start_to_ssh_seconds", cold),
                              ("lab.bootstrap_one_cluster_seconds", boot),
                              ("lab.per_test_reset_seconds", reset))
               if not isinstance(v, int | float) or v <= 0]
    if missing:
        return {"skipped": True, "reason": f"not measured in this run: {', '.join(missing)}"}
    assert isinstance(base, int | float) and isinstance(cold, int | float)
    assert isinstance(boot, int | float) and isinstance(reset, int | float)
    ours = cold + boot
    return {
        "same_topology": lab_doc.get("topology") == baseline_doc.get("topology"),
        "ours_cold_start_and_bootstrap_seconds": _r(ours),
        "ours_per_test_reset_seconds": reset,
        "baseline_total_seconds": base,
        "cold_start_and_bootstrap_over_baseline": round(ours / base, 4),
        "baseline_over_cold_start_and_bootstrap": round(base / ours, 2),
        "per_test_reset_over_baseline": round(reset / base, 5),
        "baseline_over_per_test_reset": round(base / reset, 1),
    }


# Lab names, and what is left of them -----------------------------------------------------------


def _claim(name: str) -> None:
    """Refuse a name that a live or kept lab holds; clear orphans of an earlier crashed run."""
    lease = LeaseBook().get(name)
    if lease is not None and lease.owner_alive() and lease.owner_pid != os.getpid():
        owner = f"process {lease.owner_pid}" if lease.owner_pid else "kept by a user"
        raise LabError(f"a lab named {name!r} already exists on this host ({owner})",
                       f"`ganeti-lab destroy {name}` first; the benchmark uses that name")
    if lease is None and not virt.find(object_prefix(name)).empty():
        log.warning("bench: removing orphaned libvirt objects of lab %s", name)
        destroy(name)


def _destroy(name: str, lab: Lab | None, doc: dict[str, Any],
             key: str = "destroy_seconds") -> None:
    started = time.monotonic()
    try:
        if lab is not None:
            lab.close()
        destroy(name)
        doc[key] = _r(time.monotonic() - started)
        left = virt.find(object_prefix(name))
        if not left.empty():
            doc["left_behind"] = str(left)
    except Exception as exc:
        doc["destroy_error"] = _error(exc)


def _box_volumes_present(boxes: Iterable[str]) -> dict[str, bool] | None:
    """Whether vagrant-libvirt already copied each box into libvirt's 'default' pool."""
    try:
        with virt.connect() as conn:
            pool = conn.storagePoolLookupByName("default")
            pool.refresh(0)
            volumes = pool.listVolumes()
    except Exception:
        return None
    return {b: any(v.startswith(f"{b}_vagrant_box_image_") for v in volumes) for b in boxes}


def _boxes_of(topo: topology.Topology, store: ImageStore) -> list[str]:
    keys = {name: r.key() for name, r in recipes().items()}
    return sorted({store.get(m.role, keys[m.role]).box_name for m in topo.machines})


# Sections -------------------------------------------------------------------------------------


def host_section(store: ImageStore) -> dict[str, Any]:
    doc: dict[str, Any] = dict(host_facts())
    key = recipes()["hypervisor"].key()
    kernel = store.get("hypervisor", key).kernel if store.has("hypervisor", key) else None
    accel.detect.cache_clear()
    started = time.monotonic()
    chosen = accel.detect(kernel)
    doc["accelerator"] = {"name": chosen.name, "reason": chosen.reason,
                          "probe_seconds": _r(time.monotonic() - started)}
    doc["libvirt_uri"] = virt.uri()
    return doc


def images_section(args: Any, store: ImageStore, timings: Timings) -> dict[str, Any]:
    keys = {name: r.key() for name, r in recipes().items()}
    doc: dict[str, Any] = {"keys": keys, "cold_build_seconds": None,
                           "warm_build_seconds": None}
    reason = skip_reason(args, "cold_build")
    if reason:
        doc["cold_build_skipped"] = reason
    else:
        _cold_build(store, timings, doc)
    try:
        missing = [r for r in ROLES if not store.has(r, keys[r])]
        if missing:
            # The real cache must be warm before a "nothing to do" build can be timed.
            with _timed(doc, "real_cache_fill_seconds"):
                build_images(store, steps=Steps("images (filling the real cache)", timings))
        with _timed(doc, "warm_build_seconds"):
            build_images(store, steps=Steps("images (warm)", timings))
        doc["sizes_mib"] = {r: round(store.get(r, keys[r]).size_bytes / 2**20, 1)
                            for r in ROLES}
    except Exception as exc:
        doc["warm_build_error"] = _error(exc)
    return doc


def _cold_build(store: ImageStore, timings: Timings, doc: dict[str, Any]) -> None:
    parent = store.root.parent.parent
    parent.mkdir(parents=True, exist_ok=True)
    stale = sorted(parent.glob("ganeti-lab-bench-cold.*"))
    if stale:
        log.warning("bench: cold caches of earlier runs are still on disk: %s",
                    ", ".join(map(str, stale)))
    tmp = Path(tempfile.mkdtemp(prefix="ganeti-lab-bench-cold.", dir=parent))
    doc["cold_cache_dir"] = str(tmp)
    steps = Steps("images (cold)", timings)
    try:
        with _timed(doc, "cold_build_seconds"):
            build_images(ImageStore(tmp), register=False, steps=steps)
        doc["cold_build_steps"] = {k: _r(v) for k, v in steps.durations.items()}
        doc["cold_build_includes_downloads"] = True
    except Exception as exc:
        doc["cold_build_seconds"] = None
        doc["cold_build_error"] = _error(exc)
    finally:
        try:
            _remove_tree(tmp)
        except Exception as exc:
            doc["cold_cache_left_behind"] = _error(exc)


def _bring_up(topo: topology.Topology, name: str, store: ImageStore, timings: Timings,
              doc: dict[str, Any]) -> Lab:
    """Lab.prepare + up, timed as a cold start (accelerator probe included)."""
    doc["boxes_in_libvirt_pool_before_up"] = _box_volumes_present(_boxes_of(topo, store))
    accel.detect.cache_clear()  # a fresh `ganeti-lab up` probes: so does this one
    steps = Steps(f"lab {name}", timings)
    with _timed(doc, "cold_start_to_ssh_seconds"):
        with _timed(doc, "prepare_seconds"):
            lab = Lab.prepare(topo, name, store)
        doc["accelerator"] = lab.accelerator
        with _timed(doc, "up_seconds"):
            lab.up(steps)
    doc["up_steps"] = {k: _r(v) for k, v in steps.durations.items()}
    return lab


def _bootstrap(lab: Lab, layout: str, timings: Timings, doc: dict[str, Any], key: str,
               details: str) -> None:
    since = len(timings.phases)
    try:
        with _timed(doc, key):
            ensure_layout(lab, layout, timings)
    finally:
        doc[details] = _bootstrap_figures(timings, since, lab, layout)


def measure_lab(topo: topology.Topology, name: str, store: ImageStore, timings: Timings,
                more: Callable[[Lab, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Cold start + one-cluster bootstrap of ``topo`` (then ``more``), always destroyed."""
    layout = topo.default_layout
    doc: dict[str, Any] = {"name": name, "topology": topo.source, "layout": layout,
                           "machines": len(topo.machines),
                           "hypervisors": len(topo.hypervisors)}
    lab: Lab | None = None
    owned = False
    try:
        _claim(name)
        owned = True
        lab = _bring_up(topo, name, store, timings, doc)
        _bootstrap(lab, layout, timings, doc, "bootstrap_one_cluster_seconds", "bootstrap")
        if more is not None:
            more(lab, doc)
    except Exception as exc:
        doc["error"] = _error(exc)
    finally:
        if owned:
            _destroy(name, lab, doc)
    return doc


def _lab_extras(timings: Timings) -> Callable[[Lab, dict[str, Any]], None]:
    """Snapshot save, restore to a verified cluster, per-test reset, two-cluster bootstrap."""
    def more(lab: Lab, doc: dict[str, Any]) -> None:
        layout = doc["layout"]
        with _timed(doc, "snapshot_save_seconds"):
            snap = snapshots.save(lab, SAVE_SNAPSHOT)
        doc["snapshot_save_libvirt_seconds"] = snap.seconds
        with _timed(doc, "snapshot_delete_seconds"):
            snapshots.delete(lab, SAVE_SNAPSHOT)

        with _timed(doc, "restore_to_verified_cluster_seconds"):
            snapshots.restore(lab, layout_snapshot(layout))
            verified = {n: c.verify() for n, c in clusters_of(lab, layout).items()}
            bad = {n: v for n, v in verified.items() if not v.ok}
            if bad:
                raise LabError("gnt-cluster verify after the restore found errors: " + "; ".join(
                    f"{n}: {' | '.join(v.errors[:5]) or v.output[-500:]}"
                    for n, v in bad.items()), "see gnt-cluster verify on the master")
        doc["verify_after_restore"] = {n: {"ok": v.ok, "warnings": len(v.warnings)}
                                       for n, v in verified.items()}

        samples: list[float] = []
        with _timed(doc, "per_test_reset_seconds"):
            for _ in range(RESET_SAMPLES):
                started = time.monotonic()
                snapshots.restore(lab, layout_snapshot(layout))
                samples.append(time.monotonic() - started)
        doc["per_test_reset_samples"] = [_r(s) for s in samples]
        doc["per_test_reset_seconds"] = median(samples)

        if TWO_CLUSTERS in lab.plan.layouts and layout != TWO_CLUSTERS:
            _bootstrap(lab, TWO_CLUSTERS, timings, doc, "bootstrap_two_clusters_seconds",
                       "bootstrap_two_clusters")
        else:
            doc["bootstrap_two_clusters_seconds"] = None
            doc["bootstrap_two_clusters_skipped"] = (
                f"topology {lab.plan.topology} has no {TWO_CLUSTERS!r} layout besides its "
                "default one")
    return more


def lab_section(topo: topology.Topology, store: ImageStore, timings: Timings
                ) -> dict[str, Any]:
    doc = measure_lab(topo, LAB_NAME, store, timings, _lab_extras(timings))
    doc["notes"] = (
        "cold_start_to_ssh_seconds = Lab.prepare (lease, keys, plan, accelerator probe) + "
        "Lab.up (libvirt networks, vagrant up, SSH on every machine, settle). "
        "bootstrap_one_cluster_seconds = ensure_layout of the default layout: saves the "
        "'booted' snapshot, forms the clusters (init, node adds, RAPI, verify) and saves the "
        "layout snapshot. per_test_reset_seconds = snapshots.restore of the layout snapshot "
        f"(median of {RESET_SAMPLES}); restore_to_verified_cluster_seconds adds "
        "gnt-cluster verify. bootstrap_two_clusters_seconds = ensure_layout('two-clusters'): "
        "restores 'booted', forms both clusters at once, saves their snapshot.")
    return doc


# Baseline -------------------------------------------------------------------------------------


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
    kernel = virt.ensure_boot_file(str(directory / "vmlinuz"), f"{box}-vmlinuz")
    initrd = virt.ensure_boot_file(str(directory / "initrd.img"), f"{box}-initrd")
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
    script = recipes()["hypervisor"].setup_script
    with _timed(part, "configure_seconds"):
        m.write_file(f"/tmp/{script}", (recipe_dir() / script).read_text(), 0o755)
        m.succeed(f"sh /tmp/{script} && rm -f /tmp/{script} && systemctl start ganeti",
                  timeout=600)
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
    lab: Lab | None = None
    owned = False
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
        _claim(BASELINE_NAME)
        owned = True
        accel.detect.cache_clear()  # as in our cold start
        with _timed(doc, "total_seconds"):
            with _timed(doc, "prepare_seconds"):
                lab = Lab.prepare(topo, BASELINE_NAME, store)
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
    except Exception as exc:
        doc["error"] = _error(exc)
    finally:
        if owned:
            _destroy(BASELINE_NAME, lab, doc)
    return doc


# Scaling --------------------------------------------------------------------------------------


def scaling_section(args: Any, store: ImageStore, timings: Timings) -> dict[str, Any]:
    reason = skip_reason(args, "scaling")
    if reason:
        return {"skipped": True, "reason": reason}
    source = topology.profiles()["default"]
    doc: dict[str, Any] = {"base_topology": str(source), "hypervisor_memory_mib": SCALE_MEMORY_MIB,
                           "layout": SCALE_LAYOUT, "labs": []}
    text = source.read_text()
    for n in SCALE_SIZES:
        try:
            topo = topology.parse(scaling_topology_text(text, n),
                                  f"{source} with {n} hypervisors")
        except Exception as exc:
            doc["labs"].append({"hypervisors": n, "error": _error(exc)})
            continue
        doc["labs"].append(measure_lab(topo, f"bench-scale-{n}", store, timings))
    doc["two_tiny_labs_at_once"] = two_labs_at_once(store)
    return doc


def two_labs_at_once(store: ImageStore) -> dict[str, Any]:
    doc: dict[str, Any] = {"labs": {name: {} for name in PAIR_NAMES}}
    labs: list[Lab] = []
    owned: list[str] = []
    try:
        tiny = topology.load("tiny")
        doc["topology"] = tiny.source
        started = time.monotonic()
        for name in PAIR_NAMES:  # plans one at a time: leases and boot files are shared
            _claim(name)
            owned.append(name)
            with _timed(doc["labs"][name], "prepare_seconds"):
                labs.append(Lab.prepare(tiny, name, store))

        def up(lab: Lab) -> tuple[float, dict[str, float]]:
            t0 = time.monotonic()
            steps = Steps(f"lab {lab.name}")
            lab.up(steps)
            return time.monotonic() - t0, dict(steps.durations)

        ups_started = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(labs)) as pool:
            futures = {lab.name: pool.submit(up, lab) for lab in labs}
            results: dict[str, tuple[float, dict[str, float]]] = {}
            for name, future in futures.items():
                try:
                    results[name] = future.result()
                except Exception as exc:
                    doc["labs"][name]["error"] = _error(exc)
        doc["up_wall_seconds"] = _r(time.monotonic() - ups_started)
        doc["wall_seconds"] = _r(time.monotonic() - started)
        for name, (seconds, durations) in results.items():
            lab_doc = doc["labs"][name]
            lab_doc["up_seconds"] = _r(seconds)
            lab_doc["cold_start_to_ssh_seconds"] = _r(seconds + lab_doc["prepare_seconds"])
            lab_doc["up_steps"] = {k: _r(v) for k, v in durations.items()}
        if len(results) != len(labs):
            doc["error"] = "not every lab came up: see labs.*.error"
    except Exception as exc:
        doc["error"] = _error(exc)
    finally:
        started = time.monotonic()
        by_name = {lab.name: lab for lab in labs}
        for name in owned:
            _destroy(name, by_name.get(name), doc["labs"][name])
        doc["destroy_seconds"] = _r(time.monotonic() - started)
    return doc


# The document ---------------------------------------------------------------------------------


def _guarded(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    log.info("bench: section %s", name)
    started = time.monotonic()
    try:
        doc = fn()
    except Exception as exc:
        log.error("bench: section %s failed: %s", name, exc)
        return {"error": _error(exc), "section_seconds": _r(time.monotonic() - started)}
    if "error" in doc:
        log.error("bench: section %s: %s", name, doc["error"].splitlines()[0])
    log.info("bench: section %s done in %.1f s", name, time.monotonic() - started)
    return doc


def run_bench(args: Any) -> dict[str, Any]:
    """Run every section the arguments ask for; return one JSON-serialisable document."""
    run_id = new_run_id()
    started_at, started = utc_now(), time.monotonic()
    smallest = _flag(args, "smallest")
    # Phases are kept in memory only (figures are pulled into the document); never written.
    timings = Timings(Path(tempfile.gettempdir()) / "ganeti-lab-bench" / run_id, run_id)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": "ganeti-lab benchmark",
        "run_id": run_id,
        "started": iso(started_at),
        "settings": {k: _flag(args, k) for k in
                     ("smallest", "skip_cold_build", "skip_baseline", "skip_scaling")},
    }
    with _sigterm_as_interrupt():
        store = ImageStore()
        doc["host"] = _guarded("host", lambda: host_section(store))
        doc["images"] = _guarded("images", lambda: images_section(args, store, timings))
        topo: topology.Topology | None = None
        try:
            topo = topology.load("tiny" if smallest else None)
        except Exception as exc:
            doc["lab"] = {"error": _error(exc)}
        if topo is not None:
            lab_topo = topo
            doc["lab"] = _guarded("lab", lambda: lab_section(lab_topo, store, timings))
            doc["baseline"] = _guarded(
                "baseline", lambda: baseline_section(args, lab_topo, store, timings))
        else:
            doc["baseline"] = ({"skipped": True, "reason": skip_reason(args, "baseline")}
                               if skip_reason(args, "baseline")
                               else {"error": "the default topology did not load"})
        doc["ratios"] = compute_ratios(doc["lab"], doc["baseline"])
        doc["scaling"] = _guarded("scaling", lambda: scaling_section(args, store, timings))
    doc["finished"] = iso(utc_now())
    doc["total_seconds"] = _r(time.monotonic() - started)
    return doc
