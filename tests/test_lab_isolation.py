"""Two labs on one host, and clean-up after a killed or interrupted bring-up (tiny labs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lab import topology, virt
from lab.images import ImageStore
from lab.leases import LeaseBook
from lab.machines import Lab, destroy, destroy_stale
from lab.paths import object_prefix


def _nothing_left(name: str) -> None:
    left = virt.find(object_prefix(name))
    assert left.empty(), f"lab {name} left {left}"
    assert LeaseBook().get(name) is None


def test_two_labs_at_once(lab_host: ImageStore) -> None:
    tiny = topology.load("tiny")
    labs = [Lab.prepare(tiny, name, lab_host) for name in ("iso-a", "iso-b")]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda lab: lab.up(), labs))
        a, b = labs
        assert {a.plan.mgmt_subnet, a.plan.lab_subnet}.isdisjoint(
            {b.plan.mgmt_subnet, b.plan.lab_subnet})
        for lab in labs:
            names = lab.on_all(lambda m: m.succeed("hostname").strip())
            assert names == {"service": "service", "node1": "node1"}
            node_ip = lab.plan.machine("node1").lab_ip
            lab.service.succeed(f"ping -c1 -W5 {node_ip}")
        # The labs are isolated: a's service box cannot reach b's node.
        a.service.fail(f"ping -c1 -W2 {b.plan.machine('node1').lab_ip}")
    finally:
        for lab in labs:
            lab.destroy()
    for lab in labs:
        _nothing_left(lab.name)


def _up_in_background(name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "lab.cli", "up", "--topology", "tiny", "--name", name],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_for_domains(name: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if virt.find(object_prefix(name)).domains:
            return
        if proc.poll() is not None:
            pytest.fail(f"`ganeti-lab up` exited {proc.returncode} before creating domains")
        time.sleep(1)
    pytest.fail(f"no domain of lab {name} appeared within {timeout} s")


def test_killed_up_is_cleaned_by_destroy_stale(lab_host: ImageStore) -> None:
    name = "killed"
    destroy(name)
    proc = _up_in_background(name)
    _wait_for_domains(name, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up
    proc.wait()
    assert LeaseBook().get(name) is not None
    assert name in [lease.lab for lease in LeaseBook().stale()]
    removed = destroy_stale()
    assert name in removed and removed[name].domains
    _nothing_left(name)


def test_ctrl_c_during_up_leaves_nothing(lab_host: ImageStore) -> None:
    name = "interrupted"
    destroy(name)
    proc = _up_in_background(name)
    _wait_for_domains(name, proc)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
    assert proc.wait(timeout=300) != 0
    _nothing_left(name)


def test_a_process_outside_the_daemons_namespace_is_refused(lab_host: ImageStore) -> None:
    """A lab driven from another network namespace than libvirtd's would send its SSH to the
    lab's addresses out of that namespace's default route: the library refuses, naming why."""
    import shutil

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to make a second network namespace")
    probe = ("from lab import virt\n"
             "try:\n"
             "    with virt.connect(): print('connected')\n"
             "except Exception as exc: print(exc)\n")
    inside = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60)
    assert inside.stdout.strip() == "connected", inside.stderr
    outside = subprocess.run(["unshare", "--net", sys.executable, "-c", probe],
                             capture_output=True, text=True, timeout=60)
    assert "runs in another network namespace than this process" in outside.stdout, \
        outside.stdout + outside.stderr
    assert "scripts/labrun" in outside.stdout
