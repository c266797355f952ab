"""A contributor's path: plain `vagrant up` / `vagrant ssh` with the project's Vagrantfile boots
the baked boxes under the detected accelerator and logs in with the lab's own key."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lab import virt
from lab.images import ImageStore
from lab.lab import destroy
from lab.leases import LeaseBook

NAME = "plain-vagrant"


def _env_from_prepare() -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "lab.cli", "prepare", "--topology", "tiny", "--name", NAME],
        check=True, capture_output=True, text=True).stdout
    env = dict(os.environ)
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    return env


@pytest.mark.nightly
def test_plain_vagrant_up_and_ssh(lab_host: ImageStore) -> None:
    destroy(NAME)
    env = _env_from_prepare()
    assert env["GANETI_LAB_PLAN"].endswith("lab.json")
    try:
        up = subprocess.run(["vagrant", "up"], env=env, capture_output=True, text=True,
                            timeout=1800)
        readable = [line for line in (up.stdout + up.stderr).splitlines()
                    if ".rb:" not in line and " -- " not in line]
        assert up.returncode == 0, "\n".join(readable[-40:])
        ssh = subprocess.run(["vagrant", "ssh", "node1", "-c", "hostname; id -un"], env=env,
                             capture_output=True, text=True, timeout=300)
        assert ssh.returncode == 0, ssh.stderr
        assert ssh.stdout.split() == ["node1", "root"]
        status = subprocess.run(["vagrant", "status", "--machine-readable"], env=env,
                                capture_output=True, text=True, timeout=300).stdout
        assert status.count(",state,running") == 2
    finally:
        destroy(NAME)
    assert virt.find(NAME).empty()
    assert LeaseBook().get(NAME) is None
