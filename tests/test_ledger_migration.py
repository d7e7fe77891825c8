"""Ledger schema migrations: a real 0.1.0 ledger upgrades in place; head matches schema.py."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from dicom_node.core.errors import LedgerError
from dicom_node.core.ledger import (
    AnalysisState,
    DeliveryState,
    InstanceRecord,
    Ledger,
    StudyState,
    current_revision,
    head_revision,
    upgrade_ledger,
)
from dicom_node.core.ledger.schema import metadata

OLD_SQL = Path(__file__).parent / "data" / "ledger-0.1.0.sql"
UID = "1.2.826.0.1.3680043.8.498."
MODEL = "xrv-densenet121-res224-all"


@pytest.fixture
def old_db(tmp_path: Path) -> Path:
    db = tmp_path / "ledger.sqlite"
    with sqlite3.connect(db) as conn:
        conn.executescript(OLD_SQL.read_text())
    return db


def _url(db: Path) -> str:
    return f"sqlite:///{db}"


def _dump(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return list(conn.iterdump())


def _schema_diff(db: Path) -> list[object]:
    engine = create_engine(_url(db))
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), metadata))
    finally:
        engine.dispose()


def test_head_is_the_fan_out() -> None:
    assert head_revision() == "0004"


def test_an_old_ledger_is_upgraded_in_place(old_db: Path) -> None:
    assert current_revision(_url(old_db)) == "0001"
    ledger = Ledger(_url(old_db))
    assert current_revision(_url(old_db)) == head_revision()
    assert Path(f"{old_db}.0001.bak").is_file()  # the pre-upgrade copy
    views = {v.study.study_uid.removeprefix(UID): v for v in ledger.studies()}
    assert sorted(views) == ["1", "2", "3", "4", "5"]

    delivered = views["1"]
    assert delivered.study.state is StudyState.ROUTED
    (analysis,) = delivered.analyses
    assert analysis.analysis.model_id == MODEL
    assert analysis.analysis.state is AnalysisState.REPORTED
    assert analysis.analysis.untrained
    (report,) = analysis.reports
    assert report.report.sop_instance_uid == "2.25.1234567890"
    assert report.report.profile == "tid1500"
    (delivery,) = report.deliveries
    assert delivery.destination == "PACS@10.0.0.5:104"
    assert delivery.state is DeliveryState.DELIVERED and delivery.delivered_at is not None

    not_applicable, failed = views["2"].study, views["3"].study
    assert (not_applicable.state, not_applicable.reason) == (
        StudyState.NOT_APPLICABLE,
        "no applicable model",
    )
    assert (failed.state, failed.reason) == (
        StudyState.FAILED,
        f"model {MODEL} has no weights",
    )
    assert views["3"].analyses[0].analysis.state is AnalysisState.FAILED

    reported = views["4"]
    assert reported.study.state is StudyState.ROUTED
    assert reported.study.instance_count == 2
    (pending,) = reported.analyses[0].reports[0].deliveries
    assert (pending.state, pending.attempts) == (DeliveryState.RETRYING, 2)
    assert pending.destination == "PACS@10.0.0.5:104"
    assert pending.last_error == "association with PACS@10.0.0.5:104 not established"

    receiving = views["5"]
    assert receiving.study.state is StudyState.RECEIVING and receiving.analyses == ()
    assert ledger.instance_paths(UID + "4") == [
        f"/var/lib/dicom-node/spool/{UID}4/{UID}4.1.dcm",
        f"/var/lib/dicom-node/spool/{UID}4/{UID}4.2.dcm",
    ]
    # The upgraded ledger keeps working: a new instance reopens the delivered study.
    assert ledger.due_studies(10, now=2000.0) == [(UID + "5", 1)]
    assert ledger.record_instance(
        InstanceRecord(
            UID + "1",
            None,
            UID + "1.2",
            "1.2.840.10008.5.1.4.1.1.1",
            "1.2.840.10008.1.2.1",
            "/s/1.2",
            "MODALITY",
        ),
        now=2000.0,
    )
    again = ledger.get(UID + "1")
    assert again is not None
    assert (again.study.state, again.study.generation) == (StudyState.RECEIVING, 2)
    assert again.analyses[0].analysis.state is AnalysisState.REPORTED  # history stays
    ledger.dispose()
    assert _schema_diff(old_db) == []


def test_an_empty_database_goes_straight_to_head(tmp_path: Path) -> None:
    db = tmp_path / "new.sqlite"
    assert upgrade_ledger(_url(db)) is None
    assert current_revision(_url(db)) == head_revision()
    assert _schema_diff(db) == []
    assert not list(tmp_path.glob("*.bak"))


def test_read_only_open_of_an_old_ledger_says_what_to_do(old_db: Path) -> None:
    before = _dump(old_db)
    with pytest.raises(LedgerError) as err:
        Ledger(_url(old_db), upgrade=False)
    assert str(err.value) == (
        "ledger schema 0001 is older than this release (0004); "
        "run `dicom-node up` or `dicom-node ledger upgrade`"
    )
    assert _dump(old_db) == before
    upgrade_ledger(_url(old_db))
    Ledger(_url(old_db), upgrade=False).dispose()


def test_upgrading_twice_is_a_no_op(old_db: Path) -> None:
    assert upgrade_ledger(_url(old_db)) == "0001"
    after_first = _dump(old_db)
    assert upgrade_ledger(_url(old_db)) == head_revision()
    assert _dump(old_db) == after_first


def test_concurrent_openers_upgrade_once(old_db: Path) -> None:
    found: list[str | None] = []
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            found.append(upgrade_ledger(_url(old_db)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(found, key=str) == ["0001", "0004", "0004", "0004"]
    with sqlite3.connect(old_db) as conn:
        assert conn.execute("SELECT count(*) FROM analyses").fetchone()[0] == 4


def test_a_ledger_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "l.sqlite"
    upgrade_ledger(_url(db))
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099'")
    with pytest.raises(LedgerError, match="unknown to this release"):
        upgrade_ledger(_url(db))
