"""A lab's machines: prepare (lease, key, plan), bring up through Vagrant, destroy.

Vagrant (vagrant-libvirt, driven by python-vagrant) creates and boots the domains in parallel,
from the same Vagrantfile a contributor can use by hand. libvirt is used directly for networks
with fixed addresses, states, and for finding and removing every object of a lab.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import psutil
import vagrant

from lab import accel, bootprofile, hostkeys, paths, virt
from lab.errors import HarnessError, LabError, raise_failures
from lab.images import ImageStore
from lab.images.local_debs import LocalDebs, record_in_lab
from lab.images.recipe import recipes
from lab.images.store import Image, ensure_registered
from lab.keys import ensure_keypair
from lab.leases import LeaseBook
from lab.names import name_problem, validate_lab_name
from lab.paths import lab_dir, labs_dir, state_dir
from lab.progress import Steps
from lab.remote import Machine
from lab.shell import tail
from lab.spec import LabPlan, kernel_cmdline, plan
from lab.topology import Topology

log = logging.getLogger("lab.machines")  # the channel of the machines' [lab] lines
T = TypeVar("T")


def vagrantfile_dir() -> Path:
    return Path(str(resources.files("lab")))


class Lab:
    """One lab: its plan on disk, its machines, and the verbs of its lifecycle."""

    def __init__(self, directory: Path, plan: LabPlan) -> None:
        self.dir = directory
        self.plan = plan
        self.name = plan.lab
        self._machines: dict[str, Machine] = {}
        self.cancel = threading.Event()

    def __repr__(self) -> str:
        return f"Lab({self.name})"

    # Creation and lookup --------------------------------------------------------------------

    @classmethod
    def prepare(
        cls, topology: Topology, name: str | None = None, store: ImageStore | None = None,
        local_debs: LocalDebs | None = None,
    ) -> Lab:
        """Lease subnets, make the lab's keys and write its plan. Creates no lab domain.
        ``local_debs``: the hypervisors boot the image layered with them (--ganeti-debs).

        An error, Ctrl-C or SIGTERM on the way removes what this call made (the lease, the
        state directory); a lab that already existed under that name is left as it was.
        """
        name = validate_lab_name(name or topology.name)
        store = store or ImageStore()
        roles = {m.role for m in topology.machines}
        all_recipes = recipes(local_debs=local_debs)
        images = {role: store.get(role, all_recipes[role].key()) for role in roles}
        book = LeaseBook()
        if book.claim_stale(name):
            log.warning("lab %s: leftovers of a dead run found; removing them first", name)
            destroy(name)
        existed = book.get(name) is not None
        with sigterm_as_interrupt():
            lease = book.acquire(name, {n.name: n.subnet for n in topology.networks},
                                 topology.source)
            log.info("lab %s: leased %s; preparing keys, accelerator, plan and boot files",
                     name, ", ".join(lease.subnets.values()))
            try:
                lab = cls._write_plan(topology, name, lease.subnets, images)
                record_in_lab(lab.dir, local_debs)
                return lab
            except BaseException:
                if not existed:
                    log.error("lab %s: prepare failed; removing what it made", name)
                    roll_back(name)
                raise

    @classmethod
    def _write_plan(cls, topology: Topology, name: str, subnets: dict[str, str],
                    images: dict[str, Image]) -> Lab:
        directory = lab_dir(name)
        (directory / "console").mkdir(parents=True, exist_ok=True)
        public_key = ensure_keypair(directory / "id_ed25519", "lab-login")
        ensure_keypair(directory / "node_ed25519", "lab-nodes")
        chosen = accel.detect(images["hypervisor"].kernel if "hypervisor" in images else None)
        lab_plan = plan(topology, name, subnets, directory / "id_ed25519",
                        directory / "console", chosen.libvirt_domain_type, chosen.cpu_mode)
        virt.ensure_default_pool()
        boot = {role: (virt.ensure_pool_volume(img.kernel, f"{img.box_name}-vmlinuz"),
                       virt.ensure_pool_volume(img.initrd, f"{img.box_name}-initrd"))
                for role, img in images.items()}
        for img in images.values():
            virt.ensure_box_volume(img.box_name, ensure_registered(img),
                                   int(img.manifest["virtual_size_gib"]) * 2**30)
        known_hosts = []
        for i, m in enumerate(lab_plan.machines):
            keys = hostkeys.make(directory / "hostkeys" / m.name)
            known_hosts += [f"{m.mgmt_ip} {key}" for key in keys]
            seed = f"{m.domain}-seed.qcow2"
            virt.put_lab_volume(seed, hostkeys.seed_image(directory / "hostkeys" / m.name))
            lab_plan.machines[i] = type(m)(**{
                **m.__dict__, "box": images[m.role].box_name, "kernel": boot[m.role][0],
                "initrd": boot[m.role][1], "cmdline": kernel_cmdline(lab_plan, m, public_key),
                "seed": seed,
            })
        # Known before the first connection: no host key of the lab is trusted on first use.
        (directory / "known_hosts").write_text("\n".join(known_hosts) + "\n")
        lab_plan.save(directory / "lab.json")
        (directory / "accelerator").write_text(f"{chosen.name}: {chosen.reason}\n")
        return cls(directory, lab_plan)

    @classmethod
    def attach(cls, name: str) -> Lab:
        path = lab_dir(validate_lab_name(name)) / "lab.json"
        if not path.exists():
            raise LabError(f"no lab named {name!r} on this host",
                           "list labs with `ganeti-lab status`, or bring one up with "
                           "`ganeti-lab up --name NAME`")
        return cls(path.parent, LabPlan.load(path))

    @property
    def accelerator(self) -> str:
        path = self.dir / "accelerator"
        return path.read_text().strip() if path.exists() else "unknown"

    # Machines -------------------------------------------------------------------------------

    def machine(self, name: str) -> Machine:
        if name not in self._machines:
            m = self.plan.machine(name)
            self._machines[name] = Machine(name, m.mgmt_ip, Path(self.plan.key),
                                           self.dir / "known_hosts", cancel=self.cancel)
        return self._machines[name]

    @property
    def machines(self) -> list[Machine]:
        return [self.machine(m.name) for m in self.plan.machines]

    @property
    def hypervisors(self) -> list[Machine]:
        return [self.machine(m.name) for m in self.plan.hypervisors]

    @property
    def service(self) -> Machine:
        return self.machine(self.plan.service.name)

    def on_all(self, fn: Callable[[Machine], T], machines: list[Machine] | None = None
               ) -> dict[str, T]:
        """Run ``fn`` on every machine at once.

        Every machine's error is reported, not just the first (one ``LabError`` naming each
        failed machine). Ctrl-C or SIGTERM cancels the waits of every machine and is raised
        at once, instead of after the slowest worker thread gives up.
        """
        targets = machines if machines is not None else self.machines
        pool = ThreadPoolExecutor(max_workers=max(1, len(targets)))
        try:
            futures = {m.name: pool.submit(fn, m) for m in targets}
            wait(futures.values())
        except BaseException:
            self.cancel.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        raise_failures({name: exc for name, f in futures.items() if (exc := f.exception())},
                       len(targets), "machines", "the lines above name each machine; its "
                       "console log and `ganeti-lab status` tell more")
        return {name: f.result() for name, f in futures.items()}

    def close(self) -> None:
        for m in self._machines.values():
            m.close()

    # Vagrant --------------------------------------------------------------------------------

    def _vagrant_home(self) -> Path:
        """A Vagrant home of the lab's own that shares the user's boxes and plugins.

        Vagrant keeps one global machine index with per-machine locks in its home; two labs
        brought up at once then fail with "Failed to lock new machine". A home per lab keeps
        their indexes and locks apart, while boxes stay registered once.
        """
        shared = Path(os.environ.get("VAGRANT_HOME", Path.home() / ".vagrant.d"))
        home = self.dir / "vagrant-home"
        home.mkdir(exist_ok=True)
        (shared / "boxes").mkdir(parents=True, exist_ok=True)
        for name in ("boxes", "gems", "plugins.json", "rgloader"):
            link = home / name
            if (shared / name).exists() and not link.is_symlink():
                link.symlink_to(shared / name)
        return home

    def vagrant_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "VAGRANT_HOME": str(self._vagrant_home()),
            "VAGRANT_CWD": str(vagrantfile_dir()),
            "VAGRANT_DOTFILE_PATH": str(self.dir / "vagrant"),
            "VAGRANT_DEFAULT_PROVIDER": "libvirt",
            "VAGRANT_CHECKPOINT_DISABLE": "1",
            "GANETI_LAB_PLAN": str(self.dir / "lab.json"),
        }

    def _vagrant(self) -> vagrant.Vagrant:
        log_file = self.dir / "vagrant.log"
        return vagrant.Vagrant(
            root=str(vagrantfile_dir()), env=self.vagrant_env(),
            out_cm=vagrant.make_file_cm(str(log_file)),
            err_cm=vagrant.make_file_cm(str(log_file)),
        )

    def _vagrant_failed(self, what: str) -> LabError:
        log_text = (self.dir / "vagrant.log").read_text(errors="replace") \
            if (self.dir / "vagrant.log").exists() else ""
        # Ruby backtraces bury the message: keep the lines a person reads.
        lines = [line for line in log_text.splitlines()
                 if not re.match(r"^\s*/\S+\.rb:\d+:in ", line)]
        kept = keep_failure_logs(self)
        return LabError(f"`vagrant {what}` failed for lab {self.name}; vagrant.log says:\n"
                        + tail("\n".join(lines), 25),
                        f"read {kept / 'vagrant.log'} and the console logs in {kept}")

    # Lifecycle ------------------------------------------------------------------------------

    def up(self, steps: Steps | None = None,
           then: tuple[str, Callable[[Lab], None]] | None = None) -> None:
        """Create and boot every machine in parallel and wait until each answers SSH; then run
        the step ``then`` (label, function of the lab), as lab/bringup.py settles the lab.

        Any failure or Ctrl-C on the way, ``then`` included, removes everything the lab created.
        """
        steps = steps or Steps(f"lab {self.name}")
        try:
            with sigterm_as_interrupt():
                with steps.step("libvirt networks"):
                    virt.ensure_default_pool()
                    virt.ensure_networks(self.plan)
                boot_began = time.monotonic()
                with steps.step(f"boot {len(self.plan.machines)} machines (vagrant up, "
                                f"{self.plan.driver})"):
                    self._vagrant_up()
                with steps.step("SSH on every machine"):
                    self.on_all(lambda m: m.wait_for_ssh(timeout=600))
                    bootprofile.take(self, boot_began, steps.timings)
                if then is not None:
                    label, step = then
                    with steps.step(label):
                        step(self)
        except BaseException:
            log.error("lab %s: bring-up failed; removing everything it created", self.name)
            self.cancel.set()
            self.close()
            roll_back(self.name)
            raise

    def _vagrant_up(self) -> None:
        """`vagrant up`, watched: a bring-up that makes no progress (no new Vagrant output, no
        domain changing state) for ``stall_seconds()`` is stopped and fails, naming each
        machine's state and the last thing Vagrant said about it."""
        stalled: list[str] = []
        done = threading.Event()

        def watch() -> None:
            log_path = self.dir / "vagrant.log"
            last_seen: tuple[int, dict[str, str]] | None = None
            last_change = time.monotonic()
            while not done.wait(5.0):
                try:
                    seen = (log_path.stat().st_size if log_path.exists() else 0,
                            virt.domain_states(self.plan))
                except LabError:
                    continue
                if seen != last_seen:
                    last_seen, last_change = seen, time.monotonic()
                elif time.monotonic() - last_change > stall_seconds():
                    stalled.append(self._stall_report(seen[1]))
                    stop_lab_processes(self.name)
                    return

        watcher = threading.Thread(target=watch, name=f"watch-{self.name}", daemon=True)
        watcher.start()
        try:
            self._vagrant().up(provider="libvirt")
        except Exception:
            if not stalled:
                raise self._vagrant_failed("up") from None
        finally:
            done.set()
            watcher.join()
        # Checked after the call too: the watchdog's wait for the stopped `vagrant` may reap
        # it first, and subprocess then takes the lost exit status for success.
        if stalled:
            raise LabError(f"lab {self.name}: `vagrant up` made no progress for "
                           f"{stall_seconds():.0f} s and was stopped:\n{stalled[0]}",
                           f"read {keep_failure_logs(self)} (vagrant.log, console logs)")

    def _stall_report(self, states: dict[str, str]) -> str:
        text = (self.dir / "vagrant.log").read_text(errors="replace") \
            if (self.dir / "vagrant.log").exists() else ""
        last: dict[str, str] = {}
        for line in text.splitlines():
            found = re.match(r"^==> (\S+?): (.*)", line.strip())
            if found:
                last[found.group(1)] = found.group(2)
        return "\n".join(f"  {m.name}: {states.get(m.name, 'absent')}; last: "
                         f"{last.get(m.name, 'nothing yet')}" for m in self.plan.machines)

    def status(self) -> dict[str, Any]:
        states = virt.domain_states(self.plan)
        return {
            "lab": self.name,
            "accelerator": self.accelerator,
            "machines": [
                {"name": m.name, "role": m.role, "state": states[m.name], "mgmt_ip": m.mgmt_ip,
                 "lab_ip": m.lab_ip, "console": str(Path(self.plan.console_dir) /
                                                    f"{m.name}.log")}
                for m in self.plan.machines
            ],
        }

    def keep(self) -> None:
        """Detach from this process: the lab stays until `ganeti-lab destroy`."""
        LeaseBook().set_owner(self.name, None)

    def destroy(self, force: bool = False) -> virt.LabObjects:
        self.close()
        return destroy(self.name, force=force)


