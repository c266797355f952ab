"""Two labs on one host, and clean-up after a killed or interrupted bring-up (tiny labs)."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from lab import topology, virt
from lab.bringup import bring_up
from lab.images import ImageStore
from lab.lab import Lab, destroy, destroy_stale, lab_processes
from lab.leases import LeaseBook
from lab.paths import lab_dir, owner_of


def _nothing_left(name: str) -> None:
    left = virt.find(name)
    assert left.empty(), f"lab {name} left {left}"
    assert LeaseBook().get(name) is None
    assert not lab_dir(name).exists(), f"lab {name} left its state directory"
    assert not lab_processes(name), f"lab {name} left processes running"


def test_two_labs_at_once_and_one_destroyed(lab_host: ImageStore) -> None:
    """Labs `x` and `x-2` run side by side, isolated; destroying `x` leaves every object of
    `x-2` in place (a name that starts like another lab's never catches its objects)."""
    tiny = topology.load("tiny")
    labs = [Lab.prepare(tiny, name, lab_host) for name in ("x", "x-2")]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(bring_up, labs))
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
        before = virt.find("x-2")
        assert len(before.domains) == 2 and len(before.networks) == 2 and before.volumes
        removed = a.destroy()
        assert removed.domains and all(owner_of(d) == "x" for d in removed.domains)
        assert virt.find("x-2") == before, "destroying lab x touched lab x-2"
        assert b.on_all(lambda m: m.succeed("hostname").strip()) == {
            "service": "service", "node1": "node1"}
    finally:
        for lab in labs:
            lab.destroy()
    for lab in labs:
        _nothing_left(lab.name)


# Interrupted bring-ups: each point of `up` where a user or CI may stop it, by SIGKILL (no
# chance to clean up: `destroy --stale` must) and by Ctrl-C (the run cleans up itself).
POINTS = {
    "prepare": "preparing keys",           # lease taken, nothing booted yet
    "boot": ": boot ",                     # vagrant up creating and starting domains
    "settle": ": settle machines",         # every machine answers SSH
}


def _ctrl_c_as_in_a_terminal() -> None:
    # A run started in the background of a non-interactive shell ignores SIGINT, and so would
    # its children: give `up` the disposition it has when a person runs it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class _Up:
    """`ganeti-lab up` in its own process group, its stderr read line by line."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lab.cli", "up", "--topology", "tiny", "--name", name],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True, preexec_fn=_ctrl_c_as_in_a_terminal)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def wait_for(self, marker: str, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.seen.append(line)
            if marker in line:
                return
        pytest.fail(f"`ganeti-lab up` never printed {marker!r} (exit {self.proc.poll()}); "
                    f"it printed:\n{''.join(self.seen[-20:])}")

    def wait_for_domains(self, timeout: float = 600) -> None:
        """Until vagrant has defined the lab's first domain: the middle of the boot."""
        deadline = time.monotonic() + timeout
        while not virt.find(self.name).domains:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no domain of lab {self.name} appeared (exit {self.proc.poll()})")
            time.sleep(1)

    def reach(self, point: str) -> None:
        self.wait_for(POINTS[point])
        if point == "boot":
            self.wait_for_domains()

    def signal(self, signum: int) -> None:
        os.killpg(self.proc.pid, signum)

    def end(self) -> None:
        """A test ends what it started, pass or fail."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for leftover in lab_processes(self.name):
            leftover.kill()


@contextlib.contextmanager
def _up_stopped_at(point: str, signum: int, name: str) -> Iterator[_Up]:
    """`ganeti-lab up` of lab ``name``, sent ``signum`` at ``point``; ended and removed after
    the test whatever happens."""
    destroy(name, force=True)
    up = _Up(name)
    try:
        up.reach(point)
        up.signal(signum)
        yield up
    finally:
        up.end()
        destroy(name, force=True)


@pytest.mark.parametrize("point", list(POINTS))
def test_killed_up_is_cleaned_by_destroy_stale(lab_host: ImageStore, point: str) -> None:
    name = f"killed-{point}"
    with _up_stopped_at(point, signal.SIGKILL, name) as up:  # no chance to clean up
        up.proc.wait()
        assert LeaseBook().get(name) is not None
        assert name in [lease.lab for lease in LeaseBook().stale()]
        removed = destroy_stale()
        assert name in removed
        if point != "prepare":
            assert removed[name].domains, removed[name]
        _nothing_left(name)
        # Nothing of the killed run outlives the clean-up and comes back later.
        time.sleep(15)
        _nothing_left(name)


@pytest.mark.parametrize("point", list(POINTS))
def test_ctrl_c_during_up_leaves_nothing(lab_host: ImageStore, point: str) -> None:
    name = f"interrupted-{point}"
    with _up_stopped_at(point, signal.SIGINT, name) as up:  # what a terminal sends on Ctrl-C
        assert up.proc.wait(timeout=120) != 0
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
