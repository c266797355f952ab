"""The lab-state cache: keys, whole and broken entries, and on real tiny labs a miss (boot and
bootstrap, both states stored), a hit (a second lab starts from them: no boot, the same
cluster) and a corrupt entry (detected, never used, rebuilt)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import statecache, topology, virt
from lab.bringup import bring_up
from lab.ganeti.bootstrap import BOOTED_SNAPSHOT, ensure_layout, layout_snapshot
from lab.images import ImageStore
from lab.lab import Lab, destroy
from lab.spec import plan


@pytest.fixture
def cache_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "states"
    monkeypatch.setenv(statecache.ENV, "on")
    monkeypatch.setenv(statecache.DIR_ENV, str(root))
    yield root
    shutil.rmtree(root, ignore_errors=True)  # gigabytes: not kept with pytest's tmp dirs


def _lab(tmp_path: Path, name: str, subnets: tuple[str, str], topo: str = "tiny") -> Lab:
    t = topology.load(topo)
    nets = dict(zip((n.name for n in t.networks), subnets, strict=True))
    directory = tmp_path / name
    directory.mkdir()
    p = plan(t, name, nets, directory / "id_ed25519", directory / "console", "qemu", "custom")
    p.save(directory / "lab.json")
    return Lab(directory, p)


SUBNETS = ("10.201.0.0/24", "10.201.1.0/24")
OTHER = ("10.201.7.0/24", "10.201.8.0/24")


def test_the_key_is_the_same_for_another_name_and_other_subnets(tmp_path: Path) -> None:
    a, b = _lab(tmp_path, "a", SUBNETS), _lab(tmp_path, "b", OTHER)
    assert statecache.state_key(a, "booted") == statecache.state_key(b, "booted")
    # ... but the entry is bound to its subnets: the guests keep their addresses in memory.
    assert statecache.entry_dir(a, "booted").name != statecache.entry_dir(b, "booted").name


def test_the_key_changes_with_what_decides_the_state(tmp_path: Path) -> None:
    a, big = _lab(tmp_path, "a", SUBNETS), _lab(tmp_path, "big", SUBNETS, "default")
    assert statecache.state_key(a, "booted") != statecache.state_key(big, "booted")
    assert statecache.state_key(a, "booted") != statecache.state_key(a, "cluster-single-3.0")
    assert statecache.state_key(a, "x") != statecache.state_key(a, "x", patch="abc")
    # The layout's code (the bootstrap) is part of a cluster-ready state's key, not a booted's.
    assert statecache.state_key(a, "booted")["code"] != \
        statecache.state_key(a, "cluster-single-3.0")["code"]


def _fake_entry(root: Path, lab: Lab, body: bytes) -> statecache.Entry:
    path = statecache.entry_dir(lab, "booted")
    (path / "volumes").mkdir(parents=True)
    (path / "volumes" / "node1.img").write_bytes(body)
    manifest = {"state": "booted", "snapshot": "booted", "subnets": list(SUBNETS),
                "prefix": "glab-made--", "made_by": "made", "lab_dir": "/nowhere",
                "created": "2026-11-27T00:00:00+00:00", "domains": {}, "plan": {},
                "files": {"volumes/node1.img": {"size": 4, "xxh3": "0" * 32}}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return statecache.Entry(path, manifest)


def test_a_corrupt_entry_is_removed_before_the_lab_is_touched(
        cache_on: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lab = _lab(tmp_path, "a", SUBNETS)
    pool = tmp_path / "pool"
    pool.mkdir()
    monkeypatch.setattr(statecache, "_pool_dir", lambda: pool)
    entry = _fake_entry(cache_on, lab, b"data")  # its digest is not the manifest's
    assert statecache.lookup(lab, "booted") is not None
    with pytest.raises(statecache.CorruptEntry, match=r"volumes/node1.img does not match"):
        statecache.start_from(entry, lab)
    assert not entry.path.exists()
    assert list(pool.iterdir()) == []  # the copy made on the way is gone too
    assert statecache.lookup(lab, "booted") is None


def test_half_written_entries_are_never_used_and_are_pruned(cache_on: Path, tmp_path: Path
                                                          ) -> None:
    lab = _lab(tmp_path, "a", SUBNETS)
    path = statecache.entry_dir(lab, "booted")
    (path / "volumes").mkdir(parents=True)  # no manifest: the writer died before the end
    assert statecache.lookup(lab, "booted") is None
    assert not path.exists()
    dead = cache_on / ".partial-999999999-x"
    dead.mkdir()
    (dead / "volume").write_bytes(b"x" * 10)
    alive = cache_on / f".partial-{os.getpid()}-y"
    alive.mkdir()
    assert statecache.entries() == []
    assert statecache.prune() == [(dead.name, 10)]
    assert alive.exists()  # being written by a live process


def test_the_cache_is_on_by_default_and_off_under_pytest(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    # The plugin's default, exported for the library and every `ganeti-lab` a test starts.
    assert os.environ[statecache.ENV] == "off" and not statecache.enabled()
    with statecache.setting("on"):
        assert statecache.enabled()
    assert not statecache.enabled()
    monkeypatch.delenv(statecache.ENV)
    assert statecache.enabled()  # `ganeti-lab up`, `cluster init`
    monkeypatch.setenv(statecache.ENV, "yes")
    with pytest.raises(Exception, match="neither on nor off"):
        statecache.enabled()


# On real labs ---------------------------------------------------------------------------------

NAMES = ("cache-a", "cache-b", "cache-c")


@pytest.fixture
def tiny_labs(lab_host: ImageStore) -> Iterator[list[Lab]]:
    made: list[Lab] = []
    for name in NAMES:
        destroy(name, force=True)
    try:
        yield made
    finally:
        for name in NAMES:
            destroy(name, force=True)
            assert virt.find(name).empty()


def _identity(lab: Lab) -> dict[str, str]:
    """What a boot and a bootstrap make anew each time: the node's boot id, the cluster's
    certificate."""
    node = lab.machine("node1")
    return {"boot": node.succeed("cat /proc/sys/kernel/random/boot_id").strip(),
            "cluster": node.run("sha256sum /var/lib/ganeti/server.pem").stdout.split(" ")[0]}


def test_a_second_lab_starts_from_the_cached_states(
        lab_host: ImageStore, cache_on: Path, tiny_labs: list[Lab]) -> None:
    tiny = topology.load("tiny")
    # A miss: the first lab boots and bootstraps, and both states are stored on the way.
    first = Lab.prepare(tiny, NAMES[0], lab_host)
    tiny_labs.append(first)
    bring_up(first)
    booted_id = _identity(first)
    assert booted_id["cluster"] == ""
    ensure_layout(first)
    layout = layout_snapshot(first, first.plan.default_layout)
    formed_id = _identity(first)
    states = sorted(e.state for e in statecache.entries())
    assert states == sorted([BOOTED_SNAPSHOT, layout])
    subnets = (first.plan.mgmt_subnet, first.plan.lab_subnet)
    first.destroy()

    # A hit: the second lab (another name, the same subnets) boots nothing and forms nothing.
    second = Lab.prepare(tiny, NAMES[1], lab_host)
    tiny_labs.append(second)
    assert (second.plan.mgmt_subnet, second.plan.lab_subnet) == subnets, \
        "the lease gave the second lab other subnets: nothing can be proven from the cache"
    bring_up(second)
    assert _identity(second) == booted_id  # the first lab's boot, not a new one
    clusters = ensure_layout(second)  # restored from the cache, then health-checked
    assert _identity(second) == formed_id
    (cluster,) = clusters.values()
    assert cluster.rapi.info()["name"] == cluster.plan.fqdn
    assert all(d.startswith(second.plan.prefix) for d in virt.find(NAMES[1]).domains)
    second.machine("node1").succeed("gnt-cluster verify")

    # A corrupt entry: detected on the way out, removed, never used; the lab boots, and its
    # booted state is stored again.
    booted = next(e for e in statecache.entries() if e.state == BOOTED_SNAPSHOT)
    volume = booted.file("volumes/node1.img")
    with open(volume, "r+b") as f:
        f.seek(volume.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    second.destroy()
    third = Lab.prepare(tiny, NAMES[2], lab_host)
    tiny_labs.append(third)
    bring_up(third)
    assert _identity(third)["boot"] != booted_id["boot"]
    ensure_layout(third)  # stores a new booted state, then starts from the cached cluster
    assert _identity(third)["cluster"] == formed_id["cluster"]
    rebuilt = [e for e in statecache.entries() if e.state == BOOTED_SNAPSHOT]
    assert len(rebuilt) == 1 and rebuilt[0].manifest["made_by"] == NAMES[2]


def test_a_lab_takes_the_machines_state_of_an_entry_and_keeps_its_own(tmp_path: Path) -> None:
    from lab.ganeti import patches

    lab = _lab(tmp_path, "a", SUBNETS)
    (lab.dir / "id_ed25519").write_text("the lab's own key")
    (lab.dir / patches._STATE).write_text("{}")  # the lab's Ganeti patch: its own choice
    (lab.dir / "accelerator").write_text("tcg: here")
    entry_path = tmp_path / "entry"
    (entry_path / "state" / "clusters" / "solo").mkdir(parents=True)
    (entry_path / "state" / "id_ed25519").write_text("the key the machines trust")
    (entry_path / "state" / "clusters" / "solo" / "rapi.json").write_text("{}")
    made = json.loads((lab.dir / "lab.json").read_text())
    for m in made["machines"]:
        m["cmdline"] = f"lab.key=theirs lab.hostname={m['name']}"
    statecache._adopt_state(statecache.Entry(entry_path, {"plan": made}), lab)
    assert (lab.dir / "id_ed25519").read_text() == "the key the machines trust"
    assert (lab.dir / "clusters" / "solo" / "rapi.json").exists()
    assert (lab.dir / patches._STATE).exists() and (lab.dir / "accelerator").exists()
    plan_now = json.loads((lab.dir / "lab.json").read_text())
    assert [m["cmdline"] for m in plan_now["machines"]] == \
        [f"lab.key=theirs lab.hostname={m['name']}" for m in made["machines"]]
    assert plan_now["lab"] == "a"


def test_a_cached_layout_never_replaces_a_lab_holding_snapshots_the_entry_lacks(
        cache_on: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lab.ganeti import bootstrap

    lab = _lab(tmp_path, "a", SUBNETS, "default")
    (lab.dir / "snapshots.json").write_text(json.dumps({
        name: {"name": name, "created": "2026-11-27T00:00:00+00:00", "seconds": 1.0,
               "machines": ["service"]} for name in (BOOTED_SNAPSHOT, "mine")}))
    entry = statecache.Entry(tmp_path, {"state": "x", "snapshots": [BOOTED_SNAPSHOT, "x"]})
    monkeypatch.setattr(statecache, "lookup", lambda *a, **kw: entry)
    taken: list[statecache.Entry] = []
    monkeypatch.setattr(statecache, "start_from", lambda e, lab: taken.append(e))
    assert bootstrap._from_state_cache(lab, "one-cluster", None) is None
    assert taken == []  # "mine" would have been lost: the layout is bootstrapped instead
