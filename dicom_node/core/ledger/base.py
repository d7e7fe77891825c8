"""What every part of the ledger shares: its connection, and the transition table in SQL.

:func:`guard` turns :func:`~dicom_node.core.ledger.states.allowed_from` into the
``WHERE state IN (…)`` of every state change; :func:`transition_values` builds
its ``SET`` (state, allowed fields, the state's time column).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    RowMapping,
    Table,
    case,
    insert,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from dicom_node.core.errors import LedgerError
from dicom_node.core.ledger.engine import make_engine
from dicom_node.core.ledger.migrate import current_revision, head_revision, outdated_message
from dicom_node.core.ledger.migrate import upgrade_ledger as _upgrade_ledger
from dicom_node.core.ledger.schema import analyses, deliveries, reports, studies
from dicom_node.core.ledger.states import (
    AnalysisState,
    DeliveryState,
    Level,
    StudyState,
    allowed_from,
)

_A, _D, _S = AnalysisState, DeliveryState, StudyState

TABLES: Final[dict[Level, Table]] = {
    Level.STUDY: studies,
    Level.ANALYSIS: analyses,
    Level.REPORT: reports,
    Level.DELIVERY: deliveries,
}
STAMPS: Final[dict[Level, dict[str, str]]] = {
    Level.STUDY: {
        _S.QUEUED: "queued_at",
        _S.ROUTED: "finished_at",
        _S.NOT_APPLICABLE: "finished_at",
        _S.FAILED: "finished_at",
    },
    Level.ANALYSIS: {
        _A.RUNNING: "started_at",
        _A.REPORTED: "finished_at",
        _A.NOT_APPLICABLE: "finished_at",
        _A.FAILED: "finished_at",
        _A.SUPERSEDED: "finished_at",
    },
    Level.REPORT: {},
    Level.DELIVERY: {_D.DELIVERED: "delivered_at"},
}
"""Level → state → the time column set when a row enters that state."""
SETTABLE: Final[dict[Level, frozenset[str]]] = {
    Level.STUDY: frozenset({"reason", "task_id", "calling_ae"}),
    Level.ANALYSIS: frozenset(
        {"reason", "backend", "weights_kind", "weights_sha256", "task_id", "n_instances"}
    ),
    Level.REPORT: frozenset({"path"}),
    Level.DELIVERY: frozenset({"last_error", "status", "warning"}),
}
"""Level → the columns a transition may set besides its state and time."""


def rowcount(result: Any) -> int:
    """Rows an UPDATE or INSERT changed."""
    return int(cast(CursorResult[Any], result).rowcount)


def transition_values(
    level: Level, to: str, fields: Mapping[str, Any], now: float
) -> dict[str, Any]:
    """SET clause of a transition: state, other fields, and the state's time column."""
    unknown = set(fields) - SETTABLE[level]
    if unknown:
        raise TypeError(
            f"a {level.value} transition cannot set {sorted(unknown)}; "
            f"settable: {sorted(SETTABLE[level])}"
        )
    table = TABLES[level]
    values: dict[str, Any] = {"state": to, **fields}
    stamp = STAMPS[level].get(to)
    if stamp:  # a self-transition (queued → queued) keeps the first time
        column = table.c[stamp]
        values[stamp] = case((or_(table.c.state != to, column.is_(None)), now), else_=column)
    return values


def guard(level: Level, to: str) -> ColumnElement[bool]:
    """``state IN allowed_from(level, to)``: the transition table, in SQL."""
    return TABLES[level].c.state.in_(sorted(allowed_from(level, to)))


class LedgerBase:
    """Opens (and upgrades) the database and hands out transactions.

    Parameters
    ----------
    url : str
        SQLAlchemy database URL (``sqlite:////abs/path/ledger.sqlite``).
    upgrade : bool, optional
        Upgrade the schema to this release first (default). With False (for
        read-only commands), a schema that is not at head raises instead.
    durable_commits : bool, optional
        SQLite: fsync every commit (default). The SCP passes False: its spool
        is the source of truth and is reconciled with the ledger at start.

    Raises
    ------
    LedgerError
        If the schema is outdated (``upgrade=False``) or cannot be upgraded,
        or the database cannot be reached.
    """

    def __init__(self, url: str, *, upgrade: bool = True, durable_commits: bool = True) -> None:
        self.url = url
        if upgrade:
            _upgrade_ledger(url)
        else:
            current, head = current_revision(url), head_revision()
            if current != head:
                raise LedgerError(outdated_message(current, head))
        self._engine: Engine = make_engine(url, synchronous="FULL" if durable_commits else "NORMAL")

    def dispose(self) -> None:
        """Close pooled connections."""
        self._engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self._engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise LedgerError(f"ledger error: {exc.__class__.__name__}: {exc}") from exc

    @staticmethod
    def _row(conn: Connection, table: Table, *where: ColumnElement[bool]) -> RowMapping | None:
        """The one row of ``table`` matching ``where``, or None."""
        return conn.execute(select(table).where(*where)).mappings().one_or_none()

    def _insert_or_get(
        self,
        conn: Connection,
        table: Table,
        natural: Mapping[str, Any],
        values: Mapping[str, Any],
        conflict: str,
    ) -> RowMapping:
        """Insert a row unless its natural key exists; return the row with that key.

        Parameters
        ----------
        natural : mapping
            The natural key's columns (a UNIQUE constraint of ``table``).
        values : mapping
            The other columns of a new row.
        conflict : str
            Message of the LedgerError raised when another unique key blocked
            the insert and no row has ``natural``.
        """
        self._insert_ignore(conn, table, {**natural, **values})
        row = self._row(conn, table, *(table.c[k] == v for k, v in natural.items()))
        if row is None:
            raise LedgerError(conflict)
        return row

    @staticmethod
    def _insert_ignore(conn: Connection, table: Table, values: Mapping[str, Any]) -> bool:
        """Insert unless a unique key exists; return whether a row was added."""
        dialect = conn.dialect.name
        if dialect in ("sqlite", "postgresql"):
            mod: Any = sqlite if dialect == "sqlite" else postgresql
            stmt = mod.insert(table).values(**values).on_conflict_do_nothing()
            return bool(rowcount(conn.execute(stmt)))
        try:
            with conn.begin_nested():
                conn.execute(insert(table).values(**values))
        except IntegrityError:
            return False
        return True