def stall_seconds() -> float:
    """How long a bring-up may show no progress before it fails (GANETI_LAB_STALL_SECONDS).
    Under emulation a machine's first boot sends nothing to Vagrant between its domain start
    and its DHCP lease: 150-250 s with five machines booting on two cores, longer while
    another lab boots beside it (CI runs tests with labs of their own in parallel)."""
    return float(os.environ.get("GANETI_LAB_STALL_SECONDS", "600"))


FAILURE_LOGS_KEPT = 20
FAILURE_LOGS_DAYS = 14


def keep_failure_logs(lab: Lab) -> Path:
    """Copy a failed lab's logs out of its state directory, which destroy removes."""
    target = state_dir() / "failed" / f"{lab.name}-{time.strftime('%Y%m%dT%H%M%S')}"
    target.mkdir(parents=True, exist_ok=True)
    for path in [lab.dir / "vagrant.log", *Path(lab.plan.console_dir).glob("*.log")]:
        if path.exists():
            shutil.copy(path, target / path.name)
    return target


def prune_failure_logs(keep: int = FAILURE_LOGS_KEPT, days: float = FAILURE_LOGS_DAYS
                       ) -> list[Path]:
    """Drop kept failure logs beyond the newest ``keep`` or older than ``days``."""
    root = state_dir() / "failed"
    if not root.is_dir():
        return []
    entries = sorted((p for p in root.iterdir() if p.is_dir()),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    too_old = time.time() - days * 86400
    removed = [p for i, p in enumerate(entries) if i >= keep or p.stat().st_mtime < too_old]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def lab_processes(name: str) -> list[psutil.Process]:
    """Processes working for lab ``name`` (its `vagrant up` and what that started), found by
    the lab's state directory in their environment; never this process or its ancestors."""
    directory = lab_dir(name)
    marks = {str(directory), str(labs_dir() / name)}
    spared = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = []
    for proc in psutil.process_iter():
        if proc.pid in spared:
            continue
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        values = (env.get("VAGRANT_DOTFILE_PATH", ""), env.get("GANETI_LAB_PLAN", ""))
        if any(v == m or v.startswith(m + "/") for v in values for m in marks):
            found.append(proc)
    return found


def stop_lab_processes(name: str, grace: float = 5.0) -> list[int]:
    """End every process of the lab: a killed `ganeti-lab up` leaves its `vagrant up` running,
    and that would go on defining domains after the lab was destroyed."""
    procs = lab_processes(name)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace)
    if procs:
        log.warning("lab %s: stopped %d process(es) still working for it: %s", name,
                    len(procs), ", ".join(str(p.pid) for p in procs))
    return [p.pid for p in procs]


