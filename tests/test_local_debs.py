"""A contributor's Ganeti packages (--ganeti-debs): read and checked on the host before anything
is built or changed, and keyed into the hypervisor image. The real layered build is in
tests/test_image_build.py."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from lab.cli import main
from lab.images import recipes
from lab.images.local_debs import LocalDebs, LocalDebsError, check_lab_reuse, record_in_lab

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")


def make_deb(directory: Path, package: str, version: str = "3.0.2-3+lab1",
             architecture: str = "all", content: str = "local build\n") -> Path:
    """A real (tiny) Debian package, built with dpkg-deb."""
    tree = directory.parent / f".tree-{package}-{architecture}"
    (tree / "DEBIAN").mkdir(parents=True, exist_ok=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: {architecture}\n"
        "Maintainer: lab <lab@example.invalid>\nDescription: test package\n")
    (tree / "usr" / "share" / "doc" / package).mkdir(parents=True, exist_ok=True)
    (tree / "usr" / "share" / "doc" / package / "LOCAL").write_text(content)
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{package}_{version}_{architecture}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(out)], check=True,
                   capture_output=True)
    shutil.rmtree(tree)
    return out


def test_a_directory_of_ganeti_packages_is_read(tmp_path: Path) -> None:
    debs_dir = tmp_path / "debs"
    make_deb(debs_dir, "ganeti-3.0")
    make_deb(debs_dir, "ganeti-haskell-3.0", architecture="amd64")
    make_deb(debs_dir, "python3-lab-helper")  # other packages may come along
    (debs_dir / "README").write_text("not a package, not read")
    debs = LocalDebs.load(debs_dir)
    assert [(d.package, d.version, d.architecture) for d in debs.debs] == [
        ("ganeti-3.0", "3.0.2-3+lab1", "all"), ("ganeti-haskell-3.0", "3.0.2-3+lab1", "amd64"),
        ("python3-lab-helper", "3.0.2-3+lab1", "all")]
    assert len(debs.digest) == 64
    described = debs.describe()
    assert described["sha256"] == debs.digest
    assert {d["package"] for d in described["debs"]} == {  # type: ignore[attr-defined]
        "ganeti-3.0", "ganeti-haskell-3.0", "python3-lab-helper"}
    assert debs.summary().startswith("ganeti-3.0 3.0.2-3+lab1")


def test_the_key_covers_the_packages_content_not_their_place(tmp_path: Path) -> None:
    one = LocalDebs.load(make_deb(tmp_path / "one", "ganeti-3.0").parent)
    moved = shutil.copytree(tmp_path / "one", tmp_path / "elsewhere")
    other = LocalDebs.load(make_deb(tmp_path / "two", "ganeti-3.0", content="fixed\n").parent)
    stock = recipes()
    layered = recipes(local_debs=one)
    assert layered["hypervisor"].key() != stock["hypervisor"].key()
    # The base and the service image are not layered: their keys stay.
    assert layered["base"].key() == stock["base"].key()
    assert layered["service"].key() == stock["service"].key()
    assert recipes(local_debs=LocalDebs.load(moved))["hypervisor"].key() == \
        layered["hypervisor"].key()
    assert recipes(local_debs=other)["hypervisor"].key() != layered["hypervisor"].key()
    # Without packages the stock key is what it always was.
    assert recipes(local_debs=None)["hypervisor"].key() == stock["hypervisor"].key()


@pytest.mark.parametrize(("setup", "message"), [
    (lambda d: None, r"--ganeti-debs .*/debs: no such directory"),
    (lambda d: d.mkdir(), r"--ganeti-debs .*/debs: no \.deb files in it"),
    (lambda d: (d.mkdir(), (d / "ganeti-3.0_1_all.deb").write_text("junk")),
     r"ganeti-3.0_1_all\.deb is not a Debian package"),
    (lambda d: make_deb(d, "hello-lab"),
     r"no Ganeti package among its \.deb files \(hello-lab\); expected ganeti or ganeti-\*"),
    (lambda d: make_deb(d, "ganeti-3.0", architecture="arm64"),
     r"ganeti-3.0_3.0.2-3\+lab1_arm64\.deb is built for arm64"),
    (lambda d: (make_deb(d, "ganeti-3.0"), make_deb(d, "ganeti-3.0", "3.0.2-4")),
     r"package ganeti-3.0 twice"),
])
def test_a_directory_that_cannot_serve_is_refused_by_name(tmp_path: Path, setup: object,
                                                          message: str) -> None:
    setup(tmp_path / "debs")  # type: ignore[operator]
    with pytest.raises(LocalDebsError, match=message) as info:
        LocalDebs.load(tmp_path / "debs")
    assert "fix:" in str(info.value)


def test_the_cli_refuses_bad_packages_before_building_or_creating_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GANETI_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GANETI_LAB_STATE", str(tmp_path / "state"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["images", "build", "--ganeti-debs", str(empty)]) == 2
    assert "no .deb files in it" in capsys.readouterr().err
    assert main(["up", "--topology", "tiny", "--name", "debs-refused",
                 "--ganeti-debs", str(empty)]) == 2
    assert "no .deb files in it" in capsys.readouterr().err
    # Nothing was made: no image, no staging, no lab state, no lease.
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").rglob("*.json"))


def test_pytest_refuses_bad_packages_as_a_usage_error(pytester: pytest.Pytester,
                                                     tmp_path: Path) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess(f"--ganeti-debs={tmp_path / 'none'}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--ganeti-debs */none: no such directory*"])


def test_a_lab_is_reused_only_with_the_packages_it_was_built_with(tmp_path: Path) -> None:
    debs = LocalDebs.load(make_deb(tmp_path / "debs", "ganeti-3.0").parent)
    other = LocalDebs.load(make_deb(tmp_path / "other", "ganeti-3.0", content="x\n").parent)
    stock_lab, layered_lab = tmp_path / "lab-a", tmp_path / "lab-b"
    stock_lab.mkdir()
    layered_lab.mkdir()
    record_in_lab(stock_lab, None)
    record_in_lab(layered_lab, debs)
    assert json.loads((layered_lab / "ganeti-debs.json").read_text())["sha256"] == debs.digest
    check_lab_reuse("a", stock_lab, None)
    check_lab_reuse("b", layered_lab, debs)
    with pytest.raises(LocalDebsError, match=r"lab a was built with Debian's Ganeti; this run "
                                             r"asks for local Ganeti packages"):
        check_lab_reuse("a", stock_lab, debs)
    with pytest.raises(LocalDebsError, match=r"lab b was built with local Ganeti packages "
                                             r"\(sha256 [0-9a-f]{12}\); this run asks for "
                                             r"Debian's Ganeti"):
        check_lab_reuse("b", layered_lab, None)
    with pytest.raises(LocalDebsError, match="ganeti-lab destroy b"):
        check_lab_reuse("b", layered_lab, other)

