"""Where a lab keeps its state on the host (never in the repository)."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """``$GANETI_LAB_STATE``, else ``$XDG_STATE_HOME/ganeti-lab``, else ``~/.local/state/...``."""
    if env := os.environ.get("GANETI_LAB_STATE"):
        root = Path(env)
    else:
        xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        root = Path(xdg) / "ganeti-lab"
    root.mkdir(parents=True, exist_ok=True)
    return root


def lab_dir(name: str) -> Path:
    return state_dir() / "labs" / name


# Every libvirt object of a lab carries this prefix, so a lab (or an orphan) is found by name.
PREFIX = "glab-"


def object_prefix(lab: str) -> str:
    return f"{PREFIX}{lab}-"
