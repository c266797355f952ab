"""The image's lab-firstboot script, run for real by dash in a private mount namespace whose
/etc, /root, /proc/cmdline, /sys/block, the console and the kernel hostname are throw-away
files: what a machine's first and later boots make of the kernel command line and the seed
disk. (Every lab boot in the lab tests runs it in the guest too.)"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from lab import hostkeys
from lab.images.recipe import recipe_dir

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="needs root and unshare (a private mount namespace)")

CMDLINE = ("root=/dev/vda rw console=ttyS0 quiet lab.hostname=node7 lab.domain=lab "
           "lab.key=ssh-ed25519:AAAAC3NzaC1lZDI1NTE5AAAAIKEY:lab-login lab.ip=10.9.8.7/24 "
           "lab.dns=10.9.8.1 lab.bridge=br0")


def _world(tmp_path: Path, seed: bool) -> Path:
    world = tmp_path / "world"
    (world / "etc" / "ssh").mkdir(parents=True)
    (world / "etc" / "network" / "interfaces.d").mkdir(parents=True)
    (world / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (world / "etc" / "hosts").write_text("127.0.0.1 localhost\n127.0.1.1 debian node7\n"
                                         "10.9.8.2 node8.lab node8")
    (world / "root").mkdir()
    (world / "block" / "vda").mkdir(parents=True)  # no serial: the root disk
    for name in ("cmdline", "console", "hostname"):
        (world / name).write_text("")
    (world / "cmdline").write_text(CMDLINE + "\n")
    if seed:
        disk = world / "block" / "vdc"
        disk.mkdir()
        (disk / "serial").write_text("lab-seed")  # as sysfs has it: no newline
        keys = tmp_path / "keys"
        hostkeys.make(keys)
        (world / "dev-vdc").write_bytes(hostkeys.seed(keys))  # the machine's /dev/vdc
    return world


def test_first_boot_takes_the_seed_keys_and_the_identity(tmp_path: Path) -> None:
    world = _world(tmp_path, seed=True)
    done = _boot_with_device(world, world / "dev-vdc")
    assert done.returncode == 0, done.stderr

    etc_ssh = world / "etc" / "ssh"
    assert sorted(p.name for p in etc_ssh.glob("ssh_host_*_key")) == [
        "ssh_host_ecdsa_key", "ssh_host_ed25519_key", "ssh_host_rsa_key"]
    for private in etc_ssh.glob("ssh_host_*_key"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        assert private.read_bytes() == (tmp_path / "keys" / private.name).read_bytes()
    console = (world / "console").read_text().splitlines()
    assert sorted(console) == sorted(f"lab-hostkey: {k}"
                                     for k in hostkeys.public_keys(tmp_path / "keys"))
    _assert_identity(world)


def test_a_later_boot_keeps_its_keys_and_other_authorized_keys(tmp_path: Path) -> None:
    world = _world(tmp_path, seed=True)
    assert _boot_with_device(world, world / "dev-vdc").returncode == 0
    # What the machine gained since (Ganeti's node add): a replaced rsa key, another login key.
    (world / "etc" / "ssh" / "ssh_host_rsa_key").write_text("cluster's key\n")
    with (world / "root" / ".ssh" / "authorized_keys").open("a") as f:
        f.write("ssh-rsa AAAAB3Nza root@node1\n")
    again = _boot_with_device(world, world / "dev-vdc")
    assert again.returncode == 0, again.stderr
    assert (world / "etc" / "ssh" / "ssh_host_rsa_key").read_text() == "cluster's key\n"
    assert (world / "root" / ".ssh" / "authorized_keys").read_text().splitlines() == [
        "ssh-rsa AAAAB3Nza root@node1",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKEY lab-login"]
    _assert_identity(world)


def _boot_with_device(world: Path, device: Path) -> subprocess.CompletedProcess[str]:
    binds = {"cmdline": "/proc/cmdline", "etc": "/etc", "root": "/root", "block": "/sys/block",
             "console": "/dev/console", "hostname": "/proc/sys/kernel/hostname"}
    mounts = [f"mount --bind {world / src} {dst}" for src, dst in binds.items()]
    # The seed disk appears as /dev/vdc: an empty file made in a private /dev for it.
    setup = ["mount -t tmpfs none /dev", "touch /dev/vdc /dev/console /dev/null",
             f"mount --bind {device} /dev/vdc", *mounts]
    script = recipe_dir() / "lab-firstboot"
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           " && ".join(setup) + f" && exec dash {script}"],
                          capture_output=True, text=True, timeout=60)


def _assert_identity(world: Path) -> None:
    assert (world / "hostname").read_text().strip() == "node7"
    assert (world / "etc" / "hostname").read_text() == "node7\n"
    authorized = world / "root" / ".ssh" / "authorized_keys"
    assert stat.S_IMODE(authorized.stat().st_mode) == 0o600
    assert stat.S_IMODE((world / "root" / ".ssh").stat().st_mode) == 0o700
    assert "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKEY lab-login" in authorized.read_text()
    assert (world / "etc" / "network" / "interfaces.d" / "lab").read_text() == (
        "auto eth1\niface eth1 inet manual\n\nauto br0\niface br0 inet static\n"
        "    address 10.9.8.7/24\n    bridge_ports eth1\n    bridge_stp off\n"
        "    bridge_fd 0\n    bridge_maxwait 0\n")
    assert (world / "etc" / "hosts").read_text().splitlines() == [
        "127.0.0.1 localhost", "10.9.8.2 node8.lab node8", "10.9.8.7 node7.lab node7"]
    assert (world / "etc" / "resolv.conf").read_text() == "search lab\nnameserver 10.9.8.1\n"


def test_without_a_seed_disk_the_machine_makes_its_own_keys(tmp_path: Path) -> None:
    world = _world(tmp_path, seed=False)
    (world / "dev-none").write_bytes(b"")
    done = _boot_with_device(world, world / "dev-none")
    assert done.returncode == 0, done.stderr
    assert "cannot open" not in done.stderr  # a disk without a serial is no error
    made = sorted(p.name for p in (world / "etc" / "ssh").glob("ssh_host_*_key"))
    assert "ssh_host_ed25519_key" in made and "ssh_host_rsa_key" in made
    assert len((world / "console").read_text().splitlines()) == len(made)
    _assert_identity(world)