class LabInUse(HarnessError):
    """The lab belongs to a live process other than this one."""


def check_not_in_use(name: str, force: bool = False) -> None:
    lease = LeaseBook().get(name)
    if lease is None or force or lease.owner_pid in (None, os.getpid()):
        return
    if lease.owner_alive():
        raise LabInUse(f"lab {name} is in use by process {lease.owner_pid} "
                       f"({_describe(lease.owner_pid)})",
                       "wait for that run to end, or say --force to destroy it anyway")


def _describe(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())[:120] or "?"
    except psutil.Error:
        return "gone"


def destroy(name: str, *, force: bool = False) -> virt.LabObjects:
    """Remove every libvirt object, the lease and the state of lab ``name`` (idempotent).

    Refuses a lab whose owner process is alive (a running test session, `ganeti-lab up`)
    unless ``force``; kept labs (no owner) and this process's own labs are destroyed.
    """
    validate_lab_name(name)
    check_not_in_use(name, force)
    stop_lab_processes(name)
    removed = virt.remove(name)
    # A libvirt call a killed client had already sent may still land: look until it is quiet.
    for _ in range(5):
        again = virt.find(name)
        if again.empty():
            break
        time.sleep(1.0)
        removed.merge(virt.remove(name))
    LeaseBook().release(name)
    shutil.rmtree(lab_dir(name), ignore_errors=True)
    return removed


