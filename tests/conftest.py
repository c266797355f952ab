"""Fixtures shared by the library's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import spec, topology
from lab.lab import Lab


@pytest.fixture
def planned_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lab:
    """A tiny lab's plan in a throw-away state directory; nothing of it exists in libvirt."""
    monkeypatch.setenv("GANETI_LAB_STATE", str(tmp_path / "state"))
    tiny = topology.load("tiny", host_memory_mib=1 << 20)
    plan = spec.plan(tiny, "t", {n.name: f"10.201.{i}.0/24" for i, n in
                                 enumerate(tiny.networks)},
                     tmp_path / "key", tmp_path / "console", "qemu", "custom")
    return Lab(tmp_path, plan)


LOCAL_SUFFIX = "+lab1"
LOCAL_MARKER = "usr/share/doc/ganeti-3.0/LAB-LOCAL-BUILD"


@pytest.fixture(scope="session")
def rebuilt_ganeti_debs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of "locally built" Ganeti 3.0 packages, as a contributor's --ganeti-debs:
    Debian's `ganeti` and `ganeti-3.0` rebuilt with the version suffix +lab1 and a marker file
    (/usr/share/doc/ganeti-3.0/LAB-LOCAL-BUILD), byte for byte the same on every run (fixed
    timestamps), so an image layered with them keeps its key. Downloads ~1 MB from the mirror
    (through GANETI_LAB_DOWNLOAD_NETNS when set)."""
    import os
    import re
    import subprocess

    from lab import shell
    from lab.images.builder import downloading

    work = tmp_path_factory.mktemp("ganeti-debs")
    download, out = work / "download", work / "debs"
    download.mkdir()
    out.mkdir()
    shell.run(downloading(["apt-get", "download", "-q", "ganeti", "ganeti-3.0"]),
              cwd=download, where="apt-get download (test packages)", timeout=600,
              hint="the host's APT needs Debian bookworm's lists (apt-get update)")
    epoch = {"SOURCE_DATE_EPOCH": "1700000000"}
    for deb in sorted(download.glob("*.deb")):
        tree = work / deb.stem
        subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
        control = tree / "DEBIAN" / "control"
        text = control.read_text()
        found = re.search(r"^Version: (\S+)$", text, re.MULTILINE)
        assert found, f"{deb.name}: no Version in its control file"
        version = found.group(1)
        text = text.replace(f"Version: {version}", f"Version: {version}{LOCAL_SUFFIX}")
        text = text.replace(f"ganeti-3.0 (= {version})",
                            f"ganeti-3.0 (= {version}{LOCAL_SUFFIX})")
        control.write_text(text)
        if "ganeti-3.0_" in deb.name:
            marker = tree / LOCAL_MARKER
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"ganeti-3.0 {version}{LOCAL_SUFFIX}, rebuilt by the lab's tests\n")
        subprocess.run(["find", str(tree), "-exec", "touch", "-h", "-d", "@1700000000", "{}",
                        "+"], check=True)
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "-b", str(tree), str(out)],
                       check=True, capture_output=True, env={**os.environ, **epoch})
    return out
