"""What the lab knows besides its machines travels with each snapshot: a restore brings back
the clusters of that moment and what the lab knew of them (the RAPI credentials and pinned
certificate a test may have renewed since)."""

from __future__ import annotations

import stat
from pathlib import Path
from types import SimpleNamespace

from lab import snapshots


def _lab(tmp_path: Path) -> SimpleNamespace:
    (tmp_path / "clusters" / "cluster1").mkdir(parents=True)
    return SimpleNamespace(dir=tmp_path, name="t")


def test_a_restore_brings_back_what_the_lab_knew_of_its_clusters(tmp_path: Path) -> None:
    lab = _lab(tmp_path)
    secret = tmp_path / "clusters" / "cluster1" / "rapi.json"
    secret.touch(mode=0o600)
    secret.write_text('{"password": "old"}')
    (tmp_path / "clusters" / "cluster1" / "rapi-ca.pem").write_text("old CA")
    (tmp_path / "layout").write_text("one-cluster")
    snapshots._keep_state_files(lab, "cluster-one-cluster-3.0")

    # A test renews the certificate, another cluster appears, the layout changes.
    (tmp_path / "clusters" / "cluster1" / "rapi-ca.pem").write_text("new CA")
    (tmp_path / "clusters" / "rack1").mkdir()
    (tmp_path / "layout").write_text("two-clusters")

    snapshots._restore_state_files(lab, "cluster-one-cluster-3.0")
    assert (tmp_path / "clusters" / "cluster1" / "rapi-ca.pem").read_text() == "old CA"
    assert not (tmp_path / "clusters" / "rack1").exists()
    assert (tmp_path / "layout").read_text() == "one-cluster"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_a_snapshot_saved_before_the_rule_keeps_the_current_clusters(tmp_path: Path) -> None:
    lab = _lab(tmp_path)
    (tmp_path / "clusters" / "cluster1" / "rapi-ca.pem").write_text("current")
    snapshots._restore_state_files(lab, "older")
    assert (tmp_path / "clusters" / "cluster1" / "rapi-ca.pem").read_text() == "current"
