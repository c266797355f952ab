"""Where a lab keeps its state on the host (never in the repository), and how its libvirt
objects are named."""

from __future__ import annotations

import os
from pathlib import Path

from lab.errors import LabError
from lab.names import validate_lab_name


def state_dir() -> Path:
    """``$GANETI_LAB_STATE``, else ``$XDG_STATE_HOME/ganeti-lab``, else ``~/.local/state/...``."""
    if env := os.environ.get("GANETI_LAB_STATE"):
        root = Path(env)
    else:
        xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        root = Path(xdg) / "ganeti-lab"
    root.mkdir(parents=True, exist_ok=True)
    return root


def labs_dir() -> Path:
    return state_dir() / "labs"


def lab_dir(name: str) -> Path:
    """The lab's own state directory; refuses any name that would resolve elsewhere."""
    validate_lab_name(name)
    parent = labs_dir().resolve()
    path = (parent / name).resolve()
    # The name rule already excludes '/', '..' and the empty name; this is the second lock on
    # the door for whatever reaches here (a symlink planted under labs/, say).
    if path.parent != parent:
        raise LabError(f"the state directory of lab {name!r} resolves to {path}, outside {parent}",
                       f"remove the link {parent / name}")
    return path


# Every libvirt object of a lab is named ``glab-<lab>--<rest>``. Lab names never contain "--"
# (lab.names), so the first "--" tells exactly which lab an object belongs to.
PREFIX = "glab-"
SEPARATOR = "--"


def object_prefix(lab: str) -> str:
    return f"{PREFIX}{validate_lab_name(lab)}{SEPARATOR}"


def owner_of(object_name: str) -> str | None:
    """The lab an object name belongs to; None for names outside the lab grammar."""
    if not object_name.startswith(PREFIX):
        return None
    lab, sep, rest = object_name[len(PREFIX):].partition(SEPARATOR)
    return lab if sep and rest and lab else None
