"""A `vagrant up` that stops making progress fails instead of waiting forever.

`vagrant` is replaced by a script that says one thing about node1 and then hangs, as the real
one did on a new machine (libvirt re-probing QEMU forever); libvirt itself is real, so the
watchdog reads real (absent) domain states. No lab is booted.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab import spec, topology, virt
from lab.errors import LabError
from lab.lab import Lab, lab_processes
from lab.paths import lab_dir


@pytest.fixture
def stuck_vagrant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "vagrant"
    stub.write_text("#!/bin/sh\necho '==> node1: Creating the domain'\nexec sleep 600\n")
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_a_bring_up_without_progress_is_stopped(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                stuck_vagrant: None) -> None:
    try:
        with virt.connect():
            pass
    except LabError as exc:
        pytest.skip(f"needs libvirt: {exc}")
    monkeypatch.setenv("GANETI_LAB_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("GANETI_LAB_STALL_SECONDS", "8")
    tiny = topology.load("tiny", host_memory_mib=1 << 20)
    directory = lab_dir("stall")
    directory.mkdir(parents=True)
    plan = spec.plan(tiny, "stall", {n.name: f"10.201.{250 + i}.0/24" for i, n in
                                     enumerate(tiny.networks)},
                     directory / "id_ed25519", directory / "console", "qemu", "custom")
    plan.save(directory / "lab.json")
    lab = Lab(directory, plan)
    with pytest.raises(LabError, match="made no progress for 8 s and was stopped") as err:
        lab._vagrant_up()
    report = str(err.value)
    assert "node1: absent; last: Creating the domain" in report
    assert "service: absent; last: nothing yet" in report
    assert not lab_processes("stall")  # the hung vagrant was ended, not left behind
