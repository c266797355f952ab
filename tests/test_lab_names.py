"""Lab names are checked at every entry, and a lab only ever removes what is its own: its state
directory (never a path a name could climb to), its libvirt objects (never another lab's whose
name starts the same), and nothing of a lab whose owner process is alive unless forced."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import psutil
import pytest

from lab import cli, virt
from lab import lab as lab_module
from lab.errors import LabError
from lab.leases import LeaseBook
from lab.names import name_problem, validate_lab_name
from lab.paths import lab_dir, object_prefix, owner_of
from lab.session import LabSession

BAD_NAMES = ["", ".", "..", "/", "/etc", "a/b", "../x", " a", "a ", "a b", "a\n", "x\n",
             "\tx", "x--y", "x-", "-x", "A", "lab_1", "ä", "x" * 32, "1lab"]
GOOD_NAMES = ["x", "x-2", "default", "default-gw0", "bug-1275", "a" * 31]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_lab_names_are_refused(name: str) -> None:
    assert name_problem(name) is not None
    with pytest.raises(LabError, match="invalid lab name"):
        validate_lab_name(name)


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_lab_names_are_accepted(name: str) -> None:
    assert name_problem(name) is None
    assert validate_lab_name(name) == name


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A throw-away state directory holding another lab, with files beside and above it."""
    root = tmp_path / "state"
    monkeypatch.setenv("GANETI_LAB_STATE", str(root))
    other = root / "labs" / "other"
    other.mkdir(parents=True)
    (other / "lab.json").write_text("{}")
    (root / "leases.json").write_text(json.dumps({}))
    (tmp_path / "outside.txt").write_text("not the lab's")
    return root


def _everything(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_destroy_with_a_bad_name_touches_nothing(name: str, state: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    before = _everything(state.parent)
    with pytest.raises(LabError, match="invalid lab name"):
        lab_module.destroy(name)
    if name.startswith("-"):  # argparse takes it for an option and stops there
        with pytest.raises(SystemExit):
            cli.main(["destroy", name])
    else:
        assert cli.main(["destroy", name]) == 2
        err = capsys.readouterr().err
        assert "invalid lab name" in err and "Traceback" not in err
    assert _everything(state.parent) == before


def test_a_state_path_that_resolves_outside_is_refused(state: Path, tmp_path: Path) -> None:
    (state / "labs" / "escape").symlink_to(tmp_path)
    with pytest.raises(LabError, match="outside"):
        lab_dir("escape")
    assert (tmp_path / "outside.txt").exists()


def test_object_names_belong_to_exactly_one_lab() -> None:
    x, x2 = object_prefix("x"), object_prefix("x-2")
    assert not x2.startswith(x) and not x.startswith(x2)
    assert owner_of(f"{x}node1") == "x"
    assert owner_of(f"{x2}node1") == "x-2"
    assert owner_of(f"{x}node1-vdb.qcow2") == "x"
    assert owner_of(f"{object_prefix('default-gw0')}mgmt") == "default-gw0"
    assert owner_of(f"{object_prefix('default')}mgmt") == "default"
    # Not in the grammar: no lab owns these, so they are orphans (or not ours at all).
    for name in ("glab-x-node1", "glab-", "glab---node1", "ganeti-lab-hypervisor-k_box.img"):
        assert owner_of(name) is None


# Ownership -------------------------------------------------------------------------------------


@pytest.fixture
def owner() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


def _lease_for(name: str, pid: int | None) -> None:
    book = LeaseBook()
    book.acquire(name, {"mgmt": None, "lab": None}, "tiny")
    try:
        book.set_owner(name, pid)
    except psutil.NoSuchProcess:  # a dead owner, as a killed run leaves it
        path = book.path
        data = json.loads(path.read_text())
        data[name]["owner_pid"], data[name]["owner_started"] = pid, 1.0
        path.write_text(json.dumps(data))
    lab_dir(name).mkdir(parents=True, exist_ok=True)
    (lab_dir(name) / "lab.json").write_text("{}")


def test_a_lab_with_a_live_owner_is_not_destroyed(state: Path, owner: subprocess.Popen[bytes],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _lease_for("busy", owner.pid)
    with pytest.raises(lab_module.LabInUse, match=f"in use by process {owner.pid}") as err:
        lab_module.destroy("busy")
    assert "--force" in str(err.value)
    assert cli.main(["destroy", "busy"]) == 2
    assert "in use by process" in capsys.readouterr().err
    assert LeaseBook().get("busy") is not None and lab_dir("busy").is_dir()


def test_a_fresh_session_does_not_take_a_live_lab(state: Path,
                                                  owner: subprocess.Popen[bytes]) -> None:
    _lease_for("busy", owner.pid)
    for reuse in (False, True):
        with pytest.raises(lab_module.LabInUse):
            LabSession("tiny", "busy", reuse=reuse, keep="never").start()
    lease = LeaseBook().get("busy")
    assert lease is not None and lease.owner_pid == owner.pid


def test_stale_leases_are_claimed_under_the_lock(state: Path,
                                                 owner: subprocess.Popen[bytes]) -> None:
    _lease_for("alive", owner.pid)
    _lease_for("kept", None)
    dead = subprocess.Popen(["true"])
    dead.wait()
    _lease_for("dead", dead.pid)
    claimed = LeaseBook().claim_stale()
    assert [lease.lab for lease in claimed] == ["dead"]
    leases = LeaseBook().all()
    assert leases["dead"].owner_pid == os.getpid()  # ours now: nobody else can lease it
    assert leases["alive"].owner_pid == owner.pid
    assert leases["kept"].owner_pid is None
    assert LeaseBook().claim_stale() == []


def test_destroy_all_leaves_a_live_lab_alone(state: Path, owner: subprocess.Popen[bytes],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`destroy --all` (what .ci/run starts with) removes kept labs but not one a live run
    owns; --force removes that too. Labs of the host's other state directories are spared."""
    try:
        with virt.connect():
            pass
    except LabError as exc:
        pytest.skip(f"needs libvirt: {exc}")
    _lease_for("busy", owner.pid)
    _lease_for("kept", None)
    assert cli.main(["destroy", "--all"]) == 1
    out = capsys.readouterr()
    assert "lab busy: left alone" in out.err and "--force" in out.err
    assert "lab kept: removed" in out.out
    assert set(LeaseBook().all()) == {"busy"}
    assert cli.main(["destroy", "--all", "--force"]) == 0
    assert LeaseBook().all() == {}
    assert not (state / "labs" / "busy").exists()
