"""The lazy-initialisation comparison's own arithmetic and its reading of `dumpe2fs`, on
filesystems made here by the real mkfs.ext4 (the lab measures on its nodes)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from lab.ganeti.jobs import JobOutcome
from lab.ganeti.lazy_init import Creation, Series, inode_tables

pytestmark = pytest.mark.skipif(not shutil.which("mkfs.ext4"), reason="needs e2fsprogs")


def _made(tmp_path: Path, init: str) -> str:
    image = tmp_path / "disk.img"
    image.unlink(missing_ok=True)
    subprocess.run(["truncate", "-s", "256M", str(image)], check=True)
    # nodiscard: on a file a discard zeroes, and mkfs would then call every table zeroed;
    # the lab's disks are block devices, where it does not.
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", f"nodiscard,{init}", str(image)], check=True)
    return subprocess.run(["dumpe2fs", str(image)], check=True, capture_output=True,
                          text=True).stdout


def test_inode_tables_read_from_a_lazy_and_an_eager_filesystem(tmp_path: Path) -> None:
    groups, zeroed = inode_tables(_made(tmp_path, "lazy_itable_init=1,lazy_journal_init=1"))
    # 256 MiB with 1 KiB blocks: 32 groups; the header's "Group descriptor size" is no group.
    assert (groups, zeroed) == (32, 0)
    assert inode_tables(_made(tmp_path, "lazy_itable_init=0,lazy_journal_init=0")) == (32, 32)


def _creation(run: float, written: float) -> Creation:
    outcome = JobOutcome("x", 1, 0.0, 0.1, status="success", run_seconds=run)
    return Creation("x", outcome, written, 8, 0)


def test_figures_compare_the_first_creation_with_the_ones_after_it() -> None:
    series = Series("lazy", "node1.lab", 256, "none",
                    [_creation(10.0, 1.0), _creation(14.0, 3.0), _creation(16.0, 2.0)],
                    idle_seconds=30.0, idle_written_mib=5.5, zeroed_after_idle=20,
                    groups_total=24)
    figures = series.figures()
    assert figures["first run s"] == 10.0
    assert figures["later runs median s"] == 15.0
    assert figures["later / first"] == 1.5
    assert figures["written per creation MiB"] == 2.0
    assert (figures["itables"], figures["itables zeroed after idle"]) == (24, 20)
    assert figures["failed"] == 0


def test_figures_of_a_single_creation_have_no_later_ones() -> None:
    figures = Series("eager", "node1.lab", 256, "unsafe", [_creation(9.0, 48.0)]).figures()
    assert figures["later runs median s"] is None and figures["later / first"] is None
