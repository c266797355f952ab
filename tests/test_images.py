"""Tests for lab.images: recipe cache keys, the image store, and a failing build step."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from lab import shell
from lab.errors import CommandFailed, LabError
from lab.images import builder
from lab.images import store as store_module
from lab.images.recipe import read_packages, recipe_dir, recipes
from lab.images.store import ImageStore
from lab.progress import Steps

KEY = "0123456789abcdef"


# Cache keys ------------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    copy = tmp_path / "r"
    shutil.copytree(recipe_dir(), copy)
    return copy


def keys(root: Path) -> dict[str, str]:
    return {name: r.key(root) for name, r in recipes(root).items()}


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_recipes_read_the_package_lists(root: Path) -> None:
    rs = recipes(root)
    assert set(rs) == {"base", "hypervisor", "service"}
    assert "ganeti" in rs["hypervisor"].packages
    assert "openssh-server" in rs["base"].packages
    assert "dnsmasq" in rs["service"].packages
    assert rs["hypervisor"].parent is rs["base"] and rs["service"].parent is rs["base"]
    assert not any(p.startswith("#") or not p for r in rs.values() for p in r.packages)


def test_read_packages_ignores_comments_and_blanks(tmp_path: Path) -> None:
    path = tmp_path / "x.packages"
    path.write_text("# header\n\nfoo\n  bar   # trailing comment\n#baz\n")
    assert read_packages(path) == ["foo", "bar"]


def test_keys_are_stable(root: Path) -> None:
    first = keys(root)
    assert keys(root) == first
    assert all(re.fullmatch("[0-9a-f]{16}", k) for k in first.values()), first
    assert len(set(first.values())) == 3
    # The copy has the same content as the packaged recipes, so the same keys.
    assert {n: r.key() for n, r in recipes().items()} == first


def test_comment_only_edit_changes_no_key(root: Path) -> None:
    before = keys(root)
    path = root / "hypervisor.packages"
    path.write_text(path.read_text().replace("# Ganeti", "# The Ganeti", 1) + "\n# note\n\n")
    assert read_packages(path) == list(recipes(root)["hypervisor"].packages)
    assert keys(root) == before


def test_package_order_does_not_change_the_key(root: Path) -> None:
    before = keys(root)
    path = root / "hypervisor.packages"
    path.write_text("\n".join(reversed(path.read_text().splitlines())) + "\n")
    assert keys(root) == before


def test_new_hypervisor_package_changes_only_the_hypervisor_key(root: Path) -> None:
    before = keys(root)
    append(root / "hypervisor.packages", "htop\n")
    after = keys(root)
    assert after["hypervisor"] != before["hypervisor"]
    assert after["base"] == before["base"]
    assert after["service"] == before["service"]


def test_hypervisor_setup_script_changes_only_the_hypervisor_key(root: Path) -> None:
    before = keys(root)
    append(root / "hypervisor-setup.sh", "true\n")
    after = keys(root)
    assert after["hypervisor"] != before["hypervisor"]
    assert (after["base"], after["service"]) == (before["base"], before["service"])


@pytest.mark.parametrize("edit", ["base.packages", "lab-firstboot", "base-setup.sh"])
def test_base_edits_change_every_key(root: Path, edit: str) -> None:
    before = keys(root)
    append(root / edit, "htop\n" if edit.endswith(".packages") else "# changed\n")
    after = keys(root)
    for name in ("base", "hypervisor", "service"):
        assert after[name] != before[name], name


def test_repo_packages_change_only_the_service_key(root: Path) -> None:
    before = keys(root)
    append(root / "repo.packages", "ganeti-doc/bookworm\n")
    after = keys(root)
    assert after["service"] != before["service"]
    assert after["base"] == before["base"]
    assert after["hypervisor"] == before["hypervisor"]
    assert "ganeti-doc/bookworm" in recipes(root)["service"].extra["repo"]


def test_inputs_describe_what_the_key_covers(root: Path) -> None:
    hv = recipes(root)["hypervisor"]
    inputs = hv.inputs(root)
    assert inputs["name"] == "hypervisor"
    assert inputs["parent"] == recipes(root)["base"].key(root)
    assert set(inputs["files"]) == {"hypervisor-setup.sh", "lab-os"}
    assert inputs["packages"] == sorted(hv.packages)
    json.dumps(inputs)  # the manifest stores it


# The store -------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "cache")


def leftovers(store: ImageStore) -> list[str]:
    """Everything in the cache except the build lock."""
    return sorted(p.name for p in store.root.iterdir() if p.name != ".build.lock")


def fake_image(store: ImageStore, role: str, key: str) -> Path:
    staging = store.staging(role, key)
    (staging / "box.img").write_bytes(b"x" * 100)
    return store.publish(staging, role, key, {"role": role, "key": key, "virtual_size_gib": 8})


def test_publish_is_a_rename_of_the_staging_dir(store: ImageStore) -> None:
    staging = store.staging("hypervisor", KEY)
    assert staging.parent == store.root and staging.name.startswith(f".hypervisor-{KEY}.")
    assert not store.has("hypervisor", KEY)
    (staging / "box.img").write_bytes(b"disk")
    final = store.publish(staging, "hypervisor", KEY, {"role": "hypervisor", "key": KEY})
    assert final == store.root / f"hypervisor-{KEY}"
    assert not staging.exists()
    assert (final / "box.img").read_bytes() == b"disk"
    assert json.loads((final / "manifest.json").read_text()) == {"role": "hypervisor", "key": KEY}
    assert store.has("hypervisor", KEY)
    assert leftovers(store) == [f"hypervisor-{KEY}"]


def test_publish_replaces_an_older_copy(store: ImageStore) -> None:
    fake_image(store, "service", KEY)
    staging = store.staging("service", KEY)
    (staging / "new").write_text("new")
    final = store.publish(staging, "service", KEY, {"role": "service", "key": KEY, "v": 2})
    assert sorted(p.name for p in final.iterdir()) == ["manifest.json", "new"]
    assert leftovers(store) == [f"service-{KEY}"]


def test_images_lists_published_images(store: ImageStore) -> None:
    assert store.images() == []
    fake_image(store, "hypervisor", KEY)
    fake_image(store, "service", "fedcba9876543210")
    store.staging("service", "1111111111111111")  # unfinished: not an image
    found = store.images()
    assert [(i.role, i.key) for i in found] == [
        ("hypervisor", KEY),
        ("service", "fedcba9876543210"),
    ]
    image = store.get("hypervisor", KEY)
    assert image == found[0]
    assert image.box_name == f"ganeti-lab-hypervisor-{KEY}"
    assert image.box_img == store.root / f"hypervisor-{KEY}" / "box.img"
    assert image.size_bytes == 100 + (image.path / "manifest.json").stat().st_size


def test_adopt_takes_a_missing_image_from_another_cache_once(store: ImageStore,
                                                            tmp_path: Path) -> None:
    built_elsewhere = ImageStore(tmp_path / "elsewhere")
    source = fake_image(built_elsewhere, "hypervisor", KEY)
    assert store.adopt(built_elsewhere, "hypervisor", KEY)
    adopted = store.get("hypervisor", KEY)
    assert (adopted.path / "box.img").stat().st_ino == (source / "box.img").stat().st_ino
    assert adopted.manifest == built_elsewhere.get("hypervisor", KEY).manifest
    assert leftovers(store) == [f"hypervisor-{KEY}"]
    assert not store.adopt(built_elsewhere, "hypervisor", KEY)  # already there: untouched


def test_adopt_of_a_missing_source_leaves_nothing(store: ImageStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        store.adopt(ImageStore(tmp_path / "empty"), "service", KEY)
    assert leftovers(store) == []


def test_get_of_a_missing_image_names_the_build_command(store: ImageStore) -> None:
    with pytest.raises(LabError) as info:
        store.get("hypervisor", KEY)
    message = str(info.value)
    assert f"image hypervisor-{KEY} is not in the cache {store.root}" in message
    assert "ganeti-lab images build" in message
    assert "GANETI_LAB_CACHE" in message


def test_get_ignores_a_directory_without_manifest(store: ImageStore) -> None:
    (store.root / f"hypervisor-{KEY}").mkdir()
    assert not store.has("hypervisor", KEY)
    with pytest.raises(LabError, match="not in the cache"):
        store.get("hypervisor", KEY)


def test_prune_keeps_what_is_asked(store: ImageStore) -> None:
    fake_image(store, "base", KEY)
    fake_image(store, "hypervisor", KEY)
    fake_image(store, "hypervisor", "aaaaaaaaaaaaaaaa")
    fake_image(store, "service", KEY)
    staging = store.staging("service", "bbbbbbbbbbbbbbbb")
    removed = store.prune({("base", KEY), ("hypervisor", KEY)})
    assert sorted(p.name for p in removed) == ["hypervisor-aaaaaaaaaaaaaaaa", f"service-{KEY}"]
    assert [(i.role, i.key) for i in store.images()] == [("base", KEY), ("hypervisor", KEY)]
    assert staging.exists(), "prune must not touch a build in progress"


def test_discard_stale_staging(store: ImageStore) -> None:
    fake_image(store, "hypervisor", KEY)
    a = store.staging("hypervisor", "aaaaaaaaaaaaaaaa")
    b = store.staging("base", KEY)
    (b / "rootfs.tar").write_bytes(b"partial")
    with store.lock():
        assert sorted(store.discard_stale_staging()) == sorted([a, b])
    assert leftovers(store) == [f"hypervisor-{KEY}"]


def fake_mounts(monkeypatch: pytest.MonkeyPatch, content: str) -> None:
    real_open = open

    def fake_open(file, *args, **kwargs):
        if str(file) == "/proc/mounts":
            return io.StringIO(content)
        return real_open(file, *args, **kwargs)

    # Only lab.images.store sees the fake /proc/mounts.
    monkeypatch.setattr(store_module, "open", fake_open, raising=False)


def test_discard_refuses_with_something_mounted_inside(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = store.staging("hypervisor", KEY)
    (staging / "rootfs" / "proc").mkdir(parents=True)
    target = staging.resolve() / "rootfs" / "proc"
    fake_mounts(monkeypatch, f"sysfs /sys sysfs rw 0 0\nproc {target} proc rw 0 0\n")
    with pytest.raises(LabError) as info:
        store.discard(staging)
    message = str(info.value)
    assert f"{target} is still mounted; not deleting {staging.resolve()}" in message
    assert f"umount -R {target}" in message
    assert (staging / "rootfs" / "proc").is_dir(), "nothing may be deleted"


def test_discard_ignores_a_mount_beside_the_staging_dir(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = store.staging("hypervisor", KEY)
    # Same prefix, different directory: not inside the staging dir.
    fake_mounts(monkeypatch, f"proc {staging.resolve()}-other/proc proc rw 0 0\n")
    store.discard(staging)
    assert not staging.exists()


def test_discard_removes_an_unmounted_dir(store: ImageStore) -> None:
    staging = store.staging("hypervisor", KEY)
    (staging / "rootfs" / "etc").mkdir(parents=True)
    (staging / "rootfs" / "etc" / "hostname").write_text("x")
    store.discard(staging)
    assert leftovers(store) == []


# The build pipeline ----------------------------------------------------------------------------


@pytest.fixture
def no_mounts(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record mount/umount/chroot instead of running them (the build would run them as root)."""
    calls: list[list[str]] = []
    real_run = shell.run

    def run(argv, **kwargs):
        args = [str(a) for a in argv]
        if args[:3] == ["ip", "netns", "exec"]:  # a download step (GANETI_LAB_DOWNLOAD_NETNS)
            args = args[4:]
        if args[0] in ("mount", "chroot"):
            calls.append(args)
            if args[0] == "chroot":
                raise CommandFailed(kwargs.get("where", "host"), " ".join(args), 100,
                                    "E: Unable to locate package ganeti")
            return subprocess.CompletedProcess(args, 0, "", "")
        return real_run(argv, **kwargs)

    class FakeSubprocess:
        @staticmethod
        def run(argv, **kwargs):
            calls.append([str(a) for a in argv])
            return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(shell, "run", run)
    monkeypatch.setattr(builder, "subprocess", FakeSubprocess)
    return calls