def roll_back(name: str) -> None:
    """Remove what a failed step made; a failure here is logged, never raised, so it cannot
    hide the error that caused the roll-back."""
    try:
        destroy(name, force=True)
    except BaseException as exc:  # the original error is what the user needs
        log.error("lab %s: clean-up after the failure failed too: %s; run `ganeti-lab destroy "
                  "--stale` to finish it", name, str(exc).splitlines()[0] if str(exc) else exc)


def destroy_stale() -> dict[str, virt.LabObjects]:
    """Labs whose owner process is gone, state directories without a lease, libvirt objects
    that belong to no lease, and old failure logs.

    Stale leases are taken over under the lease lock before anything is removed, and orphans
    are judged and removed under it, so a lab leased at the same moment is never mistaken for
    leftovers.
    """
    book = LeaseBook()
    removed: dict[str, virt.LabObjects] = {}
    for lease in book.claim_stale():
        removed[lease.lab] = destroy(lease.lab)
    with book.lock:
        leased = set(book.all())
        if labs_dir().is_dir():
            for directory in sorted(labs_dir().iterdir()):
                if directory.name not in leased and name_problem(directory.name) is None:
                    stop_lab_processes(directory.name)
                    removed[directory.name] = virt.remove(directory.name)
                    shutil.rmtree(directory, ignore_errors=True)
        objects = virt.find()
        # A lab of another state directory on this host (another user's, a test's) is not an
        # orphan: its domains log their consoles there.
        mine = str(state_dir().resolve()) + "/"
        elsewhere = {paths.owner_of(d) for d, console in
                     virt.console_paths(objects.domains).items()
                     if console and not str(Path(console).resolve()).startswith(mine)}
        spared = leased | elsewhere
        orphans = sorted({n for n in objects.domains + objects.networks
                          if paths.owner_of(n) not in spared}
                         | {v.split("/", 1)[1] for v in objects.volumes
                            if paths.owner_of(v.split("/", 1)[1]) not in spared})
        for obj in orphans:
            removed.setdefault("(orphans)", virt.LabObjects()).merge(virt.remove_exact(obj))
    for path in prune_failure_logs():
        removed.setdefault("(old failure logs)", virt.LabObjects()).files.append(str(path))
    return removed


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (CI timeouts, `kill`) gets the same cleanup as Ctrl-C."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
