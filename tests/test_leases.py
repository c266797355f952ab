"""Tests for lab.leases: subnet leases under a file lock, owners, stale labs."""

from __future__ import annotations

import ipaddress
import json
import multiprocessing
import os
import subprocess
from pathlib import Path

import pytest

from lab import leases
from lab.errors import LabError
from lab.leases import LeaseBook

POOL = "10.250.0.0/22"
AUTO: dict[str, ipaddress.IPv4Network | None] = {"mgmt": None, "lab": None}


@pytest.fixture
def book(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LeaseBook:
    monkeypatch.setenv("GANETI_LAB_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("GANETI_LAB_SUBNET_POOL", POOL)
    # The host's own routes must not decide which subnets the tests get.
    monkeypatch.setattr(leases, "_routes", lambda: [])
    return LeaseBook()


def nets(lease: leases.Lease) -> list[ipaddress.IPv4Network]:
    return [ipaddress.IPv4Network(s) for s in lease.subnets.values()]


@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_book_lives_in_the_state_dir(book: LeaseBook, tmp_path: Path) -> None:
    assert book.path == tmp_path / "state" / "leases.json"
    book.acquire("a", AUTO, "default")
    data = json.loads(book.path.read_text())
    assert set(data) == {"a"}
    assert data["a"]["owner_pid"] == os.getpid()
    assert data["a"]["topology"] == "default"


def test_two_labs_get_distinct_subnets_from_the_pool(book: LeaseBook) -> None:
    a = book.acquire("a", AUTO, "default")
    b = book.acquire("b", AUTO, "default")
    assert set(a.subnets) == set(b.subnets) == {"mgmt", "lab"}
    pool = ipaddress.IPv4Network(POOL)
    all_nets = nets(a) + nets(b)
    assert len(all_nets) == 4
    for i, n in enumerate(all_nets):
        assert n.prefixlen == 24
        assert n.subnet_of(pool)
        for other in all_nets[i + 1:]:
            assert not n.overlaps(other), (n, other)
    # The pool is used from its start, in order.
    assert a.subnets == {"mgmt": "10.250.0.0/24", "lab": "10.250.1.0/24"}
    assert b.subnets == {"mgmt": "10.250.2.0/24", "lab": "10.250.3.0/24"}


def test_reacquiring_returns_the_same_subnets(book: LeaseBook) -> None:
    first = book.acquire("a", AUTO, "default")
    book.acquire("b", AUTO, "default")
    again = book.acquire("a", AUTO, "default")
    assert again.subnets == first.subnets
    assert again.owner_pid == os.getpid()
    assert set(book.all()) == {"a", "b"}
    # A fresh book on the same file sees the same lease.
    assert LeaseBook().get("a").subnets == first.subnets


def test_released_subnets_are_reused(book: LeaseBook) -> None:
    a = book.acquire("a", AUTO, "default")
    book.release("a")
    assert book.get("a") is None
    assert book.acquire("c", AUTO, "default").subnets == a.subnets


def test_routed_subnets_are_avoided(book: LeaseBook, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leases, "_routes", lambda: [ipaddress.IPv4Network("10.250.0.0/23")])
    a = book.acquire("a", AUTO, "default")
    assert a.subnets == {"mgmt": "10.250.2.0/24", "lab": "10.250.3.0/24"}


def test_lab_owned_by_another_live_process_is_refused(
    book: LeaseBook, sleeper: subprocess.Popen
) -> None:
    first = book.acquire("a", AUTO, "default")
    book.set_owner("a", sleeper.pid)
    with pytest.raises(LabError) as info:
        book.acquire("a", AUTO, "default")
    message = str(info.value)
    assert f"lab 'a' is in use by process {sleeper.pid}" in message
    assert "fix: choose another name" in message
    # The refusal changed nothing.
    lease = book.get("a")
    assert lease.owner_pid == sleeper.pid
    assert lease.subnets == first.subnets
    assert book.stale() == []


def test_lease_of_a_dead_owner_is_stale_and_can_be_taken_over(book: LeaseBook) -> None:
    book.acquire("alive", AUTO, "default")
    book.acquire("dead", AUTO, "default")
    proc = subprocess.Popen(["sleep", "60"])
    try:
        book.set_owner("dead", proc.pid)
        assert book.stale() == []
    finally:
        proc.kill()
        proc.wait()  # reaped: the pid no longer exists
    stale = book.stale()
    assert [lease.lab for lease in stale] == ["dead"]
    assert stale[0].owner_pid == proc.pid
    # Re-acquiring a stale lab takes it over with the same subnets.
    subnets = stale[0].subnets
    taken = book.acquire("dead", AUTO, "default")
    assert taken.owner_pid == os.getpid()
    assert taken.subnets == subnets
    assert book.stale() == []


def test_owner_with_a_reused_pid_is_not_alive(book: LeaseBook) -> None:
    book.acquire("a", AUTO, "default")
    data = json.loads(book.path.read_text())
    data["a"]["owner_started"] -= 3600  # same pid, but a process started an hour earlier
    book.path.write_text(json.dumps(data))
    assert [lease.lab for lease in book.stale()] == ["a"]


def test_kept_lab_is_never_stale(book: LeaseBook) -> None:
    book.acquire("kept", AUTO, "default")
    book.set_owner("kept", None)
    lease = book.get("kept")
    assert (lease.owner_pid, lease.owner_started) == (None, None)
    assert lease.owner_alive()
    assert book.stale() == []
    # Its subnets stay leased.
    other = book.acquire("other", AUTO, "default")
    assert not set(other.subnets.values()) & set(lease.subnets.values())


def test_pool_exhaustion_names_the_pool_and_the_fix(
    book: LeaseBook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GANETI_LAB_SUBNET_POOL", "10.250.0.0/23")  # two /24s: one lab
    book.acquire("a", AUTO, "default")
    with pytest.raises(LabError) as info:
        book.acquire("b", AUTO, "default")
    message = str(info.value)
    assert "no free /24 left in 10.250.0.0/23 for lab 'b'" in message
    assert "ganeti-lab destroy --stale" in message
    assert "GANETI_LAB_SUBNET_POOL" in message
    assert book.get("b") is None


def test_invalid_pool_is_reported(book: LeaseBook, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GANETI_LAB_SUBNET_POOL", "10.250.0.0/99")
    with pytest.raises(LabError, match=r"GANETI_LAB_SUBNET_POOL='10\.250\.0\.0/99'"):
        book.acquire("a", AUTO, "default")


def test_explicit_subnet_is_used(book: LeaseBook) -> None:
    fixed = ipaddress.IPv4Network("10.99.0.0/24")
    lease = book.acquire("a", {"mgmt": fixed, "lab": None}, "custom")
    assert lease.subnets == {"mgmt": "10.99.0.0/24", "lab": "10.250.0.0/24"}


def test_explicit_subnet_leased_by_another_lab_is_refused(book: LeaseBook) -> None:
    a = book.acquire("a", AUTO, "default")
    clash = ipaddress.IPv4Network("10.250.0.0/23")  # covers a's mgmt and lab subnets
    with pytest.raises(LabError) as info:
        book.acquire("b", {"mgmt": None, "lab": clash}, "custom")
    message = str(info.value)
    assert "subnet 10.250.0.0/23 of network lab is leased by another lab" in message
    for subnet in a.subnets.values():
        assert subnet in message
    assert 'subnet = "auto"' in message
    assert book.get("b") is None


def test_auto_subnet_avoids_an_explicit_subnet_of_the_same_lab(book: LeaseBook) -> None:
    fixed = ipaddress.IPv4Network("10.250.0.0/24")  # the first /24 of the pool
    lease = book.acquire("a", {"mgmt": None, "lab": fixed}, "custom")
    assert not nets(lease)[0].overlaps(nets(lease)[1]), lease.subnets


# Concurrency -----------------------------------------------------------------------------------


def _acquire_in_child(state: str, pool: str, names: list[str], start, out) -> None:
    os.environ["GANETI_LAB_STATE"] = state
    os.environ["GANETI_LAB_SUBNET_POOL"] = pool
    from lab import leases as child_leases

    child_leases._routes = lambda: []
    start.wait(timeout=60)
    book = child_leases.LeaseBook()
    for name in names:
        lease = book.acquire(name, {"mgmt": None, "lab": None}, "default")
        out.put((name, lease.subnets))


def test_concurrent_acquisition_from_several_processes(book: LeaseBook, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    pool = "10.250.0.0/20"  # 16 /24s: exactly 4 processes x 2 labs x 2 networks
    start = ctx.Barrier(4)
    out = ctx.Queue()
    names = {i: [f"p{i}a", f"p{i}b"] for i in range(4)}
    procs = [
        ctx.Process(target=_acquire_in_child,
                    args=(str(tmp_path / "state"), pool, names[i], start, out))
        for i in range(4)
    ]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in range(8))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert set(results) == {n for ns in names.values() for n in ns}
    subnets = [ipaddress.IPv4Network(s) for r in results.values() for s in r.values()]
    assert len(subnets) == 16
    assert len(set(subnets)) == 16, "two labs were given the same subnet"
    assert all(s.subnet_of(ipaddress.IPv4Network(pool)) for s in subnets)
    # No lease was lost to a racing write.
    on_disk = LeaseBook().all()
    assert set(on_disk) == set(results)
    assert {n: lease.subnets for n, lease in on_disk.items()} == results
