"""A lab brought up for Ganeti: machines booted to SSH (lab/lab.py), then settled as the
last step of the same bring-up, so a failure there still removes everything: the lab's names
and DNS (lab/settle.py) and Ganeti's node preparation (lab/ganeti/nodes.py)."""

from __future__ import annotations

import logging

from lab import statecache
from lab.ganeti.nodes import prepare_nodes
from lab.lab import Lab, roll_back, sigterm_as_interrupt
from lab.progress import Steps
from lab.settle import settle_lab

log = logging.getLogger("lab.machines")
SETTLE_STEP = "settle machines (hosts, DNS/DHCP, NFS, LVM, node keys)"


def bring_up(lab: Lab, steps: Steps | None = None) -> None:
    """Boot every machine, wait for SSH, settle: the lab as the "booted" snapshot keeps it.
    With the lab-state cache on and holding that state for the lab's key and subnets, the lab
    starts from it instead (lab/statecache.py)."""
    steps = steps or Steps(f"lab {lab.name}")
    entry = statecache.lookup(lab, statecache.BOOTED) if statecache.enabled() else None
    if entry is not None:
        try:
            with sigterm_as_interrupt(), steps.step(f"start from the state cache "
                                                    f"({entry.path.name})"):
                statecache.start_from(entry, lab)
            return
        except statecache.CorruptEntry:
            pass  # logged, and nothing of the lab touched: it boots
        except BaseException:
            log.error("lab %s: starting from the state cache failed; removing the lab", lab.name)
            lab.close()
            roll_back(lab.name)
            raise
    elif statecache.enabled():
        log.info("lab %s: the state cache has no booted state for this key and these subnets; "
                 "booting", lab.name)
    lab.up(steps, then=(SETTLE_STEP, settle))


def settle(lab: Lab) -> None:
    settle_lab(lab)
    prepare_nodes(lab)
