"""Lab names and subnets, leased under a file lock so labs on one host never collide.

A lease records the process that owns the lab while it is being brought up or used (a pytest
session, `ganeti-lab up`). A kept lab has no owner and is never stale; a lab whose owner process
has died (killed `up`, crashed run) is stale and ``ganeti-lab destroy --stale`` removes it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
from filelock import FileLock

from lab.errors import LabError
from lab.paths import state_dir

DEFAULT_POOL = "10.201.0.0/16"


def subnet_pool() -> ipaddress.IPv4Network:
    text = os.environ.get("GANETI_LAB_SUBNET_POOL", DEFAULT_POOL)
    try:
        return ipaddress.IPv4Network(text)
    except ValueError as exc:
        raise LabError(f"GANETI_LAB_SUBNET_POOL={text!r} is not a subnet ({exc})",
                       "set it to a free range such as 10.201.0.0/16") from None


@dataclass
class Lease:
    lab: str
    subnets: dict[str, str]
    owner_pid: int | None
    owner_started: float | None
    topology: str
    created: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())

    def owner_alive(self) -> bool:
        if self.owner_pid is None:
            return True  # kept lab: owned by the user until `destroy`
        try:
            proc = psutil.Process(self.owner_pid)
            return abs(proc.create_time() - (self.owner_started or 0)) < 1.0
        except psutil.Error:
            return False


def _me() -> tuple[int, float]:
    proc = psutil.Process()
    return proc.pid, proc.create_time()


def _routes() -> list[ipaddress.IPv4Network]:
    """Subnets this host already routes (a laptop's LAN, VPN, other libvirt networks)."""
    try:
        out = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True,
                             check=False).stdout
    except FileNotFoundError:
        return []
    nets = []
    for line in out.splitlines():
        word = line.split()[0] if line.split() else ""
        if word != "default":
            with suppress(ValueError):
                nets.append(ipaddress.IPv4Network(word, strict=False))
    return nets


class LeaseBook:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or state_dir() / "leases.json"
        self.lock = FileLock(str(self.path) + ".lock", timeout=60)

    def _read(self) -> dict[str, Lease]:
        if not self.path.exists():
            return {}
        data = json.loads(self.path.read_text() or "{}")
        return {name: Lease(**value) for name, value in data.items()}

    def _write(self, leases: dict[str, Lease]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: asdict(v) for k, v in leases.items()}, indent=2))
        os.replace(tmp, self.path)

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Lease]]:
        with self.lock:
            leases = self._read()
            yield leases
            self._write(leases)

    def all(self) -> dict[str, Lease]:
        with self.lock:
            return self._read()

    def get(self, lab: str) -> Lease | None:
        return self.all().get(lab)

    def acquire(
        self, lab: str, networks: dict[str, ipaddress.IPv4Network | None], topology: str
    ) -> Lease:
        """Lease ``lab`` for this process; ``None`` subnets are taken from the pool."""
        pid, started = _me()
        with self._locked() as leases:
            current = leases.get(lab)
            if current is not None:
                if current.owner_alive() and current.owner_pid not in (None, pid):
                    raise LabError(
                        f"lab {lab!r} is in use by process {current.owner_pid}",
                        "choose another name (--name / --lab-name) or wait for that run",
                    )
                current.owner_pid, current.owner_started = pid, started
                return current
            taken = [ipaddress.IPv4Network(s) for other in leases.values()
                     for s in other.subnets.values()]
            # Explicit subnets are reserved first, so an automatic pick can never land on one.
            busy = taken + _routes() + [f for f in networks.values() if f is not None]
            subnets: dict[str, str] = {}
            for name, fixed in networks.items():
                if fixed is not None:
                    clash = [str(n) for n in taken if n.overlaps(fixed)]
                    if clash:
                        raise LabError(f"subnet {fixed} of network {name} is leased by another "
                                       f"lab ({', '.join(clash)})",
                                       "use subnet = \"auto\" or pick a free subnet")
                    subnets[name] = str(fixed)
                    continue
                chosen = next((s for s in subnet_pool().subnets(new_prefix=24)
                               if not any(s.overlaps(b) for b in busy)), None)
                if chosen is None:
                    raise LabError(f"no free /24 left in {subnet_pool()} for lab {lab!r}",
                                   "destroy unused labs (`ganeti-lab destroy --stale`) or set "
                                   "GANETI_LAB_SUBNET_POOL")
                subnets[name] = str(chosen)
                busy.append(chosen)
            lease = Lease(lab, subnets, pid, started, topology)
            leases[lab] = lease
            return lease

    def set_owner(self, lab: str, pid: int | None) -> None:
        """Hand the lab to another process, or to nobody (``None``: kept until destroyed)."""
        with self._locked() as leases:
            if lab in leases:
                started = psutil.Process(pid).create_time() if pid else None
                leases[lab].owner_pid, leases[lab].owner_started = pid, started

    def release(self, lab: str) -> None:
        with self._locked() as leases:
            leases.pop(lab, None)

    def claim_stale(self, lab: str | None = None) -> list[Lease]:
        """Take over, under the lock, the leases whose owner died (only ``lab``'s if given).

        Whoever removes a dead run's lab owns it first, so no other process can lease the
        name in between and have its fresh lab taken for leftovers.
        """
        pid, started = _me()
        claimed = []
        with self._locked() as leases:
            for lease in leases.values():
                if (lab is None or lease.lab == lab) and not lease.owner_alive():
                    lease.owner_pid, lease.owner_started = pid, started
                    claimed.append(lease)
        return claimed

    def stale(self) -> list[Lease]:
        return [lease for lease in self.all().values() if not lease.owner_alive()]
