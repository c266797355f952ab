"""Host keys made by the lab and the seed disk that carries them (read by lab-firstboot with
`tar -x -f /dev/vdX`); every lab boot in the lab tests uses them for real."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from lab import hostkeys
from lab import secrets as lab_secrets


def test_each_machine_gets_new_keys_of_every_type(tmp_path: Path) -> None:
    first = hostkeys.make(tmp_path / "node1")
    assert [k.split()[0] for k in first] == ["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"]
    for private in (tmp_path / "node1").glob("ssh_host_*_key"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        assert "***ssh host key node1***" in lab_secrets.scrub(private.read_text())
    again = hostkeys.make(tmp_path / "node1")  # a re-image: new keys, none kept
    assert not set(first) & set(again)
    assert hostkeys.public_keys(tmp_path / "node1") == again


def test_the_seed_is_a_tar_archive_the_machine_unpacks_raw(tmp_path: Path) -> None:
    keys = hostkeys.make(tmp_path / "node2")
    image = hostkeys.seed_image(tmp_path / "node2")
    assert stat.S_IMODE(image.stat().st_mode) == 0o600
    assert '"format": "qcow2"' in subprocess.run(
        ["qemu-img", "info", "--output=json", str(image)], capture_output=True, text=True,
        check=True).stdout  # a whole-lab snapshot needs qcow2 disks
    disk = tmp_path / "seed.raw"  # what the machine reads from its disk
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(disk)],
                   check=True)
    assert disk.read_bytes() == hostkeys.seed(tmp_path / "node2")
    assert disk.stat().st_size == hostkeys.SEED_BYTES
    etc_ssh = tmp_path / "etc-ssh"
    etc_ssh.mkdir()
    subprocess.run(["tar", "-x", "-f", str(disk), "-C", str(etc_ssh)], check=True)
    unpacked = sorted(p.name for p in etc_ssh.iterdir())
    assert unpacked == sorted(f"ssh_host_{t}_key{s}" for t in hostkeys.KEY_TYPES
                              for s in ("", ".pub"))
    for key_type in hostkeys.KEY_TYPES:
        private = etc_ssh / f"ssh_host_{key_type}_key"
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        assert private.read_bytes() == (tmp_path / "node2" / private.name).read_bytes()
    assert [" ".join(p.read_text().split()[:2]) for p in
            (etc_ssh / f"ssh_host_{t}_key.pub" for t in hostkeys.KEY_TYPES)] == keys
