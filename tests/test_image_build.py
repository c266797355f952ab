"""The image pipeline for real: a cold build from the Debian mirror into an empty cache, a warm
build that does nothing, and a changed package list that rebuilds only the image it feeds.

Needs root, mmdebstrap and the Debian mirror (through GANETI_LAB_DOWNLOAD_NETNS when the run
sits in an isolated network namespace, as under scripts/labrun). Without them the test skips;
--lab-required turns that skip into a failure, as CI runs it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lab.images import ImageStore, build_images, recipes
from lab.images import builder as builder_module
from lab.images import recipe as recipe_module
from lab.progress import Steps

EXTRA_SERVICE_PACKAGE = "tree"  # small, in bookworm main, not in any recipe


def _build_problem() -> str | None:
    if os.geteuid() != 0:
        return "image builds need root"
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap is not installed (scripts/host-setup installs it)"
    return None


@pytest.fixture
def builder_host(request: pytest.FixtureRequest) -> None:
    problem = _build_problem()
    if problem:
        if request.config.getoption("--lab-required"):
            pytest.fail(f"cannot build images (--lab-required): {problem}", pytrace=False)
        pytest.skip(problem)


def _steps() -> Steps:
    return Steps("images", quiet=True)


def test_cold_warm_and_partial_rebuild(builder_host: None, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store = ImageStore(tmp_path / "cache")

    cold = _steps()
    built = build_images(store, register=False, steps=cold)
    assert sorted(built) == ["hypervisor", "service"]
    assert any(step.startswith("mmdebstrap") for step in cold.durations)
    hypervisor, service = built["hypervisor"], built["service"]
    for image in (hypervisor, service):
        assert {p.name for p in image.path.iterdir()} >= {
            "box.img", "vmlinuz", "initrd.img", "manifest.json"}
    assert hypervisor.manifest["ganeti_versions"]["ganeti-3.0"].startswith("3.0.2")
    assert any(deb.startswith("ganeti-3.1_3.1") for deb in service.manifest["repo"]), \
        service.manifest["repo"]
    assert not list(store.root.glob(".*-*")), "a finished build left staging behind"
    # A new machine pays the cold build once: the session's cache takes these images when
    # it lacks them (this test runs before any test that needs a lab).
    session_cache = ImageStore()
    for name, recipe in recipes().items():
        session_cache.adopt(store, name, recipe.key())

    warm = _steps()
    again = build_images(store, register=False, steps=warm)
    assert warm.durations == {}, f"a warm cache did work: {list(warm.durations)}"
    assert {r: i.key for r, i in again.items()} == {r: i.key for r, i in built.items()}

    # One package list changes: the service image is rebuilt on the cached base; the base and
    # the hypervisor image are not touched.
    edited = tmp_path / "recipes"
    shutil.copytree(recipe_module.recipe_dir(), edited)
    with (edited / "service.packages").open("a") as f:
        f.write(f"\n{EXTRA_SERVICE_PACKAGE}\n")
    monkeypatch.setattr(recipe_module, "recipe_dir", lambda: edited)
    monkeypatch.setattr(builder_module, "recipe_dir", lambda: edited)
    keys = {name: r.key() for name, r in recipes().items()}
    assert keys["hypervisor"] == hypervisor.key and keys["service"] != service.key

    partial = _steps()
    rebuilt = build_images(store, register=False, steps=partial)
    assert {step.split(":")[0] for step in partial.durations} == {"service"}, partial.durations
    assert rebuilt["hypervisor"].key == hypervisor.key
    assert rebuilt["service"].key == keys["service"]
    assert EXTRA_SERVICE_PACKAGE in rebuilt["service"].manifest["packages"]
