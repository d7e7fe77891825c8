"""Read a study with its fan-out (analyses → reports → deliveries) in four queries."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, RowMapping, select

from dicom_node.core.ledger.records import (
    AnalysisSnapshot,
    AnalysisView,
    DeliverySnapshot,
    ReportSnapshot,
    ReportView,
    StudySnapshot,
    StudyView,
)
from dicom_node.core.ledger.schema import analyses, deliveries, reports


def _by(rows: Sequence[RowMapping], key: str) -> defaultdict[Any, list[RowMapping]]:
    grouped: defaultdict[Any, list[RowMapping]] = defaultdict(list)
    for row in rows:
        grouped[row[key]].append(row)
    return grouped


def study_views(conn: Connection, study_rows: Sequence[RowMapping]) -> list[StudyView]:
    """Attach each study's analyses, reports and deliveries.

    Parameters
    ----------
    conn : sqlalchemy.Connection
        Open connection (one transaction, so one snapshot).
    study_rows : sequence of RowMapping
        ``studies`` rows, in the order wanted.

    Returns
    -------
    list of StudyView
        One per study row, same order. Analyses: newest generation first,
        then model id and version; reports and deliveries: oldest first.
    """
    uids = [row["study_uid"] for row in study_rows]
    a_rows = (
        conn.execute(
            select(analyses)
            .where(analyses.c.study_uid.in_(uids))
            .order_by(analyses.c.generation.desc(), analyses.c.model_id, analyses.c.model_version)
        )
        .mappings()
        .all()
    )
    r_rows = (
        conn.execute(
            select(reports)
            .where(reports.c.analysis_id.in_([a["id"] for a in a_rows]))
            .order_by(reports.c.id)
        )
        .mappings()
        .all()
    )
    d_rows = (
        conn.execute(
            select(deliveries)
            .where(deliveries.c.report_id.in_([r["id"] for r in r_rows]))
            .order_by(deliveries.c.id)
        )
        .mappings()
        .all()
    )
    a_by, r_by, d_by = (
        _by(a_rows, "study_uid"),
        _by(r_rows, "analysis_id"),
        _by(d_rows, "report_id"),
    )

    def report(r: RowMapping) -> ReportView:
        return ReportView(
            ReportSnapshot.of(r), tuple(DeliverySnapshot.of(d) for d in d_by[r["id"]])
        )

    def analysis(a: RowMapping) -> AnalysisView:
        return AnalysisView(AnalysisSnapshot.of(a), tuple(report(r) for r in r_by[a["id"]]))

    return [
        StudyView(StudySnapshot.of(s), tuple(analysis(a) for a in a_by[s["study_uid"]]))
        for s in study_rows
    ]
