import os
from pathlib import Path

import pytest

from dicom_node.core.errors import DiskFullError
from dicom_node.core.ledger import InstanceRecord, Ledger, StudyState
from dicom_node.core.durable import safe_component, write_durably
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


def _rec(study: str, sop: str) -> InstanceRecord:
    return InstanceRecord(
        study, "9.9", sop, "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.1.2.1", f"/s/{sop}", "MOD"
    )


def test_study_lifecycle_and_generations(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    assert ledger.record_instance(_rec("1.1", "1.1.1"), now=100.0)
    assert not ledger.record_instance(_rec("1.1", "1.1.1"), now=101.0)  # re-send
    assert ledger.due_studies(10, now=105.0) == []
    assert ledger.due_studies(10, now=111.0) == [("1.1", 1)]
    assert ledger.transition("1.1", 1, StudyState.QUEUED, allowed_from=[StudyState.RECEIVING])
    # A new instance after queueing reopens the study as generation 2 ...
    assert ledger.record_instance(_rec("1.1", "1.1.2"), now=120.0)
    study = ledger.get("1.1")
    assert study is not None
    assert (study.state, study.generation, study.instance_count) == (StudyState.RECEIVING, 2, 2)
    # ... and the generation-1 task can no longer move it.
    assert not ledger.transition("1.1", 1, StudyState.INFERRING, allowed_from=[StudyState.QUEUED])
    assert ledger.instance_paths("1.1") == ["/s/1.1.1", "/s/1.1.2"]


def test_queued_without_task_is_reopened(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    ledger.record_instance(_rec("2.2", "2.2.1"), now=1.0)
    ledger.transition("2.2", 1, StudyState.QUEUED, allowed_from=[StudyState.RECEIVING])
    assert ledger.reopen_unsent() == 1
    study = ledger.get("2.2")
    assert study is not None and study.state is StudyState.RECEIVING
