"""Reports (one per analysis and profile) and deliveries (one per report and destination)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, update

from dicom_node.core.ledger.base import LedgerBase, guard, rowcount, transition_values
from dicom_node.core.ledger.records import DeliverySnapshot, ReportSnapshot
from dicom_node.core.ledger.schema import deliveries, reports
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
    ) -> ReportSnapshot:
        """Record a written report file (idempotent on ``(analysis_id, profile)``).

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
                {"analysis_id": analysis_id, "profile": profile},
                {
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
            ``AE@host:port`` of a C-STORE SCP, or ``outbox``.

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

    def record_delivery_attempt(self, delivery_id: int, error: str | None) -> bool:
        """Count one attempt to send a report.

        Parameters
        ----------
        delivery_id : int
            Ledger id of the delivery.
        error : str or None
            Why the attempt failed (the delivery becomes ``retrying``), or None
            before or after a successful attempt (state unchanged; move it to
            ``delivered`` with :meth:`transition_delivery`).

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
            ``last_error``.

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
