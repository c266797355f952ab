"""What goes into each image, and the content key that names the result.

The key of the base covers the Debian suite, mirror, base package list and scripts; the key of a
role covers the base key plus the role's own package lists and scripts. Changing the hypervisor
package list therefore rebuilds only the hypervisor image.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from lab.images.local_debs import LocalDebs

# Bump when the build pipeline itself changes in a way that changes its output.
PIPELINE_VERSION = 1
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
ROLES = ("hypervisor", "service")


def recipe_dir() -> Path:
    return Path(str(resources.files("lab.images") / "recipes"))


def read_packages(path: Path) -> list[str]:
    """A package list: one entry per line, '#' comments and blank lines ignored."""
    entries = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            entries.append(line)
    return entries


@dataclass(frozen=True)
class Recipe:
    """One image's inputs. ``files`` are copied into the chroot under /tmp/lab-recipe."""

    name: str
    packages: tuple[str, ...]
    setup_script: str
    files: tuple[str, ...] = ()
    parent: Recipe | None = None
    extra: dict[str, str] = field(default_factory=dict)
    local_debs: LocalDebs | None = None   # installed after ``packages`` (--ganeti-debs)

    def inputs(self, root: Path) -> dict[str, object]:
        """Everything the key covers, in a stable, JSON-serialisable form."""
        names = sorted({self.setup_script, *self.files})
        return {
            "pipeline": PIPELINE_VERSION,
            "suite": SUITE,
            "mirror": MIRROR,
            "name": self.name,
            "packages": sorted(self.packages),
            "files": {n: hashlib.sha256((root / n).read_bytes()).hexdigest() for n in names},
            "extra": self.extra,
            "parent": self.parent.key(root) if self.parent else None,
            # Only when present, so the stock images keep their keys.
            **({"local_debs": self.local_debs.key_input()} if self.local_debs else {}),
        }

    def key(self, root: Path | None = None) -> str:
        root = root or recipe_dir()
        blob = json.dumps(self.inputs(root), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def recipes(root: Path | None = None, local_debs: LocalDebs | None = None
            ) -> dict[str, Recipe]:
    """The base recipe and one per role, read from the recipe directory; ``local_debs`` (a
    contributor's Ganeti packages) are layered into the hypervisor image."""
    root = root or recipe_dir()
    base = Recipe(
        name="base",
        packages=tuple(read_packages(root / "base.packages")),
        setup_script="base-setup.sh",
        files=("lab-firstboot", "lab-firstboot.service", "lab-wait-nics"),
    )
    hypervisor = Recipe(
        name="hypervisor",
        packages=tuple(read_packages(root / "hypervisor.packages")),
        setup_script="hypervisor-setup.sh",
        files=("lab-os",),
        parent=base,
        local_debs=local_debs,
    )
    service = Recipe(
        name="service",
        packages=tuple(read_packages(root / "service.packages")),
        setup_script="service-setup.sh",
        files=("repo.packages",),
        parent=base,
        extra={"repo": ",".join(read_packages(root / "repo.packages"))},
    )
    return {"base": base, "hypervisor": hypervisor, "service": service}