def test_failing_unpack_leaves_no_partial_image(
    store: ImageStore, tmp_path: Path, no_mounts: list[list[str]]
) -> None:
    if shutil.which("tar") is None:
        pytest.skip("needs tar")
    base_tar = tmp_path / "rootfs.tar"
    base_tar.write_bytes(b"this is not a tar archive\n" * 100)
    recipe = recipes()["hypervisor"]
    with pytest.raises(CommandFailed) as info:
        builder._build_role(store, recipe, KEY, base_tar, Steps("images", quiet=True))
    error = info.value
    assert error.where == "image build (hypervisor)"
    assert error.command.startswith("tar -xpf ")
    assert str(base_tar) in error.command
    assert error.returncode not in (0, None)
    assert "tar" in error.output_tail and error.output_tail.strip()
    message = str(error)
    assert "image build (hypervisor): `tar -xpf" in message
    assert "output tail:" in message
    # No image, no staging directory, and the build never got as far as mounting.
    assert not store.has("hypervisor", KEY)
    assert not store.path("hypervisor", KEY).exists()
    assert leftovers(store) == []
    assert no_mounts == []


def test_failing_package_install_unmounts_and_leaves_nothing(
    store: ImageStore, tmp_path: Path, no_mounts: list[list[str]]
) -> None:
    if not Path("/etc/resolv.conf").is_file():
        pytest.skip("the build copies the host's /etc/resolv.conf, and this host has none")
    # A base root filesystem that unpacks: only /etc, enough to reach the package install.
    base_tar = tmp_path / "rootfs.tar"
    with tarfile.open(base_tar, "w") as tar:
        info = tarfile.TarInfo("./etc")
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
    recipe = recipes()["hypervisor"]
    with pytest.raises(CommandFailed, match="Unable to locate package") as info_:
        builder._build_role(store, recipe, KEY, base_tar, Steps("images", quiet=True))
    assert info_.value.where == "image build (hypervisor)"
    commands = [c[0] for c in no_mounts]
    assert commands == ["mount", "chroot", "umount"], no_mounts
    assert no_mounts[-1][-1].endswith("/rootfs/proc")  # /proc unmounted despite the failure
    assert leftovers(store) == []


