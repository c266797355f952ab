"""Each machine's SSH host keys, made by the lab on the host before the machine first boots and
handed to it on a small "seed" disk that the image's lab-firstboot reads.

Why not let each machine make its own: under emulation (TCG, five machines booting on two
cores) `ssh-keygen -A` took 90-115 s in every machine, most of it the RSA key, and it lies on
the path to SSH of every boot. The host makes the same keys in well under a second. And the lab
then knows every machine's keys before the first connection: none is trusted on first use.

The seed is a tar archive written raw onto a virtio disk whose serial is ``SEED_SERIAL``: the
machine reads it with `tar -x -f /dev/vdX`, no filesystem needed. The disk is a qcow2 image:
a whole-lab snapshot needs every writable disk to hold internal snapshots, which raw cannot.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

from lab import secrets as lab_secrets

KEY_TYPES = ("ed25519", "ecdsa", "rsa")  # the keys sshd offers by default (Ganeti needs rsa)
SEED_SERIAL = "lab-seed"
SEED_BYTES = 1 << 20


def _key_file(directory: Path, key_type: str) -> Path:
    return directory / f"ssh_host_{key_type}_key"


def make(directory: Path) -> list[str]:
    """New host keys in ``directory`` (private 0600); returns the public keys."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for key_type in KEY_TYPES:
        private = _key_file(directory, key_type)
        for stale in (private, private.with_name(private.name + ".pub")):
            stale.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", "", "-f",
                        str(private)], check=True, capture_output=True, text=True)
        lab_secrets.register(private.read_text(), f"ssh host key {directory.name}")
    return public_keys(directory)


def public_keys(directory: Path) -> list[str]:
    """``TYPE BASE64`` of each host key in ``directory``."""
    keys = []
    for key_type in KEY_TYPES:
        fields = _key_file(directory, key_type).with_suffix(".pub").read_text().split()
        keys.append(" ".join(fields[:2]))
    return keys


def seed_image(directory: Path) -> Path:
    """The seed disk (qcow2) for the keys of ``directory``, written beside them."""
    raw, image = directory / "seed.raw", directory / "seed.qcow2"
    raw.touch(mode=0o600)
    raw.write_bytes(seed(directory))
    image.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw),
                    str(image)], check=True, capture_output=True, text=True)
    raw.unlink()
    image.chmod(0o600)
    return image


def seed(directory: Path) -> bytes:
    """The seed disk's content: the keys of ``directory`` as a tar archive, zero-padded."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key_type in KEY_TYPES:
            private = _key_file(directory, key_type)
            for path, mode in ((private, 0o600), (private.with_suffix(".pub"), 0o644)):
                info = tarfile.TarInfo(path.name)
                data = path.read_bytes()
                info.size, info.mode, info.uid, info.gid = len(data), mode, 0, 0
                info.uname = info.gname = "root"
                info.mtime = int(os.stat(path).st_mtime)
                tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    if len(data) > SEED_BYTES:
        raise ValueError(f"host keys of {directory} take {len(data)} bytes, more than the seed "
                         f"disk's {SEED_BYTES}")
    return data + bytes(SEED_BYTES - len(data))
