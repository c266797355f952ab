"""Reading and checking a contributor's Ganeti patch, on the host, before any node changes.
The lab test that applies one on a real cluster is in tests/test_ganeti_clusters.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from lab.ganeti.patches import GanetiPatch, PatchError, adopt, lab_patch

EXAMPLE = Path(__file__).parent.parent / "examples" / "ganeti-1275-renew-crypto.diff"
ORIGINAL = "".join(f"line {i}\n" for i in range(1, 11))
PATCH = """Make line 5 louder.

Fixes: ganeti/ganeti#9999

--- a/lib/utils/x.py
+++ b/lib/utils/x.py
@@ -4,3 +4,3 @@
 line 4
-line 5
+LINE 5
 line 6
"""


def test_the_example_patch_names_its_file_and_the_bug_it_fixes() -> None:
    patch = GanetiPatch.load(EXAMPLE, "3.0")
    assert patch.files == ("ganeti/client/gnt_cluster.py",)
    assert patch.fixes_issue("ganeti/ganeti#1275")
    line = patch.describe()
    assert line.startswith(f"ganeti-1275-renew-crypto.diff (sha256 {patch.short}) on Ganeti 3.0")
    assert "RunWhileClusterStopped" not in line  # the record never carries the patch's text
    # Only `gnt-cluster`'s own code: no running daemon needs a restart to run the fix.
    assert not patch.daemons_run_it


def test_a_patch_applies_exactly_where_it_says() -> None:
    patch = GanetiPatch.parse(PATCH, "3.0", "louder.diff")
    assert patch.files == ("ganeti/utils/x.py",)
    assert patch.daemons_run_it
    assert patch.fixes == ("ganeti/ganeti#9999",)
    out = patch.patched({"ganeti/utils/x.py": ORIGINAL})
    assert out["ganeti/utils/x.py"] == ORIGINAL.replace("line 5\n", "LINE 5\n")


def test_a_patch_for_another_tree_is_refused_naming_the_file_and_the_hunk() -> None:
    patch = GanetiPatch.parse(PATCH, "3.1", "louder.diff")
    shifted = "new first line\n" + ORIGINAL
    with pytest.raises(PatchError) as info:
        patch.patched({"ganeti/utils/x.py": shifted})
    message = str(info.value)
    assert "louder.diff does not apply to Ganeti 3.1: ganeti/utils/x.py, hunk #1" in message
    assert "--ganeti-patch-series" in message


def test_a_patch_of_a_file_the_tree_lacks_is_refused() -> None:
    patch = GanetiPatch.parse(PATCH, "3.0", "louder.diff")
    with pytest.raises(PatchError, match=r"ganeti/utils/x.py does not exist in Ganeti 3.0"):
        patch.patched({})


@pytest.mark.parametrize(("text", "says"), [
    ("just some words\n", "changes nothing"),
    (PATCH.replace("lib/utils/x.py", "tools/move-instance"), "outside Ganeti's Python package"),
    (PATCH.replace("lib/utils/x.py", "lib/../../etc/passwd"), "outside Ganeti's Python package"),
])
def test_what_is_not_a_patch_of_ganetis_python_is_refused(text: str, says: str) -> None:
    with pytest.raises(PatchError, match=says):
        GanetiPatch.parse(text, "3.0", "bad.diff")


def test_an_unreadable_patch_file_is_refused_with_its_name(tmp_path: Path) -> None:
    with pytest.raises(PatchError, match=r"cannot read the Ganeti patch .*missing.diff"):
        GanetiPatch.load(tmp_path / "missing.diff", "3.0")


def test_a_lab_keeps_the_patch_it_was_given(tmp_path: Path) -> None:
    lab = SimpleNamespace(dir=tmp_path, name="t")
    patch = GanetiPatch.parse(PATCH, "3.0", "louder.diff")
    adopt(lab, patch)  # type: ignore[arg-type]
    held = lab_patch(lab)  # type: ignore[arg-type]
    assert held is not None and held.sha256 == patch.sha256 and held.series == "3.0"
    adopt(lab, patch)  # type: ignore[arg-type]  # the same again: fine
    (tmp_path / "layout").write_text("one-cluster")  # the lab has formed a cluster since
    with pytest.raises(PatchError, match=r"runs Ganeti with patch louder\.diff .* asks for no "
                                         r"patch"):
        adopt(lab, None)  # type: ignore[arg-type]
    other = GanetiPatch.parse(PATCH.replace("LINE 5", "Line 5"), "3.0", "other.diff")
    with pytest.raises(PatchError, match="destroy the lab"):
        adopt(lab, other)  # type: ignore[arg-type]
    assert lab_patch(lab).sha256 == patch.sha256  # type: ignore[arg-type, union-attr]


def test_a_nodes_patch_marker_names_series_and_hash() -> None:
    from lab.ganeti.versions import patch_in

    patch = GanetiPatch.parse(PATCH, "3.0", "louder.diff")
    assert patch_in(f"{patch.series} {patch.sha256} {patch.file}\n") == ("3.0", patch.sha256)
    assert patch_in("") is None
