"""Per-lab SSH key pairs (never Vagrant's public insecure key, never baked into an image)."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lab import secrets as lab_secrets


def ensure_keypair(path: Path, comment: str) -> str:
    """Create ``path`` (OpenSSH private key, 0600) and ``path.pub`` if missing; return the
    public key line. The private key, new or existing, is registered with ``lab.secrets`` so
    no run record or artifact ever shows it."""
    pub = path.with_suffix(".pub")
    label = f"ssh key {path.parent.name}/{path.name}"
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
        lab_secrets.register(private.decode("ascii"), label)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private)
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH)
        pub.write_text(f"{public.decode()} {comment}\n")
    else:
        lab_secrets.register(path.read_text(encoding="ascii"), label)
    return pub.read_text().strip()
