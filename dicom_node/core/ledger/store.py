"""The study ledger: one row per study and per instance, with each study's state.

States (:class:`StudyState`)::

    receiving → queued → inferring → reported → delivered
                                   ↘ not_applicable (no model applies)
    any of them → failed (with a reason)

A study's ``generation`` grows by one when a *new* instance arrives after the
study left ``receiving``. Every later transition names the generation it acts
on, so a task for an older generation can never overwrite a newer one's state.

SQLite (WAL, ``synchronous=FULL``) in the data directory is the default; any
SQLAlchemy URL works (PostgreSQL for several SCP hosts).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    Engine,
    Float,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    case,
    create_engine,
    event,
    select,
    update,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from dicom_node.core.errors import LedgerError


class StudyState(enum.StrEnum):
    """Lifecycle of a study in the node."""

    RECEIVING = "receiving"
    QUEUED = "queued"
    INFERRING = "inferring"
    REPORTED = "reported"
    DELIVERED = "delivered"
    NOT_APPLICABLE = "not_applicable"
    FAILED = "failed"


ACTIVE_STATES = (StudyState.RECEIVING, StudyState.QUEUED, StudyState.INFERRING)


class _Base(DeclarativeBase):
    pass


class StudyRow(_Base):
    """A study: identified by Study Instance UID."""

    __tablename__ = "studies"

    study_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    calling_ae: Mapped[str | None] = mapped_column(String(16), nullable=True)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[float] = mapped_column(Float)
    last_received_at: Mapped[float] = mapped_column(Float, index=True)
    queued_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    inferring_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    reported_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    delivered_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    task_id: Mapped[str | None] = mapped_column(String(160), nullable=True)
    model_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    weights_kind: Mapped[str | None] = mapped_column(String(16), nullable=True)
    report_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    report_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    destination: Mapped[str | None] = mapped_column(Text, nullable=True)
    delivery_attempts: Mapped[int] = mapped_column(Integer, default=0)


class InstanceRow(_Base):
    """A received instance: where its bytes are and what it is."""

    __tablename__ = "instances"

    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_uid: Mapped[str] = mapped_column(ForeignKey("studies.study_uid"), index=True)
    series_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    calling_ae: Mapped[str | None] = mapped_column(String(16), nullable=True)
    received_at: Mapped[float] = mapped_column(Float)


@dataclass(frozen=True)
class InstanceRecord:
    """What the C-STORE handler knows about a stored instance."""

    study_uid: str
    series_uid: str | None
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    calling_ae: str | None


@dataclass(frozen=True)
class StudySnapshot:
    """A read-only copy of a study row."""

    study_uid: str
    state: StudyState
    generation: int
    reason: str | None
    calling_ae: str | None
    instance_count: int
    first_received_at: float
    last_received_at: float
    queued_at: float | None
    inferring_at: float | None
    reported_at: float | None
    delivered_at: float | None
    finished_at: float | None
    task_id: str | None
    model_id: str | None
    weights_kind: str | None
    report_uid: str | None
    report_path: str | None
    destination: str | None
    delivery_attempts: int

    @classmethod
    def of(cls, row: StudyRow) -> StudySnapshot:
        """Copy an ORM row."""
        values = {name: getattr(row, name) for name in cls.__dataclass_fields__}
        values["state"] = StudyState(row.state)
        return cls(**values)


def _rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Ledger:
    """Persistent record of studies and instances.

    Parameters
    ----------
    url : str
        SQLAlchemy database URL.

    Raises
    ------
    LedgerError
        From every method, when the database cannot be reached or written.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self._engine: Engine = create_engine(url, future=True)
            if self._engine.dialect.name == "sqlite":
                event.listen(self._engine, "connect", _sqlite_pragmas)
            _Base.metadata.create_all(self._engine)
        except SQLAlchemyError as exc:
            raise LedgerError(f"cannot open ledger: {exc.__class__.__name__}") from exc
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)

    def dispose(self) -> None:
        """Close pooled connections."""
        self._engine.dispose()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        try:
            with self._sessions.begin() as session:
                yield session
        except SQLAlchemyError as exc:
            raise LedgerError(f"ledger error: {exc.__class__.__name__}: {exc}") from exc

    def _insert_ignore(self, session: Session, row: _Base) -> bool:
        """Insert ``row`` unless its primary key exists; return whether it was new."""
        table = cast(Table, row.__table__)
        values = {
            c.name: getattr(row, c.key) for c in table.columns if getattr(row, c.key) is not None
        }
        if self._engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt: Any = pg_insert(table).values(**values).on_conflict_do_nothing()
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(table).values(**values).on_conflict_do_nothing()
        return bool(_rowcount(session.execute(stmt)))

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
            True if the instance is new, False if it was a re-send of a known
            SOP Instance UID (its file was replaced; the study is not reopened).
        """
        now = time.time() if now is None else now
        with self._session() as s:
            self._insert_ignore(
                s,
                StudyRow(
                    study_uid=rec.study_uid,
                    state=StudyState.RECEIVING.value,
                    generation=1,
                    calling_ae=rec.calling_ae,
                    instance_count=0,
                    first_received_at=now,
                    last_received_at=now,
                    delivery_attempts=0,
                ),
            )
            new = self._insert_ignore(
                s,
                InstanceRow(
                    sop_instance_uid=rec.sop_instance_uid,
                    study_uid=rec.study_uid,
                    series_uid=rec.series_uid,
                    sop_class_uid=rec.sop_class_uid,
                    transfer_syntax_uid=rec.transfer_syntax_uid,
                    path=rec.path,
                    calling_ae=rec.calling_ae,
                    received_at=now,
                ),
            )
            study = StudyRow.__table__.c
            if new:
                reopen = study.state != StudyState.RECEIVING.value
                s.execute(
                    update(StudyRow)
                    .where(study.study_uid == rec.study_uid)
                    .values(
                        generation=case((reopen, study.generation + 1), else_=study.generation),
                        state=StudyState.RECEIVING.value,
                        reason=None,
                        last_received_at=now,
                        instance_count=study.instance_count + 1,
                        calling_ae=rec.calling_ae,
                    )
                )
            else:
                s.execute(
                    update(StudyRow)
                    .where(study.study_uid == rec.study_uid)
                    .where(study.state == StudyState.RECEIVING.value)
                    .values(last_received_at=now)
                )
            return new

    def due_studies(self, quiet_seconds: float, now: float | None = None) -> list[tuple[str, int]]:
        """Studies in ``receiving`` with no instance for ``quiet_seconds``.

        Returns
        -------
        list of (str, int)
            Study Instance UID and generation, oldest first.
        """
        now = time.time() if now is None else now
        with self._session() as s:
            rows = s.execute(
                select(StudyRow.study_uid, StudyRow.generation)
                .where(StudyRow.state == StudyState.RECEIVING.value)
                .where(StudyRow.last_received_at <= now - quiet_seconds)
                .order_by(StudyRow.last_received_at)
            ).all()
        return [(r[0], r[1]) for r in rows]

    def instance_paths(self, study_uid: str) -> list[str]:
        """Spool paths of a study's instances, in arrival order."""
        with self._session() as s:
            return list(
                s.scalars(
                    select(InstanceRow.path)
                    .where(InstanceRow.study_uid == study_uid)
                    .order_by(InstanceRow.received_at, InstanceRow.sop_instance_uid)
                )
            )

    def transition(
        self,
        study_uid: str,
        generation: int,
        to: StudyState,
        *,
        allowed_from: Sequence[StudyState],
        received_before: float | None = None,
        **fields: Any,
    ) -> bool:
        """Move a study to ``to`` if it is still at ``generation`` and in ``allowed_from``.

        Parameters
        ----------
        study_uid : str
            Study Instance UID.
        generation : int
            The generation the caller acts on.
        to : StudyState
            New state; its timestamp column (``queued_at`` ...) is set to now.
        allowed_from : sequence of StudyState
            States the study may be in.
        received_before : float, optional
            Epoch seconds; if given, the study's last instance must be older.
        **fields
            Other columns to set (``reason``, ``report_uid`` ...).

        Returns
        -------
        bool
            Whether the row changed. False means a newer generation or another
            worker owns the study; the caller must stop.
        """
        now = time.time()
        stamp = {
            StudyState.QUEUED: "queued_at",
            StudyState.INFERRING: "inferring_at",
            StudyState.REPORTED: "reported_at",
            StudyState.DELIVERED: "delivered_at",
        }.get(to)
        values: dict[str, Any] = {"state": to.value, **fields}
        if stamp:
            values[stamp] = now
        if to in (StudyState.DELIVERED, StudyState.NOT_APPLICABLE, StudyState.FAILED):
            values["finished_at"] = now
        stmt = (
            update(StudyRow)
            .where(StudyRow.study_uid == study_uid)
            .where(StudyRow.generation == generation)
            .where(StudyRow.state.in_([st.value for st in allowed_from]))
        )
        if received_before is not None:
            stmt = stmt.where(StudyRow.last_received_at <= received_before)
        with self._session() as s:
            return bool(_rowcount(s.execute(stmt.values(**values))))

    def note(self, study_uid: str, generation: int, **fields: Any) -> None:
        """Set columns of a study's current generation without changing its state."""
        with self._session() as s:
            s.execute(
                update(StudyRow)
                .where(StudyRow.study_uid == study_uid)
                .where(StudyRow.generation == generation)
                .values(**fields)
            )

    def count_delivery_attempt(self, study_uid: str, generation: int) -> None:
        """Add one to a study's delivery attempt counter."""
        with self._session() as s:
            s.execute(
                update(StudyRow)
                .where(StudyRow.study_uid == study_uid)
                .where(StudyRow.generation == generation)
                .values(delivery_attempts=StudyRow.delivery_attempts + 1)
            )

    def reopen_unsent(self) -> int:
        """Return studies stuck in ``queued`` without a sent task to ``receiving``.

        A crash between marking a study queued and publishing its task leaves
        ``task_id`` empty; the completion monitor calls this at start-up so such
        studies are enqueued again.

        Returns
        -------
        int
            How many studies were reopened.
        """
        with self._session() as s:
            result = s.execute(
                update(StudyRow)
                .where(StudyRow.state == StudyState.QUEUED.value)
                .where(StudyRow.task_id.is_(None))
                .values(state=StudyState.RECEIVING.value)
            )
            return _rowcount(result)

    def get(self, study_uid: str) -> StudySnapshot | None:
        """One study, or None."""
        with self._session() as s:
            row = s.get(StudyRow, study_uid)
            return StudySnapshot.of(row) if row else None

    def studies(self, limit: int = 100) -> list[StudySnapshot]:
        """Most recently active studies first."""
        with self._session() as s:
            rows = s.scalars(
                select(StudyRow).order_by(StudyRow.last_received_at.desc()).limit(limit)
            ).all()
            return [StudySnapshot.of(r) for r in rows]
