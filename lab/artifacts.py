"""What a failed test leaves for a person to read, collected before teardown.

Per node: /var/log/ganeti (compressed), the journal, `gnt-cluster verify` and `gnt-job list` on
masters; per domain: the serial console log and libvirt XML; the networks' XML. Every item has
its own timeout and a failure to collect one is written down and skipped: collection never fails
or hangs a run.

Nothing is written unscrubbed: every text goes through ``lab.secrets.scrub`` before it reaches
``dest``, and the log tarballs are fetched into a private temporary directory and repacked into
``dest`` with every member scrubbed.
"""

from __future__ import annotations

import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING

from lab import secrets as lab_secrets
from lab import virt
from lab.ganeti.gnt import fetch_ganeti_logs
from lab.remote import Machine

if TYPE_CHECKING:
    from lab.lab import Lab

log = logging.getLogger("lab.artifacts")
PER_NODE_SECONDS = 90.0


def _write(path: Path, text: str) -> None:
    path.write_text(lab_secrets.scrub(text))


def _copy(src: Path, dest: Path) -> None:
    dest.write_bytes(lab_secrets.scrub_bytes(Path(src).read_bytes()))


def _ganeti_logs(m: Machine, dest: Path, timeout: float) -> None:
    # Fetched outside dest (0700 temporary directory), so only the scrubbed copy lands there.
    with tempfile.TemporaryDirectory(prefix="lab-artifacts-") as tmp:
        raw = fetch_ganeti_logs(m, Path(tmp), timeout)
        lab_secrets.scrub_tarball(raw, dest / raw.name)


def collect(lab: Lab, dest: Path, masters: list[str] | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []

    def guarded(label: str, fn: object, *args: object) -> None:
        try:
            fn(*args)  # type: ignore[operator]
        except Exception as exc:  # collection must never fail the run
            problems.append(f"{label}: {type(exc).__name__}: {exc}")

    for m in lab.plan.machines:
        guarded(f"{m.name} domain xml", lambda m=m: _write(dest / f"{m.name}.domain.xml",
                                                           virt.domain_xml(m.domain)))
        console = Path(lab.plan.console_dir) / f"{m.name}.log"
        guarded(f"{m.name} console", _copy, console, dest / f"{m.name}.console.log")
    for net in (lab.plan.mgmt_network, lab.plan.lab_network):
        guarded(f"{net} xml", lambda net=net: _write(dest / f"{net}.network.xml",
                                                     virt.network_xml_of(net)))

    def node(m: Machine) -> None:
        guarded(f"{m.name} journal", lambda: _write(
            dest / f"{m.name}.journal.txt",
            m.run("journalctl -b --no-pager -n 3000", timeout=60).stdout))
        if m.name in {p.name for p in lab.plan.hypervisors}:
            guarded(f"{m.name} ganeti logs", _ganeti_logs, m, dest, 60.0)
        if masters and m.name in masters:
            for cmd, name in (("gnt-cluster verify", "gnt-cluster-verify"),
                              ("gnt-job list", "gnt-job-list"),
                              ("gnt-instance list -o name,pnode,snodes,status,disk_template",
                               "gnt-instance-list")):
                guarded(f"{m.name} {cmd}", lambda cmd=cmd, name=name: _write(
                    dest / f"{m.name}.{name}.txt",
                    (r := m.run(cmd, timeout=120)).stdout + r.stderr))

    pool = ThreadPoolExecutor(max_workers=len(lab.plan.machines))
    futures = [pool.submit(node, lab.machine(m.name)) for m in lab.plan.machines]
    _, late = wait(futures, timeout=PER_NODE_SECONDS + 60)
    pool.shutdown(wait=False, cancel_futures=True)
    if late:
        problems.append(f"{len(late)} node(s) did not answer within {PER_NODE_SECONDS:.0f} s")
    if problems:
        _write(dest / "COLLECTION-PROBLEMS.txt", "\n".join(problems) + "\n")
        log.warning("artifacts: %d item(s) could not be collected (see %s)", len(problems),
                    dest / "COLLECTION-PROBLEMS.txt")
    log.info("artifacts of lab %s in %s", lab.name, dest)
    return dest
