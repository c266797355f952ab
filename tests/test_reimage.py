"""Re-imaging a hypervisor for real, on a tiny lab of its own (a re-image makes the lab's older
snapshots unusable, so it never touches the session's lab)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from lab import snapshots, topology
from lab.bringup import bring_up
from lab.errors import LabError
from lab.images import ImageStore
from lab.lab import Lab, destroy
from lab.reimage import ReimageError, reimage

NAME = "reimage"


@pytest.fixture(scope="module")
def tiny(lab_host: ImageStore) -> Iterator[Lab]:
    destroy(NAME, force=True)
    lab = Lab.prepare(topology.load("tiny"), NAME, lab_host)
    try:
        bring_up(lab)
        yield lab
    finally:
        lab.destroy()


def _host_keys(lab: Lab, machine: str) -> set[str]:
    text = lab.machine(machine).succeed("cat /etc/ssh/ssh_host_*_key.pub")
    return {" ".join(line.split()[:2]) for line in text.splitlines()}


def test_reimage_gives_a_fresh_root_disk_and_keeps_the_lab(tiny: Lab) -> None:
    node = tiny.machine("node1")
    snapshots.save(tiny, "before")
    node.succeed("echo old > /root/left-behind && sync")
    node.succeed("lvcreate -y -L 8M -n kept xenvg")  # on the second disk, which stays
    keys_before = _host_keys(tiny, "node1")

    started = time.monotonic()
    seconds = reimage(tiny, "node1")
    uptime = float(node.succeed("cut -d' ' -f1 /proc/uptime"))
    elapsed = time.monotonic() - started
    # The figure is the call's own duration, and the machine booted inside it.
    assert uptime < seconds <= elapsed, (uptime, seconds, elapsed)
    # A new machine on the old identity: nothing of the old root disk, new host keys (trusted
    # from its console: the strict SSH check below passes only with them), same name and IP.
    # (The machine-id stays: systemd derives it from the domain's UUID, which is kept.)
    assert not node.run("test -e /root/left-behind").ok
    keys_after = _host_keys(tiny, "node1")
    assert keys_after.isdisjoint(keys_before)
    known = (tiny.dir / "known_hosts").read_text()
    assert all(key.split()[1] in known for key in keys_after)
    assert node.succeed("hostname").strip() == "node1"
    assert tiny.plan.machine("node1").lab_ip in node.succeed("ip -4 -o addr show br0")
    # What settling gives a hypervisor is back; its data disk kept its volume group.
    assert "kept" in node.succeed("lvs --noheadings -o lv_name xenvg")
    node.wait_until_succeeds("mountpoint -q /srv/ganeti/shared-file-storage", timeout=120)
    tiny.service.succeed("ping -c1 -W5 node1.lab")

    # A snapshot from before cannot bring the old disk back: refused, nothing changed.
    with pytest.raises(LabError, match=r"saved before node1 was re-imaged"):
        snapshots.restore(tiny, "before")
    assert not node.run("test -e /root/left-behind").ok
    # One taken after it works as ever.
    snapshots.save(tiny, "after")
    node.succeed("touch /root/after-snapshot")
    snapshots.restore(tiny, "after")
    assert not node.run("test -e /root/after-snapshot").ok
    snapshots.delete(tiny, "before")
    snapshots.delete(tiny, "after")


def test_reimage_refuses_the_service_box_and_unknown_machines(tiny: Lab) -> None:
    with pytest.raises(ReimageError, match="service box"):
        reimage(tiny, "service")
    with pytest.raises(LabError, match="has no machine 'node9'"):
        reimage(tiny, "node9")
    assert tiny.service.succeed("hostname").strip() == "service"
