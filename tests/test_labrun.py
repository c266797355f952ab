"""scripts/labrun never stops a libvirt daemon it did not start.

The host's tools are replaced by recording stand-ins (``ip``, ``pgrep``) in PATH, so the test
sees exactly which commands labrun would run against a daemon living outside its namespace.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

LABRUN = Path(__file__).resolve().parent.parent / "scripts" / "labrun"


def _tool(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" f'echo "{name} $*" >> "$CALLS"\n' + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def daemon() -> Iterator[subprocess.Popen[bytes]]:
    """Stands in for a libvirtd running in another namespace (only its pid is used)."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def host(tmp_path: Path, daemon: subprocess.Popen[bytes]) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _tool(bin_dir, "pgrep", f'case "$*" in *libvirtd*) echo {daemon.pid};; esac\nexit 0\n')
    _tool(bin_dir, "ip", 'case "$*" in\n'
                         '  "netns list") echo "labtest"; echo "labtest-hostnet";;\n'
                         f'  "netns identify {daemon.pid}") echo "elsewhere";;\n'
                         "esac\nexit 0\n")
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "CALLS": str(tmp_path / "calls"), "GANETI_LAB_NETNS": "labtest",
            "GANETI_LAB_RUN_DIR": str(tmp_path / "run")}


@pytest.mark.skipif(os.geteuid() != 0, reason="labrun's namespace set-up needs root")
def test_a_foreign_daemon_is_left_alone_and_the_fix_named(
        host: dict[str, str], daemon: subprocess.Popen[bytes]) -> None:
    run = subprocess.run(["bash", str(LABRUN), "true"], env=host, capture_output=True,
                         text=True, timeout=60)
    calls = Path(host["CALLS"]).read_text()
    assert run.returncode == 2, run.stderr
    assert f"libvirtd (pid {daemon.pid}) runs in namespace elsewhere" in run.stderr
    assert "labrun did not start it" in run.stderr
    assert "GANETI_LAB_NETNS=none" in run.stderr
    assert daemon.poll() is None                    # never signalled
    assert "exec labtest libvirtd" not in calls     # and no second daemon was started


@pytest.mark.skipif(os.geteuid() != 0, reason="labrun's namespace set-up needs root")
def test_a_daemon_labrun_started_elsewhere_is_moved(
        host: dict[str, str], daemon: subprocess.Popen[bytes]) -> None:
    run_dir = Path(host["GANETI_LAB_RUN_DIR"])
    run_dir.mkdir()
    (run_dir / "other.libvirtd.pid").write_text(f"{daemon.pid}\n")
    run = subprocess.run(["bash", str(LABRUN), "true"], env=host, capture_output=True,
                         text=True, timeout=60)
    calls = Path(host["CALLS"]).read_text()
    assert "started by labrun in namespace elsewhere, moves to labtest" in run.stderr
    assert daemon.wait(timeout=10) is not None      # ours: stopped, then started inside
    assert "ip netns exec labtest libvirtd -d" in calls
