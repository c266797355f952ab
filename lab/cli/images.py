"""`ganeti-lab images build|list|prune`: the content-addressed image cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from lab.cli.common import console, ganeti_debs_option, local_debs
from lab.images import Image, ImageStore, build_images
from lab.images.recipe import recipes
from lab.images.store import unregister_box, vagrant_boxes


def cmd_images_build(args: argparse.Namespace) -> int:
    store = ImageStore(args.cache_dir)
    images = build_images(store, tuple(args.role) if args.role else ("hypervisor", "service"),
                          force=args.force, local_debs=local_debs(args))
    for role, image in images.items():
        console.print(f"{role}: {image.box_name}  ({image.size_bytes / 2**30:.2f} GiB)")
    return 0


def cmd_images_list(args: argparse.Namespace) -> int:
    store = ImageStore(args.cache_dir)
    current = {name: r.key() for name, r in recipes().items()}
    boxes = vagrant_boxes()
    table = Table("image", "key", "size", "built", "ganeti", "current", "vagrant box")
    for image in store.images():
        versions = image.manifest.get("ganeti_versions", {})
        ganeti = ", ".join(f"{k} {v}" for k, v in sorted(versions.items()) if
                           k in ("ganeti", "ganeti-3.0", "ganeti-3.1")) or "-"
        repo = [d for d in image.manifest.get("repo", []) if d.startswith("ganeti")]
        if repo:
            ganeti += f" (serves {len(repo)} ganeti debs)"
        table.add_row(image.role, image.key, f"{image.size_bytes / 2**30:.2f} GiB",
                      image.manifest.get("built_at", "?"), ganeti,
                      "yes" if current.get(image.role) == image.key else
                      f"layered: {local_summary}" if (local_summary := _layered(image)) else
                      "stale",
                      "added" if image.role == "base" or image.box_name in boxes else "-")
    console.print(table)
    return 0


def _layered(image: Image) -> str:
    """The local packages an image was layered with (--ganeti-debs), or ""."""
    layered = image.manifest.get("local_debs")
    if not layered:
        return ""
    return ", ".join(f"{d['package']} {d['version']}" for d in layered["debs"])


def cmd_images_prune(args: argparse.Namespace) -> int:
    store = ImageStore(args.cache_dir)
    keep = {(name, r.key()) for name, r in recipes().items()}
    with store.lock():
        removed = store.prune(keep)
    current_boxes = {f"ganeti-lab-{n}-{k}" for n, k in keep}
    for box in sorted(vagrant_boxes()):
        if box.startswith("ganeti-lab-") and box not in current_boxes:
            unregister_box(box)
            console.print(f"removed Vagrant box {box}")
    for path in removed:
        console.print(f"removed {path}")
    console.print(f"kept the current images ({len(keep)}).")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    images = sub.add_parser("images", help="build, list and prune the cached lab images")
    isub = images.add_subparsers(dest="images_command", required=True, metavar="ACTION")
    for name, fn, text in (("build", cmd_images_build, "build what is missing (needs root)"),
                           ("list", cmd_images_list, "show cached images and their keys"),
                           ("prune", cmd_images_prune,
                            "remove images and boxes not current (layered ones too)")):
        sp = isub.add_parser(name, help=text)
        sp.add_argument("--cache-dir", type=Path, default=None,
                        help="image cache (default: $GANETI_LAB_CACHE or ~/.cache/ganeti-lab)")
        sp.set_defaults(fn=fn)
        if name == "build":
            sp.add_argument("--role", action="append", choices=["hypervisor", "service"])
            sp.add_argument("--force", action="store_true", help="rebuild the role images")
            ganeti_debs_option(sp)
