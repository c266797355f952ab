"""A run's lab, shared by the pytest plugin and `ganeti-lab run`: build images if needed, bring
the lab up (or reuse a kept one), and at the end keep or destroy it by policy."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from lab import rest, topology, virt
from lab.bringup import bring_up
from lab.errors import LabError
from lab.ganeti import patches
from lab.ganeti.patches import GanetiPatch
from lab.images import current_images
from lab.images.local_debs import LocalDebs, check_lab_reuse
from lab.lab import Lab, check_not_in_use, destroy
from lab.leases import LeaseBook
from lab.names import validate_lab_name
from lab.progress import Steps
from lab.secrets import register_lab_secrets
from lab.timings import Timings, maybe_phase

log = logging.getLogger("lab.session")
KEEP_POLICIES = ("always", "failed", "never")


@dataclass
class LabSession:
    topology: str | None
    name: str | None
    reuse: bool
    keep: str
    timings: Timings | None = None
    force: bool = False  # take over or destroy a lab whose owner process is alive
    ganeti_patch: GanetiPatch | None = None  # applied on its clusters' nodes (lab.ganeti.patches)
    local_debs: LocalDebs | None = None      # layered into the hypervisor image (--ganeti-debs)
    lab: Lab | None = None
    reused: bool = False

    def start(self) -> Lab:
        others = topology.memory_in_use_mib(exclude={self.name} if self.name else ())
        topo = topology.load(self.topology, running_mib=others)
        name = validate_lab_name(self.name or topo.name)
        lease = LeaseBook().get(name)
        if self.reuse and lease is not None:
            check_not_in_use(name, self.force)
            lab = Lab.attach(name)
            check_lab_reuse(name, lab.dir, self.local_debs)
            states = virt.domain_states(lab.plan)
            if rest.at_rest(lab) and all(s == "shut off" for s in states.values()):
                LeaseBook().set_owner(name, os.getpid())
                rest.wake(lab)
                states = virt.domain_states(lab.plan)
            if any(s != "running" for s in states.values()):
                raise LabError(f"lab {name} cannot be reused: machines are {states}",
                               f"destroy it (`ganeti-lab destroy {name}`) or drop --lab-reuse")
            LeaseBook().set_owner(name, os.getpid())
            register_lab_secrets(lab.dir)
            patches.adopt(lab, self.ganeti_patch)
            log.info("reusing lab %s (%s)", name, lab.accelerator)
            self.lab, self.reused = lab, True
            return lab
        if lease is not None:
            check_not_in_use(name, self.force)
            log.warning("lab %s already exists; destroying it for a fresh start "
                        "(--lab-reuse would have reused it)", name)
            destroy(name, force=self.force)
        lab = Lab.prepare(topo, name,
                          current_images(timings=self.timings, local_debs=self.local_debs),
                          local_debs=self.local_debs)
        register_lab_secrets(lab.dir)
        self.lab = lab
        patches.adopt(lab, self.ganeti_patch)
        log.info("lab %s: accelerator %s", name, lab.accelerator)
        with maybe_phase(self.timings, f"lab up ({len(lab.plan.machines)} machines)"):
            bring_up(lab, Steps(f"lab {name}", self.timings))
        return lab

    def finish(self, failed: bool) -> virt.LabObjects | None:
        """Keep or destroy the lab; returns what was destroyed (None when kept)."""
        if self.lab is None:
            return None
        keep = self.keep == "always" or (self.keep == "failed" and failed)
        if keep:
            self.lab.close()
            self.lab.keep()
            log.info("keeping lab %s (--lab-keep=%s); `ganeti-lab destroy %s` removes it",
                     self.lab.name, self.keep, self.lab.name)
            return None
        with maybe_phase(self.timings, "lab destroy"):
            removed = self.lab.destroy()
        left = virt.find(self.lab.name)
        if not left.empty():
            raise LabError(f"destroying lab {self.lab.name} left objects behind: {left}",
                           f"ganeti-lab destroy {self.lab.name}")
        return removed
