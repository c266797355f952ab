"""Every module of the library imports on its own, first: a user's script or a plugin may
start from any of them, and an import cycle hidden by the order the CLI happens to import in
would only show there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lab

# Each module imported with no lab module loaded before it (third-party ones stay loaded:
# they cannot take part in a cycle of ours).
_EACH_FIRST = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "lab" or m.startswith("lab.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(f"{name}: {traceback.format_exc(limit=-3)}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def _modules() -> list[str]:
    root = Path(lab.__file__).parent
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__main__":
            continue  # runs the CLI
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_module_imports_first() -> None:
    modules = _modules()
    assert "lab.snapshots" in modules and "lab.ganeti.bootstrap" in modules
    done = subprocess.run([sys.executable, "-c", _EACH_FIRST, *modules], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"modules that fail to import first:\n{done.stdout}{done.stderr}"
