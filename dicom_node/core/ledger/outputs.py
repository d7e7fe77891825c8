"""Reports (objects of an analysis per profile) and deliveries (one per object and destination).

Exactly once: a report's UIDs are derived from its inputs, so writing it again
finds the row already there; a delivery moves ``pending`` → ``delivered`` once,
and a delivery of a superseded generation moves to ``superseded`` and is never
sent. Dead letters (``failed``) wait for ``dicom-node exports retry | drop``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, func, select, update

from dicom_node.core.ledger.base import LedgerBase, guard, rowcount, transition_values
from dicom_node.core.ledger.records import (
    DeadLetter,
    DeliverySnapshot,
    Outgoing,
    PriorReport,
    ReportSnapshot,
)
from dicom_node.core.ledger.schema import analyses, deliveries, reports
from dicom_node.core.ledger.states import (
    DeliveryState,
    Level,
    ReportState,
    allowed_from,
)

_D = DeliveryState


class OutputRows(LedgerBase):
    """Ledger methods on reports and deliveries."""

    def add_report(
        self,
        analysis_id: int,
        profile: str,
        sop_instance_uid: str,
        series_instance_uid: str,
        path: str,
        sop_class_uid: str | None = None,
        ordinal: int = 0,
    ) -> ReportSnapshot:
        """Record a written report file (idempotent on ``(analysis_id, profile, ordinal)``).

        Parameters
        ----------
        analysis_id : int
            The analysis it reports.
        profile : str
            Output profile, e.g. ``"tid1500"``.
        sop_instance_uid, series_instance_uid : str
            The report's deterministic UIDs.
        path : str
            The report file.
        sop_class_uid : str, optional
            The object's SOP Class UID.
        ordinal : int
            Position among the profile's objects, in sending order.

        Returns
        -------
        ReportSnapshot
            The new row, or the one a previous call made (unchanged).

        Raises
        ------
        LedgerError
            If the analysis does not exist, or ``sop_instance_uid`` belongs to
            another report.
        """
        with self._tx() as conn:
            row = self._insert_or_get(
                conn,
                reports,
                {"analysis_id": analysis_id, "profile": profile, "ordinal": ordinal},
                {
                    "sop_class_uid": sop_class_uid,
                    "sop_instance_uid": sop_instance_uid,
                    "series_instance_uid": series_instance_uid,
                    "path": path,
                    "state": ReportState.WRITTEN,
                    "created_at": time.time(),
                },
                f"report UID {sop_instance_uid} already belongs to another report",
            )
            return ReportSnapshot.of(row)

    def get_report(self, report_id: int) -> ReportSnapshot | None:
        """One report, or None."""
        with self._tx() as conn:
            row = self._row(conn, reports, reports.c.id == report_id)
        return ReportSnapshot.of(row) if row else None

    def transition_report(self, report_id: int, to: ReportState, **fields: Any) -> bool:
        """Move a report to ``to`` if the table allows it; ``fields``: ``path``.

        Returns
        -------
        bool
            Whether the row changed.
        """
        stmt = (
            update(reports)
            .where(reports.c.id == report_id, guard(Level.REPORT, to))
            .values(transition_values(Level.REPORT, to, fields, time.time()))
        )
        with self._tx() as conn:
            return bool(rowcount(conn.execute(stmt)))

    def add_deliveries(self, report_id: int, destinations: Sequence[str]) -> list[DeliverySnapshot]:
        """Create one ``pending`` delivery per destination (idempotent).

        Parameters
        ----------
        report_id : int
            The report to send.
        destinations : sequence of str
            Destination names (``dicom_node.core.destinations.Destination.name``).

        Returns
        -------
        list of DeliverySnapshot
            One per distinct destination, in order: new, or made by a previous call.

        Raises
        ------
        LedgerError
            If the report does not exist.
        """
        now = time.time()
        out: dict[str, DeliverySnapshot] = {}
        with self._tx() as conn:
            for destination in destinations:
                if destination in out:
                    continue
                row = self._insert_or_get(
                    conn,
                    deliveries,
                    {"report_id": report_id, "destination": destination},
                    {"state": _D.PENDING, "attempts": 0, "created_at": now},
                    f"report {report_id} does not exist",
                )
                out[destination] = DeliverySnapshot.of(row)
        return list(out.values())

    def get_delivery(self, delivery_id: int) -> DeliverySnapshot | None:
        """One delivery, or None."""
        with self._tx() as conn:
            row = self._row(conn, deliveries, deliveries.c.id == delivery_id)
        return DeliverySnapshot.of(row) if row else None

    def record_delivery_attempt(
        self, delivery_id: int, error: str | None, status: int | None = None
    ) -> bool:
        """Count one attempt to send a report.

        Parameters
        ----------
        delivery_id : int
            Ledger id of the delivery.
        error : str or None
            Why the attempt failed (the delivery becomes ``retrying``), or None
            before or after a successful attempt (state unchanged; move it to
            ``delivered`` with :meth:`transition_delivery`).
        status : int, optional
            The DIMSE status the destination answered, if it answered.

        Returns
        -------
        bool
            Whether it was counted; False when the delivery is already
            delivered or failed (the caller must stop).
        """
        now = time.time()
        values: dict[str, Any] = {
            "attempts": deliveries.c.attempts + 1,
            "last_attempt_at": now,
        }
        if status is not None:
            values["status"] = status
        open_: ColumnElement[bool]
        if error is None:
            open_ = deliveries.c.state.in_(sorted(allowed_from(Level.DELIVERY, _D.DELIVERED)))
        else:
            open_ = guard(Level.DELIVERY, _D.RETRYING)
            values |= transition_values(Level.DELIVERY, _D.RETRYING, {"last_error": error}, now)
        with self._tx() as conn:
            result = conn.execute(
                update(deliveries).where(deliveries.c.id == delivery_id, open_).values(values)
            )
            return bool(rowcount(result))

    def transition_delivery(self, delivery_id: int, to: DeliveryState, **fields: Any) -> bool:
        """Move a delivery to ``to`` if the table allows it.

        Parameters
        ----------
        delivery_id : int
            Ledger id of the delivery.
        to : DeliveryState
            New state; ``delivered`` sets ``delivered_at``.
        **fields
            ``last_error``, ``status``, ``warning``.

        Returns
        -------
        bool
            Whether the row changed (False: already delivered or failed).

        Raises
        ------
        TypeError
            If ``fields`` names another column.
        """
        stmt = (
            update(deliveries)
            .where(deliveries.c.id == delivery_id, guard(Level.DELIVERY, to))
            .values(transition_values(Level.DELIVERY, to, fields, time.time()))
        )
        with self._tx() as conn:
            return bool(rowcount(conn.execute(stmt)))

    def outgoing(self, analysis_id: int, destination: str) -> list[Outgoing]:
        """The objects of an analysis still to be sent to one destination, in sending order.

        Returns
        -------
        list of Outgoing
            ``pending`` and ``retrying`` deliveries of the analysis's written
            reports to ``destination``, ordered by report id (profiles in the
            destination's order, each profile's objects by ordinal).
        """
        d, r = deliveries.c, reports.c
        stmt = (
            select(d.id, d.report_id, r.path, r.sop_class_uid, r.sop_instance_uid, d.attempts)
            .join(reports, r.id == d.report_id)
            .where(
                r.analysis_id == analysis_id,
                d.destination == destination,
                d.state.in_([_D.PENDING, _D.RETRYING]),
            )
            .order_by(r.id)
        )
        with self._tx() as conn:
            rows = conn.execute(stmt).mappings().all()
        return [
            Outgoing(
                delivery_id=row["id"],
                report_id=row["report_id"],
                path=row["path"],
                sop_class_uid=row["sop_class_uid"] or "",
                sop_instance_uid=row["sop_instance_uid"],
                attempts=row["attempts"],
            )
            for row in rows
        ]

    def open_destinations(self, analysis_id: int) -> list[str]:
        """Destinations with ``pending`` or ``retrying`` deliveries of an analysis (sorted)."""
        d, r = deliveries.c, reports.c
        stmt = (
            select(d.destination)
            .join(reports, r.id == d.report_id)
            .where(r.analysis_id == analysis_id, d.state.in_([_D.PENDING, _D.RETRYING]))
            .distinct()
        )
        with self._tx() as conn:
            return sorted(conn.execute(stmt).scalars().all())

    def supersede_deliveries(self, analysis_id: int) -> int:
        """Mark every open delivery of an analysis ``superseded`` (it will never be sent).

        Returns
        -------
        int
            How many deliveries changed.
        """
        ids = select(reports.c.id).where(reports.c.analysis_id == analysis_id)
        stmt = (
            update(deliveries)
            .where(deliveries.c.report_id.in_(ids), guard(Level.DELIVERY, _D.SUPERSEDED))
            .values(transition_values(Level.DELIVERY, _D.SUPERSEDED, {}, time.time()))
        )
        with self._tx() as conn:
            return rowcount(conn.execute(stmt))

    def prior_reports(
        self, study_uid: str, model_id: str, before_generation: int
    ) -> dict[tuple[str, int], PriorReport]:
        """The newest delivered report of an earlier generation, per (profile, ordinal).

        Parameters
        ----------
        study_uid, model_id : str
            The study and the model (any version) of the new reports.
        before_generation : int
            The new reports' generation; only older ones count.

        Returns
        -------
        dict of (str, int) to PriorReport
            For each (profile, ordinal) with a report of an older generation
            that was delivered to at least one destination, the newest one
            (highest generation, then latest written): the report the new one
            supersedes. Reports that never went out are not listed.
        """
        a, r, d = analyses.c, reports.c, deliveries.c
        delivered = select(d.id).where(d.report_id == r.id, d.state == _D.DELIVERED).exists()
        stmt = (
            select(r.profile, r.ordinal, r.sop_class_uid, r.sop_instance_uid, r.series_instance_uid)
            .join(analyses, a.id == r.analysis_id)
            .where(
                a.study_uid == study_uid,
                a.model_id == model_id,
                a.generation < before_generation,
                delivered,
            )
            .order_by(a.generation, r.id)
        )
        with self._tx() as conn:
            rows = conn.execute(stmt).mappings().all()
        found: dict[tuple[str, int], PriorReport] = {}
        for row in rows:  # oldest first: the newest of each key wins
            if row["sop_class_uid"] and row["series_instance_uid"]:
                found[(row["profile"], row["ordinal"])] = PriorReport(
                    sop_class_uid=row["sop_class_uid"],
                    sop_instance_uid=row["sop_instance_uid"],
                    series_instance_uid=row["series_instance_uid"],
                    study_uid=study_uid,
                )
        return found

    def dead_letters(self, include_dropped: bool = False, limit: int = 1000) -> list[DeadLetter]:
        """Deliveries that failed for good (``failed``; ``dropped`` too if asked), newest first."""
        a, r, d = analyses.c, reports.c, deliveries.c
        states = [_D.FAILED, _D.DROPPED] if include_dropped else [_D.FAILED]
        stmt = (
            select(
                d.id,
                d.destination,
                a.study_uid,
                a.generation,
                a.model_id,
                r.profile,
                r.sop_instance_uid,
                d.status,
                d.last_error,
                d.attempts,
                d.last_attempt_at,
                d.state,
            )
            .join(reports, r.id == d.report_id)
            .join(analyses, a.id == r.analysis_id)
            .where(d.state.in_(states))
            .order_by(d.last_attempt_at.desc(), d.id.desc())
            .limit(limit)
        )
        with self._tx() as conn:
            rows = conn.execute(stmt).mappings().all()
        return [
            DeadLetter(
                delivery_id=row["id"],
                destination=row["destination"],
                study_uid=row["study_uid"],
                generation=row["generation"],
                model_id=row["model_id"],
                profile=row["profile"],
                sop_instance_uid=row["sop_instance_uid"],
                status=row["status"],
                last_error=row["last_error"],
                attempts=row["attempts"],
                last_attempt_at=row["last_attempt_at"],
                state=DeliveryState(row["state"]),
            )
            for row in rows
        ]

    def count_dead_letters(self) -> int:
        """How many deliveries are dead letters (``failed``)."""
        stmt = select(func.count()).select_from(deliveries).where(deliveries.c.state == _D.FAILED)
        with self._tx() as conn:
            return int(conn.scalar(stmt) or 0)

    def reopen_dead_letters(self, delivery_ids: Sequence[int]) -> list[tuple[int, str]]:
        """Move dead letters back to ``pending`` (``dicom-node exports retry``).

        Parameters
        ----------
        delivery_ids : sequence of int
            Deliveries to retry; those not ``failed`` are left alone.

        Returns
        -------
        list of (int, str)
            The distinct (analysis id, destination) pairs to publish ``deliver`` for.
        """
        if not delivery_ids:
            return []
        d, r = deliveries.c, reports.c
        with self._tx() as conn:
            conn.execute(
                update(deliveries)
                .where(d.id.in_(list(delivery_ids)), guard(Level.DELIVERY, _D.PENDING))
                .values(
                    transition_values(Level.DELIVERY, _D.PENDING, {}, time.time()) | {"attempts": 0}
                )
            )
            rows = conn.execute(
                select(r.analysis_id, d.destination)
                .join(reports, r.id == d.report_id)
                .where(d.id.in_(list(delivery_ids)), d.state == _D.PENDING)
                .distinct()
            ).all()
        return sorted((int(a), str(dest)) for a, dest in rows)

    def drop_dead_letters(self, delivery_ids: Sequence[int]) -> int:
        """Give dead letters up (``dicom-node exports drop``); returns how many changed."""
        if not delivery_ids:
            return 0
        stmt = (
            update(deliveries)
            .where(deliveries.c.id.in_(list(delivery_ids)), guard(Level.DELIVERY, _D.DROPPED))
            .values(transition_values(Level.DELIVERY, _D.DROPPED, {}, time.time()))
        )
        with self._tx() as conn:
            return rowcount(conn.execute(stmt))
