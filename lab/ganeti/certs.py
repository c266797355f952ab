"""The cluster's RAPI certificate, made for the cluster's own name and IP.

Ganeti's self-signed default carries the name ganeti.example.com, which a client that checks
host names must reject. It cannot be put in place before `gnt-cluster init` (init refuses a
/var/lib/ganeti holding files), so bootstrap installs it right after init, while the master is
the only node, and node adds copy it to the master candidates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


def rapi_certificate(fqdn: str, ip: str, days: int = 365) -> tuple[str, str]:
    """Return (key+certificate PEM for the cluster, certificate PEM for the client to pin)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, fqdn)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))  # guest clocks may lag after a restore
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(fqdn), x509.DNSName(fqdn.split(".")[0]),
            x509.IPAddress(ipaddress.IPv4Address(ip)),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption()).decode()
    return key_pem + cert_pem, cert_pem
