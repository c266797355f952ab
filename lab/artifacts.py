"""What a failed test leaves for a person to read, collected before teardown.

Per node: /var/log/ganeti (compressed), the journal, `gnt-cluster verify` and `gnt-job list` on
masters; per domain: the serial console log and libvirt XML; the networks' XML. Every item has
its own timeout and a failure to collect one is written down and skipped: collection never fails
or hangs a run.
"""

from __future__ import annotations

import logging
import shutil
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING

from lab import virt
from lab.ganeti.gnt import fetch_ganeti_logs
from lab.remote import Machine

if TYPE_CHECKING:
    from lab.machines import Lab

log = logging.getLogger("lab.artifacts")
PER_NODE_SECONDS = 90.0


def collect(lab: Lab, dest: Path, masters: list[str] | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []

    def guarded(label: str, fn: object, *args: object) -> None:
        try:
            fn(*args)  # type: ignore[operator]
        except Exception as exc:  # collection must never fail the run
            problems.append(f"{label}: {type(exc).__name__}: {exc}")

    for m in lab.plan.machines:
        guarded(f"{m.name} domain xml", lambda m=m: (dest / f"{m.name}.domain.xml")
                .write_text(virt.domain_xml(m.domain)))
        console = Path(lab.plan.console_dir) / f"{m.name}.log"
        guarded(f"{m.name} console", shutil.copy, console, dest / f"{m.name}.console.log")
    for net in (lab.plan.mgmt_network, lab.plan.lab_network):
        guarded(f"{net} xml", lambda net=net: (dest / f"{net}.network.xml")
                .write_text(virt.network_xml_of(net)))

    def node(m: Machine) -> None:
        guarded(f"{m.name} journal", lambda: (dest / f"{m.name}.journal.txt").write_text(
            m.run("journalctl -b --no-pager -n 3000", timeout=60).stdout))
        if m.name in {p.name for p in lab.plan.hypervisors}:
            guarded(f"{m.name} ganeti logs", fetch_ganeti_logs, m, dest, 60.0)
        if masters and m.name in masters:
            for cmd, name in (("gnt-cluster verify", "gnt-cluster-verify"),
                              ("gnt-job list", "gnt-job-list"),
                              ("gnt-instance list -o name,pnode,snodes,status,disk_template",
                               "gnt-instance-list")):
                guarded(f"{m.name} {cmd}", lambda cmd=cmd, name=name: (
                    dest / f"{m.name}.{name}.txt").write_text(
                        (r := m.run(cmd, timeout=120)).stdout + r.stderr))

    pool = ThreadPoolExecutor(max_workers=len(lab.plan.machines))
    futures = [pool.submit(node, lab.machine(m.name)) for m in lab.plan.machines]
    _, late = wait(futures, timeout=PER_NODE_SECONDS + 60)
    pool.shutdown(wait=False, cancel_futures=True)
    if late:
        problems.append(f"{len(late)} node(s) did not answer within {PER_NODE_SECONDS:.0f} s")
    if problems:
        (dest / "COLLECTION-PROBLEMS.txt").write_text("\n".join(problems) + "\n")
        log.warning("artifacts: %d item(s) could not be collected (see %s)", len(problems),
                    dest / "COLLECTION-PROBLEMS.txt")
    log.info("artifacts of lab %s in %s", lab.name, dest)
    return dest