def test_download_steps_run_in_the_download_namespace(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GANETI_LAB_DOWNLOAD_NETNS", raising=False)
    assert builder.downloading(["chroot", "/r", "apt-get"]) == ["chroot", "/r", "apt-get"]
    monkeypatch.setenv("GANETI_LAB_DOWNLOAD_NETNS", "glab-hostnet")
    assert builder.downloading(["chroot", "/r", "apt-get"]) == [
        "ip", "netns", "exec", "glab-hostnet", "chroot", "/r", "apt-get"]


def test_build_images_needs_root(store: ImageStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(LabError) as info:
        builder.build_images(store, register=False, steps=Steps("images", quiet=True))
    message = str(info.value)
    assert "needs root" in message
    assert "sudo ganeti-lab images build" in message
    assert leftovers(store) == [], "nothing may be touched before the root check"


def test_build_images_rejects_unknown_role(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(LabError, match=r"unknown image role\(s\): storage"):
        builder.build_images(store, ("hypervisor", "storage"), register=False,
                             steps=Steps("images", quiet=True))
    assert leftovers(store) == []


def test_warm_cache_builds_nothing(store: ImageStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    ks = {name: r.key() for name, r in recipes().items()}
    for role in ("base", "hypervisor", "service"):
        fake_image(store, role, ks[role])

    def no_build(*args, **kwargs):
        raise AssertionError("a warm cache must not build")

    monkeypatch.setattr(builder, "_build_base", no_build)
    monkeypatch.setattr(builder, "_build_role", no_build)
    built = builder.build_images(store, register=False, steps=Steps("images", quiet=True))
    assert {r: (i.role, i.key) for r, i in built.items()} == {
        "hypervisor": ("hypervisor", ks["hypervisor"]),
        "service": ("service", ks["service"]),
    }

