"""Spool and durable writes. The ledger's tests are in test_ledger.py."""

import os
from pathlib import Path

import pytest

from dicom_node.core.durable import safe_component, write_durably
from dicom_node.core.errors import DiskFullError
from dicom_node.ingest.spool import Spool
from tests.conftest import disk_full


def test_write_durably_leaves_only_the_final_file(tmp_path: Path) -> None:
    target = write_durably(tmp_path / "a" / "x.dcm", b"DICM" * 10)
    assert target.read_bytes() == b"DICM" * 10
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.dcm"]


def test_disk_full_is_reported_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(DiskFullError):
        write_durably(tmp_path / "x.dcm", b"data")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("uid", ["../../etc/passwd", "1.2/3", "", "1.2.3\x00"])
def test_uids_cannot_escape_the_spool(tmp_path: Path, uid: str) -> None:
    path = Spool(tmp_path).path_for(uid, uid)
    assert path.resolve().is_relative_to(tmp_path.resolve())
    assert safe_component("1.2.3\x00 ") == "1.2.3"
