"""Studies and their instances: receiving, generations, completion, reading the fan-out."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select, update

from dicom_node.core.ledger.base import LedgerBase, guard, rowcount, transition_values
from dicom_node.core.ledger.records import InstanceRecord, InstanceRole, StudyView
from dicom_node.core.ledger.schema import analyses, instances, reports, studies
from dicom_node.core.ledger.states import AnalysisState, Level, StudyState
from dicom_node.core.ledger.views import study_views

_A, _S = AnalysisState, StudyState

NO_IMAGES = "no images: only non-image objects (SR, KOS, PR, SEG …) or our own outputs"


def _instance_row(rec: InstanceRecord, now: float) -> dict[str, Any]:
    return {
        "sop_instance_uid": rec.sop_instance_uid,
        "study_uid": rec.study_uid,
        "series_uid": rec.series_uid,
        "sop_class_uid": rec.sop_class_uid,
        "transfer_syntax_uid": rec.transfer_syntax_uid,
        "path": rec.path,
        "calling_ae": rec.calling_ae,
        "received_at": now,
        "role": rec.role.value,
    }


class StudyRows(LedgerBase):
    """Ledger methods on studies and instances."""

    def record_instance(self, rec: InstanceRecord, now: float | None = None) -> bool:
        """Record a durably stored instance and (re)open its study for receiving.

        Parameters
        ----------
        rec : InstanceRecord
            The stored instance.
        now : float, optional
            Epoch seconds; defaults to ``time.time()``.

        Returns
        -------
        bool
            True if the instance is new or changed; False for a re-send of a
            known SOP Instance UID with the same bytes (the study is not
            reopened). A new image, or a re-sent one whose bytes changed
            (``rec.changed``), for a study that left ``receiving`` reopens it
            as the next generation and supersedes its queued and running
            analyses; their reports will supersede the delivered ones. Instances whose role
            is not ``image`` never change their study's state (loop guard).
        """
        now = time.time() if now is None else now
        if rec.role != InstanceRole.IMAGE:
            return self._record_non_image(rec, now)
        s = studies.c
        with self._tx() as conn:
            self._insert_ignore(
                conn,
                studies,
                {
                    "study_uid": rec.study_uid,
                    "state": _S.RECEIVING,
                    "generation": 1,
                    "calling_ae": rec.calling_ae,
                    "instance_count": 0,
                    "first_received_at": now,
                    "last_received_at": now,
                },
            )
            new = self._insert_ignore(conn, instances, _instance_row(rec, now))
            this = studies.c.study_uid == rec.study_uid
            if not new and not rec.changed:
                conn.execute(
                    update(studies)
                    .where(this, s.state == _S.RECEIVING)
                    .values(last_received_at=now)
                )
                return False
            if not new:  # same SOP Instance UID, other bytes: the input changed
                row = _instance_row(rec, now)
                del row["sop_instance_uid"]
                conn.execute(
                    update(instances)
                    .where(instances.c.sop_instance_uid == rec.sop_instance_uid)
                    .values(row)
                )
            reopened = conn.execute(
                update(studies)
                .where(this, guard(Level.STUDY, _S.RECEIVING))
                .values(
                    state=_S.RECEIVING,
                    generation=s.generation + 1,
                    reason=None,
                    task_id=None,
                    queued_at=None,
                    finished_at=None,
                )
            )
            conn.execute(
                update(studies)
                .where(this)
                .values(
                    last_received_at=now,
                    instance_count=s.instance_count + (1 if new else 0),
                    calling_ae=rec.calling_ae,
                )
            )
            if rowcount(reopened):
                conn.execute(
                    update(analyses)
                    .where(
                        analyses.c.study_uid == rec.study_uid,
                        guard(Level.ANALYSIS, _A.SUPERSEDED),
                    )
                    .values(transition_values(Level.ANALYSIS, _A.SUPERSEDED, {}, now))
                )
            return True

    def _record_non_image(self, rec: InstanceRecord, now: float) -> bool:
        """Record a non-image or own-output instance without touching its study's state.

        A study first seen through such an object gets a row at generation 0
        in ``not_applicable``; its first image reopens it as generation 1.
        """
        with self._tx() as conn:
            self._insert_ignore(
                conn,
                studies,
                {
                    "study_uid": rec.study_uid,
                    "state": _S.NOT_APPLICABLE,
                    "generation": 0,
                    "reason": NO_IMAGES,
                    "calling_ae": rec.calling_ae,
                    "instance_count": 0,
                    "first_received_at": now,
                    "last_received_at": now,
                },
            )
            return self._insert_ignore(conn, instances, _instance_row(rec, now))

    def instance_exists(self, sop_instance_uid: str) -> bool:
        """Whether an instance with this SOP Instance UID is recorded."""
        with self._tx() as conn:
            found = conn.scalar(
                select(instances.c.sop_instance_uid).where(
                    instances.c.sop_instance_uid == sop_instance_uid
                )
            )
        return found is not None

    def is_receiving(self, study_uid: str) -> bool:
        """Whether the study exists and is in ``receiving`` (more of its images may come)."""
        with self._tx() as conn:
            state = conn.scalar(select(studies.c.state).where(studies.c.study_uid == study_uid))
        return state == _S.RECEIVING

    def calling_ae(self, study_uid: str) -> str | None:
        """The calling AE title that last sent an image of the study (None: unknown study)."""
        with self._tx() as conn:
            return conn.scalar(select(studies.c.calling_ae).where(studies.c.study_uid == study_uid))

    def produced_here(self, sop_instance_uid: str) -> bool:
        """Whether this SOP Instance UID is one of the reports this node wrote (loop guard)."""
        with self._tx() as conn:
            found = conn.scalar(
                select(reports.c.id).where(reports.c.sop_instance_uid == sop_instance_uid)
            )
        return found is not None

    def pending_studies(self) -> int:
        """How many studies wait for the workers: queued, or routed with an unfinished analysis."""
        unfinished = (
            select(analyses.c.study_uid)
            .where(analyses.c.state.in_([_A.QUEUED, _A.RUNNING]))
            .distinct()
        )
        with self._tx() as conn:
            queued = conn.scalar(
                select(func.count()).select_from(studies).where(studies.c.state == _S.QUEUED)
            )
            routed = conn.scalar(
                select(func.count())
                .select_from(studies)
                .where(studies.c.state == _S.ROUTED, studies.c.study_uid.in_(unfinished))
            )
        return int(queued or 0) + int(routed or 0)

    def due_studies(self, quiet_seconds: float, now: float | None = None) -> list[tuple[str, int]]:
        """Studies in ``receiving`` with no instance for ``quiet_seconds``.

        Returns
        -------
        list of (str, int)
            Study Instance UID and generation, oldest first.
        """
        now = time.time() if now is None else now
        with self._tx() as conn:
            rows = conn.execute(
                select(studies.c.study_uid, studies.c.generation)
                .where(studies.c.state == _S.RECEIVING)
                .where(studies.c.last_received_at <= now - quiet_seconds)
                .order_by(studies.c.last_received_at)
            ).all()
        return [(r[0], r[1]) for r in rows]

    def instance_paths(self, study_uid: str) -> list[str]:
        """Spool paths of a study's images (role ``image``), in arrival order."""
        with self._tx() as conn:
            return list(
                conn.scalars(
                    select(instances.c.path)
                    .where(instances.c.study_uid == study_uid)
                    .where(instances.c.role == InstanceRole.IMAGE)
                    .order_by(instances.c.received_at, instances.c.sop_instance_uid)
                )
            )

    def transition_study(
        self,
        study_uid: str,
        generation: int,
        to: StudyState,
        *,
        received_before: float | None = None,
        **fields: Any,
    ) -> bool:
        """Move a study's ``generation`` to ``to``, if the transition table allows it.

        Parameters
        ----------
        study_uid : str
            Study Instance UID.
        generation : int
            The generation the caller acts on.
        to : StudyState
            New state. ``queued`` sets ``queued_at``; ``routed``,
            ``not_applicable`` and ``failed`` set ``finished_at``.
        received_before : float, optional
            Epoch seconds; if given, the study's last instance must be older.
        **fields
            ``reason``, ``task_id`` or ``calling_ae``.

        Returns
        -------
        bool
            Whether the row changed. False: a newer generation exists, or the
            study is in a state the table does not allow to move to ``to``;
            the caller must stop.

        Raises
        ------
        TypeError
            If ``fields`` names another column.
        """
        stmt = update(studies).where(
            studies.c.study_uid == study_uid,
            studies.c.generation == generation,
            guard(Level.STUDY, to),
        )
        if received_before is not None:
            stmt = stmt.where(studies.c.last_received_at <= received_before)
        values = transition_values(Level.STUDY, to, fields, time.time())
        with self._tx() as conn:
            return bool(rowcount(conn.execute(stmt.values(values))))

    def reopen_unsent(self) -> int:
        """Return studies stuck in ``queued`` without a sent task to ``receiving``.

        A crash between marking a study queued and publishing its task leaves
        ``task_id`` empty; the completion monitor calls this at start-up so such
        studies are enqueued again (same generation).

        Returns
        -------
        int
            How many studies were reopened.
        """
        with self._tx() as conn:
            result = conn.execute(
                update(studies)
                .where(studies.c.state == _S.QUEUED, studies.c.task_id.is_(None))
                .where(guard(Level.STUDY, _S.RECEIVING))
                .values(transition_values(Level.STUDY, _S.RECEIVING, {}, time.time()))
            )
            return rowcount(result)

    def get(self, study_uid: str) -> StudyView | None:
        """One study with its analyses, reports and deliveries, or None."""
        with self._tx() as conn:
            rows = (
                conn.execute(select(studies).where(studies.c.study_uid == study_uid))
                .mappings()
                .all()
            )
            views = study_views(conn, rows)
        return views[0] if views else None

    def studies(self, limit: int = 100) -> list[StudyView]:
        """The ``limit`` most recently active studies (last instance received) first."""
        with self._tx() as conn:
            rows = (
                conn.execute(
                    select(studies)
                    .order_by(studies.c.last_received_at.desc(), studies.c.study_uid)
                    .limit(limit)
                )
                .mappings()
                .all()
            )
            return study_views(conn, rows)
