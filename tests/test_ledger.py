"""The study ledger: transition table, generations, idempotent fan-out, views, status text."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from dicom_node.app.status_view import UNTRAINED_MARK, render_text, to_json
from dicom_node.core.errors import LedgerError
from dicom_node.core.ledger import (
    TRANSITIONS,
    AnalysisSpec,
    AnalysisState,
    DeliveryState,
    InstanceRecord,
    Ledger,
    Level,
    ReportState,
    StudyState,
    allowed_from,
    is_allowed,
)
from dicom_node.core.ledger.engine import make_engine
from dicom_node.core.ledger.states import STATES

XRV = AnalysisSpec("xrv-densenet121-res224-all", "1.0.0", 1)
OTHER = AnalysisSpec("other-model", "2.1", 3)


def _rec(study: str, sop: str) -> InstanceRecord:
    return InstanceRecord(
        study, "9.9", sop, "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.1.2.1", f"/s/{sop}", "MOD"
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite"


@pytest.fixture
def ledger(db: Path) -> Ledger:
    return Ledger(f"sqlite:///{db}")


def _routed(ledger: Ledger, study: str = "1.1") -> int:
    """A study with one routed analysis; return the analysis id."""
    ledger.record_instance(_rec(study, f"{study}.1"), now=1.0)
    assert ledger.transition_study(study, 1, StudyState.QUEUED)
    (analysis,) = ledger.create_analyses(study, 1, [XRV])
    assert ledger.transition_study(study, 1, StudyState.ROUTED)
    return analysis.id


def _force(db: Path, table: str, row_id: int | str, state: str) -> None:
    key = "study_uid" if table == "studies" else "id"
    with sqlite3.connect(db) as conn:
        conn.execute(f"UPDATE {table} SET state = ? WHERE {key} = ?", (state, row_id))


def _state(db: Path, table: str, row_id: int | str) -> str:
    key = "study_uid" if table == "studies" else "id"
    with sqlite3.connect(db) as conn:
        return str(
            conn.execute(f"SELECT state FROM {table} WHERE {key} = ?", (row_id,)).fetchone()[0]
        )


# -- the transition table ----------------------------------------------------------------


def test_the_table_covers_every_state_of_every_level() -> None:
    for level, enum_ in STATES.items():
        assert set(TRANSITIONS[level]) == set(enum_)
        for targets in TRANSITIONS[level].values():
            assert targets <= set(enum_)
        for to in enum_:
            assert allowed_from(level, to) == {src for src in enum_ if is_allowed(level, src, to)}
    assert allowed_from(Level.STUDY, StudyState.ROUTED) == {StudyState.QUEUED}
    with pytest.raises(ValueError, match="not a study state"):
        allowed_from(Level.STUDY, AnalysisState.SUPERSEDED)


def _every_pair(level: Level) -> list[tuple[str, str]]:
    states = list(STATES[level])
    return [(src, to) for src in states for to in states]


def test_study_transitions_follow_the_table(ledger: Ledger, db: Path) -> None:
    ledger.record_instance(_rec("1.1", "1.1.1"), now=1.0)
    for src, to in _every_pair(Level.STUDY):
        _force(db, "studies", "1.1", src)
        moved = ledger.transition_study("1.1", 1, StudyState(to))
        assert moved == is_allowed(Level.STUDY, src, to), (src, to)
        assert _state(db, "studies", "1.1") == (to if moved else src)


def test_analysis_transitions_follow_the_table(ledger: Ledger, db: Path) -> None:
    analysis_id = _routed(ledger)
    for src, to in _every_pair(Level.ANALYSIS):
        if to == AnalysisState.SUPERSEDED:
            continue  # needs a newer generation: see test_a_newer_generation_supersedes
        _force(db, "analyses", analysis_id, src)
        moved = ledger.transition_analysis(analysis_id, AnalysisState(to))
        assert moved == is_allowed(Level.ANALYSIS, src, to), (src, to)
        assert _state(db, "analyses", analysis_id) == (to if moved else src)


def test_report_and_delivery_transitions_follow_the_table(ledger: Ledger, db: Path) -> None:
    report = ledger.add_report(_routed(ledger), "tid1500", "2.25.1", "2.25.2", "/r/1.dcm")
    for src, to in _every_pair(Level.REPORT):
        _force(db, "reports", report.id, src)
        moved = ledger.transition_report(report.id, ReportState(to))
        assert moved == is_allowed(Level.REPORT, src, to), (src, to)
        assert _state(db, "reports", report.id) == (to if moved else src)
    (delivery,) = ledger.add_deliveries(report.id, ["PACS@h:104"])
    for src, to in _every_pair(Level.DELIVERY):
        _force(db, "deliveries", delivery.id, src)
        moved = ledger.transition_delivery(delivery.id, DeliveryState(to))
        assert moved == is_allowed(Level.DELIVERY, src, to), (src, to)
        assert _state(db, "deliveries", delivery.id) == (to if moved else src)


def test_a_transition_sets_only_known_fields(ledger: Ledger) -> None:
    analysis_id = _routed(ledger)
    with pytest.raises(TypeError, match="cannot set"):
        ledger.transition_analysis(analysis_id, AnalysisState.RUNNING, generation=7)
    with pytest.raises(TypeError, match="cannot set"):
        ledger.transition_study("1.1", 1, StudyState.FAILED, state="routed")


# -- studies and generations -------------------------------------------------------------


def test_study_lifecycle_and_generations(ledger: Ledger) -> None:
    assert ledger.record_instance(_rec("1.1", "1.1.1"), now=100.0)
    assert not ledger.record_instance(_rec("1.1", "1.1.1"), now=101.0)  # re-send
    assert ledger.due_studies(10, now=105.0) == []
    assert ledger.due_studies(10, now=111.0) == [("1.1", 1)]
    assert not ledger.transition_study("1.1", 1, StudyState.QUEUED, received_before=100.5)
    assert ledger.transition_study("1.1", 1, StudyState.QUEUED, received_before=111.0)
    # A new instance after queueing reopens the study as generation 2 ...
    assert ledger.record_instance(_rec("1.1", "1.1.2"), now=120.0)
    view = ledger.get("1.1")
    assert view is not None
    study = view.study
    assert (study.state, study.generation, study.instance_count) == (StudyState.RECEIVING, 2, 2)
    assert study.queued_at is None and study.task_id is None
    # ... and the generation-1 task can no longer move it.
    assert not ledger.transition_study("1.1", 1, StudyState.ROUTED)
    assert ledger.create_analyses("1.1", 1, [XRV]) == []
    assert ledger.instance_paths("1.1") == ["/s/1.1.1", "/s/1.1.2"]
    # A re-send after the study left receiving does not reopen it.
    assert ledger.transition_study("1.1", 2, StudyState.QUEUED)
    assert not ledger.record_instance(_rec("1.1", "1.1.2"), now=130.0)
    view = ledger.get("1.1")
    assert view is not None and (view.study.state, view.study.generation) == ("queued", 2)


def test_queued_without_task_is_reopened(ledger: Ledger) -> None:
    ledger.record_instance(_rec("2.2", "2.2.1"), now=1.0)
    ledger.record_instance(_rec("3.3", "3.3.1"), now=1.0)
    assert ledger.transition_study("2.2", 1, StudyState.QUEUED, task_id=None)
    assert ledger.transition_study("3.3", 1, StudyState.QUEUED)
    assert ledger.transition_study("3.3", 1, StudyState.QUEUED, task_id="route:3.3:1")
    assert ledger.reopen_unsent() == 1
    views = {v.study.study_uid: v.study for v in ledger.studies()}
    assert views["2.2"].state is StudyState.RECEIVING and views["2.2"].generation == 1
    assert views["3.3"].state is StudyState.QUEUED and views["3.3"].task_id == "route:3.3:1"


def test_self_transition_keeps_the_first_time(ledger: Ledger) -> None:
    ledger.record_instance(_rec("1.1", "1.1.1"), now=1.0)
    assert ledger.transition_study("1.1", 1, StudyState.QUEUED)
    view = ledger.get("1.1")
    assert view is not None
    first = view.study.queued_at
    assert ledger.transition_study("1.1", 1, StudyState.QUEUED, task_id="route:1.1:1")
    view = ledger.get("1.1")
    assert view is not None and view.study.queued_at == first
    assert view.study.task_id == "route:1.1:1"


def test_not_applicable_and_failed_keep_their_reason(ledger: Ledger) -> None:
    ledger.record_instance(_rec("1.1", "1.1.1"), now=1.0)
    ledger.transition_study("1.1", 1, StudyState.QUEUED)
    assert ledger.transition_study("1.1", 1, StudyState.NOT_APPLICABLE, reason="Modality CT")
    assert not ledger.transition_study("1.1", 1, StudyState.FAILED, reason="late")
    view = ledger.get("1.1")
    assert view is not None
    assert (view.study.state, view.study.reason) == (StudyState.NOT_APPLICABLE, "Modality CT")
    assert view.study.finished_at is not None
    assert ledger.get("9.9") is None


# -- analyses, reports, deliveries -------------------------------------------------------


def test_fan_out_is_idempotent(ledger: Ledger) -> None:
    ledger.record_instance(_rec("1.1", "1.1.1"), now=1.0)
    first = ledger.create_analyses("1.1", 1, [XRV, OTHER, XRV])
    again = ledger.create_analyses("1.1", 1, [OTHER, XRV])
    assert [a.model_id for a in first] == [XRV.model_id, OTHER.model_id]
    assert {a.id for a in first} == {a.id for a in again}
    assert all(a.state is AnalysisState.QUEUED for a in first)
    report = ledger.add_report(first[0].id, "tid1500", "2.25.7", "2.25.8", "/r/7.dcm")
    twice = ledger.add_report(first[0].id, "tid1500", "2.25.7", "2.25.8", "/r/7.dcm")
    assert report == twice and report.state is ReportState.WRITTEN
    deliveries = ledger.add_deliveries(report.id, ["PACS@h:104", "outbox"])
    assert [d.id for d in ledger.add_deliveries(report.id, ["outbox", "PACS@h:104"])] == [
        deliveries[1].id,
        deliveries[0].id,
    ]
    view = ledger.get("1.1")
    assert view is not None
    assert len(view.analyses) == 2
    (xrv,) = [a for a in view.analyses if a.analysis.model_id == XRV.model_id]
    assert len(xrv.reports) == 1 and len(xrv.reports[0].deliveries) == 2


def test_a_report_uid_belongs_to_one_report(ledger: Ledger) -> None:
    analysis_id = _routed(ledger)
    ledger.add_report(analysis_id, "tid1500", "2.25.7", "2.25.8", "/r/7.dcm")
    with pytest.raises(LedgerError, match="another report"):
        ledger.add_report(analysis_id, "other-profile", "2.25.7", "2.25.8", "/r/7.dcm")
    with pytest.raises(LedgerError):
        ledger.add_report(999, "tid1500", "2.25.9", "2.25.8", "/r/9.dcm")  # no such analysis


def test_analysis_runs_and_records_what_it_ran_on(ledger: Ledger) -> None:
    analysis_id = _routed(ledger)
    assert ledger.analysis_is_current(analysis_id)
    assert ledger.transition_analysis(
        analysis_id,
        AnalysisState.RUNNING,
        task_id="analyze:1",
        backend="onnxruntime",
        weights_kind="untrained-demo",
        weights_sha256="ab" * 32,
    )
    assert ledger.transition_analysis(analysis_id, AnalysisState.RUNNING)  # redelivered task
    assert ledger.transition_analysis(analysis_id, AnalysisState.REPORTED)
    assert not ledger.transition_analysis(analysis_id, AnalysisState.RUNNING)  # ran twice
    analysis = ledger.get_analysis(analysis_id)
    assert analysis is not None and analysis.untrained
    assert analysis.backend == "onnxruntime" and analysis.task_id == "analyze:1"
    assert analysis.started_at is not None and analysis.finished_at is not None
    assert analysis.queued_at <= analysis.started_at <= analysis.finished_at
    assert ledger.get_analysis(999) is None


def test_a_newer_generation_supersedes(ledger: Ledger) -> None:
    analysis_id = _routed(ledger)
    assert not ledger.transition_analysis(analysis_id, AnalysisState.SUPERSEDED)  # current
    assert ledger.transition_analysis(analysis_id, AnalysisState.RUNNING)
    ledger.record_instance(_rec("1.1", "1.1.2"), now=5.0)  # generation 2
    assert not ledger.analysis_is_current(analysis_id)
    analysis = ledger.get_analysis(analysis_id)
    assert analysis is not None and analysis.state is AnalysisState.SUPERSEDED
    for to in AnalysisState:
        assert not ledger.transition_analysis(analysis_id, to)
    # A task of the old generation that had not been claimed yet is superseded too,
    # and a still-queued one may be superseded explicitly.
    _force(ledger_db(ledger), "analyses", analysis_id, "queued")
    assert not ledger.transition_analysis(analysis_id, AnalysisState.RUNNING)
    assert ledger.transition_analysis(analysis_id, AnalysisState.SUPERSEDED)
    ledger.transition_study("1.1", 2, StudyState.QUEUED)
    (new,) = ledger.create_analyses("1.1", 2, [XRV])
    assert new.id != analysis_id and new.generation == 2
    assert ledger.transition_analysis(new.id, AnalysisState.RUNNING)


def ledger_db(ledger: Ledger) -> Path:
    return Path(ledger.url.removeprefix("sqlite:///"))


def test_delivery_attempts(ledger: Ledger) -> None:
    report = ledger.add_report(_routed(ledger), "tid1500", "2.25.1", "2.25.2", "/r/1.dcm")
    (delivery,) = ledger.add_deliveries(report.id, ["PACS@h:104"])
    assert delivery.state is DeliveryState.PENDING and delivery.attempts == 0
    assert ledger.record_delivery_attempt(delivery.id, "association not established")
    assert ledger.record_delivery_attempt(delivery.id, "association rejected")
    assert ledger.record_delivery_attempt(delivery.id, None)
    assert ledger.transition_delivery(delivery.id, DeliveryState.DELIVERED)
    assert not ledger.record_delivery_attempt(delivery.id, None)  # already delivered
    got = ledger.get_delivery(delivery.id)
    assert got is not None
    assert (got.state, got.attempts) == (DeliveryState.DELIVERED, 3)
    assert got.last_error == "association rejected"
    assert got.delivered_at is not None and got.last_attempt_at is not None
    assert ledger.get_delivery(999) is None
    assert ledger.get_report(report.id) == report


def test_studies_lists_the_fan_out_most_recent_first(ledger: Ledger) -> None:
    _routed(ledger, "1.1")
    ledger.record_instance(_rec("2.2", "2.2.1"), now=50.0)
    ledger.record_instance(_rec("3.3", "3.3.1"), now=20.0)
    views = ledger.studies()
    assert [v.study.study_uid for v in views] == ["2.2", "3.3", "1.1"]
    assert [v.study.study_uid for v in ledger.studies(limit=1)] == ["2.2"]
    assert views[2].analyses[0].analysis.model_id == XRV.model_id
    assert views[0].analyses == ()


# -- errors ------------------------------------------------------------------------------


def test_unreachable_database_raises_ledger_error(tmp_path: Path) -> None:
    with pytest.raises(LedgerError):
        Ledger(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'l.sqlite'}")
    with pytest.raises(LedgerError, match="in-memory"):
        Ledger("sqlite://")
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    ledger._engine = make_engine(f"sqlite:///{tmp_path / 'missing' / 'l.sqlite'}")
    with pytest.raises(LedgerError):
        ledger.studies()
    with pytest.raises(LedgerError):
        ledger.record_instance(_rec("1.1", "1.1.1"))


# -- status view -------------------------------------------------------------------------


def _story(ledger: Ledger) -> None:
    analysis_id = _routed(ledger, "1.2.3")
    ledger.transition_analysis(
        analysis_id, AnalysisState.RUNNING, backend="torch", weights_kind="untrained-demo"
    )
    report = ledger.add_report(analysis_id, "tid1500", "2.25.42", "2.25.43", "/r/42.dcm")
    ledger.transition_analysis(analysis_id, AnalysisState.REPORTED)
    (delivery,) = ledger.add_deliveries(report.id, ["PACS@10.0.0.5:104"])
    ledger.record_delivery_attempt(
        delivery.id, "association with PACS@10.0.0.5:104 not established"
    )
    ledger.record_instance(_rec("4.5.6", "4.5.6.1"), now=2.0)
    ledger.transition_study("4.5.6", 1, StudyState.QUEUED)
    ledger.transition_study(
        "4.5.6", 1, StudyState.NOT_APPLICABLE, reason="Modality CT not in [CR, DX]"
    )


def test_status_text_shows_the_tree(ledger: Ledger) -> None:
    assert render_text([]) == "no studies in the ledger"
    _story(ledger)
    text = render_text(ledger.studies())
    study, other = text.split("\n\n")
    assert other.startswith("1.2.3  routed  generation 1  1 instance")
    assert "xrv-densenet121-res224-all 1.0.0  reported" in other
    assert f"backend torch  weights untrained-demo {UNTRAINED_MARK}" in other
    assert "report tid1500  2.25.42  written" in other
    assert "delivery PACS@10.0.0.5:104  retrying  1 attempt  last error: association" in other
    assert "run 0." in other and " s" in other
    assert study.startswith("4.5.6  not_applicable")
    assert "reason: Modality CT not in [CR, DX]" in study


def test_status_json(ledger: Ledger) -> None:
    _story(ledger)
    data = to_json(ledger.studies())
    json.dumps(data)  # serializable
    assert [s["study_uid"] for s in data] == ["4.5.6", "1.2.3"]
    assert data[0]["state"] == "not_applicable" and data[0]["analyses"] == []
    (analysis,) = data[1]["analyses"]
    assert analysis["state"] == "reported" and analysis["untrained"] is True
    assert set(analysis["timings"]) == {"wait_s", "run_s"}
    assert isinstance(analysis["timings"]["run_s"], float)
    (report,) = analysis["reports"]
    assert report["sop_instance_uid"] == "2.25.42"
    assert report["deliveries"][0] | {"created_at": 0, "last_attempt_at": 0, "id": 0} == {
        "id": 0,
        "report_id": report["id"],
        "destination": "PACS@10.0.0.5:104",
        "state": "retrying",
        "attempts": 1,
        "last_error": "association with PACS@10.0.0.5:104 not established",
        "created_at": 0,
        "last_attempt_at": 0,
        "delivered_at": None,
        "status": None,
        "warning": None,
    }
