"""A lab's machines: prepare (lease, key, plan), bring up through Vagrant, settle, destroy.

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
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import vagrant

from lab import accel, virt
from lab.errors import LabError
from lab.images import ImageStore
from lab.images.recipe import recipes
from lab.keys import ensure_keypair
from lab.leases import LeaseBook
from lab.paths import lab_dir, object_prefix, state_dir
from lab.progress import Steps
from lab.remote import Machine
from lab.shell import tail
from lab.spec import LabPlan, kernel_cmdline, plan
from lab.topology import Topology

log = logging.getLogger("lab.machines")
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

    def __repr__(self) -> str:
        return f"Lab({self.name})"

    # Creation and lookup --------------------------------------------------------------------

    @classmethod
    def prepare(
        cls, topology: Topology, name: str | None = None, store: ImageStore | None = None
    ) -> Lab:
        """Lease subnets, make the lab's keys and write its plan. Creates no libvirt object."""
        name = name or topology.name
        store = store or ImageStore()
        roles = {m.role for m in topology.machines}
        all_recipes = recipes()
        images = {role: store.get(role, all_recipes[role].key()) for role in roles}
        book = LeaseBook()
        previous = book.get(name)
        if previous is not None and not previous.owner_alive():
            log.warning("lab %s: leftovers of a dead run found; removing them first", name)
            destroy(name)
        lease = book.acquire(name, {n.name: n.subnet for n in topology.networks},
                             topology.source)
        directory = lab_dir(name)
        (directory / "console").mkdir(parents=True, exist_ok=True)
        public_key = ensure_keypair(directory / "id_ed25519", "lab-login")
        ensure_keypair(directory / "node_ed25519", "lab-nodes")
        chosen = accel.detect(images["hypervisor"].kernel if "hypervisor" in images else None)
        lab_plan = plan(topology, name, lease.subnets, directory / "id_ed25519",
                        directory / "console", chosen.libvirt_domain_type, chosen.cpu_mode)
        virt.ensure_default_pool()
        boot = {role: (virt.ensure_boot_file(str(img.kernel), f"{img.box_name}-vmlinuz"),
                       virt.ensure_boot_file(str(img.initrd), f"{img.box_name}-initrd"))
                for role, img in images.items()}
        for i, m in enumerate(lab_plan.machines):
            lab_plan.machines[i] = type(m)(**{
                **m.__dict__, "box": images[m.role].box_name, "kernel": boot[m.role][0],
                "initrd": boot[m.role][1], "cmdline": kernel_cmdline(lab_plan, m, public_key),
            })
        lab_plan.save(directory / "lab.json")
        (directory / "accelerator").write_text(f"{chosen.name}: {chosen.reason}\n")
        return cls(directory, lab_plan)

    @classmethod
    def attach(cls, name: str) -> Lab:
        path = lab_dir(name) / "lab.json"
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
                                           self.dir / "known_hosts")
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
        """Run ``fn`` on every machine at once; the first error is raised after all finish."""
        targets = machines if machines is not None else self.machines
        with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
            futures = {m.name: pool.submit(fn, m) for m in targets}
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

    def up(self, steps: Steps | None = None) -> None:
        """Create and boot every machine in parallel, then settle them (hosts, DNS, storage).

        Any failure or Ctrl-C on the way removes everything the lab created.
        """
        steps = steps or Steps(f"lab {self.name}")
        try:
            with sigterm_as_interrupt():
                with steps.step("libvirt networks"):
                    virt.ensure_default_pool()
                    virt.ensure_networks(self.plan)
                with steps.step(f"boot {len(self.plan.machines)} machines (vagrant up, "
                                f"{self.plan.driver})"):
                    try:
                        self._vagrant().up(provider="libvirt")
                    except Exception:
                        raise self._vagrant_failed("up") from None
                with steps.step("SSH on every machine"):
                    self.on_all(lambda m: m.wait_for_ssh(timeout=600))
                with steps.step("settle machines (hosts, DNS/DHCP, NFS, LVM, node keys)"):
                    from lab.settle import settle

                    settle(self)
        except BaseException:
            log.error("lab %s: bring-up failed; removing everything it created", self.name)
            self.close()
            destroy(self.name)
            raise

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

    def destroy(self) -> virt.LabObjects:
        self.close()
        return destroy(self.name)


def keep_failure_logs(lab: Lab) -> Path:
    """Copy a failed lab's logs out of its state directory, which destroy removes."""
    target = state_dir() / "failed" / f"{lab.name}-{time.strftime('%Y%m%dT%H%M%S')}"
    target.mkdir(parents=True, exist_ok=True)
    for path in [lab.dir / "vagrant.log", *Path(lab.plan.console_dir).glob("*.log")]:
        if path.exists():
            shutil.copy(path, target / path.name)
    return target


def destroy(name: str) -> virt.LabObjects:
    """Remove every libvirt object, the lease and the state of lab ``name`` (idempotent)."""
    removed = virt.remove(object_prefix(name))
    LeaseBook().release(name)
    shutil.rmtree(lab_dir(name), ignore_errors=True)
    return removed


def destroy_stale() -> dict[str, virt.LabObjects]:
    """Labs whose owner process is gone, and libvirt objects that belong to no lease."""
    book = LeaseBook()
    removed: dict[str, virt.LabObjects] = {}
    for lease in book.stale():
        removed[lease.lab] = destroy(lease.lab)
    live = [object_prefix(name) for name in book.all()]
    objects = virt.find()
    orphans = {n for n in objects.domains + objects.networks
               if not any(n.startswith(p) for p in live)}
    orphans |= {v.split("/", 1)[1] for v in objects.volumes
                if not any(v.split("/", 1)[1].startswith(p) for p in live)}
    if orphans:
        # Remove orphans one name at a time: a prefix may not identify a lab unambiguously.
        for obj in sorted(orphans):
            removed.setdefault("(orphans)", virt.LabObjects())
            gone = virt.remove_exact(obj)
            for kind in ("domains", "networks", "volumes"):
                getattr(removed["(orphans)"], kind).extend(getattr(gone, kind))
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
