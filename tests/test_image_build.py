"""The image pipeline for real: a cold build from the Debian mirror into an empty cache, a warm
build that does nothing, a changed package list that rebuilds only the image it feeds, and a
contributor's Ganeti packages layered into a hypervisor image of their own (--ganeti-debs).

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
from lab.images.local_debs import LocalDebs
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


def test_local_ganeti_debs_are_layered_into_a_hypervisor_image_of_their_own(
        builder_host: None, tmp_path: Path, rebuilt_ganeti_debs: Path) -> None:
    debs = LocalDebs.load(rebuilt_ganeti_debs)
    assert sorted(d.package for d in debs.debs) == ["ganeti", "ganeti-3.0"]
    stock = recipes()
    layered_key = recipes(local_debs=debs)["hypervisor"].key()
    assert layered_key != stock["hypervisor"].key()
    store = ImageStore(tmp_path / "cache")
    # The base the cold build left in the session's cache: only the hypervisor image is built.
    if ImageStore().has("base", stock["base"].key()):
        store.adopt(ImageStore(), "base", stock["base"].key())

    steps = _steps()
    image = build_images(store, ("hypervisor",), register=False, steps=steps,
                         local_debs=debs)["hypervisor"]
    assert image.key == layered_key
    assert f"hypervisor: layer 2 local packages ({debs.summary()})" in steps.durations
    for deb in debs.debs:
        assert deb.version.endswith("+lab1"), deb
        assert image.manifest["packages"][deb.package] == deb.version
    assert image.manifest["ganeti_versions"]["ganeti-3.0"].endswith("+lab1")
    assert image.manifest["local_debs"]["sha256"] == debs.digest
    # Debian's Ganeti keeps its own image and key: a run without --ganeti-debs never gets this.
    assert not store.has("hypervisor", stock["hypervisor"].key())
    assert LocalDebs.load(rebuilt_ganeti_debs).digest == debs.digest
    # Built once: tests/test_ganeti_debs_lab.py boots a lab on it from the session's cache.
    ImageStore().adopt(store, "hypervisor", image.key)
