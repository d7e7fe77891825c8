"""SQLAlchemy engines for the ledger, with SQLite made durable and transactional.

SQLite connections get ``journal_mode=WAL``, ``synchronous=FULL``, a 30 s
``busy_timeout`` and ``foreign_keys=ON`` (OFF for migrations, which rebuild
tables that others reference). Python's ``sqlite3`` driver is put in autocommit
mode and every SQLAlchemy transaction emits its own ``BEGIN``, so a transaction
(DDL included) is atomic and its reads see one snapshot.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from dicom_node.core.errors import LedgerError


def is_sqlite(url: str) -> bool:
    """Whether ``url`` names a SQLite database."""
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL; None for other databases.

    Raises
    ------
    LedgerError
        For an in-memory SQLite database, which several processes cannot share.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or parsed.query.get("mode") == "memory":
        raise LedgerError("an in-memory SQLite ledger is not supported; give a file path")
    return database


def make_engine(
    url: str, *, foreign_keys: bool = True, synchronous: str = "FULL", **kwargs: Any
) -> Engine:
    """An engine for ``url``.

    Parameters
    ----------
    url : str
        SQLAlchemy database URL.
    foreign_keys : bool, optional
        SQLite only: enforce foreign keys. Default True.
    synchronous : {"FULL", "NORMAL"}, optional
        SQLite only. ``FULL`` fsyncs the WAL at every commit. ``NORMAL`` is
        used where a source of truth on disk can rebuild the last commits
        after a power loss (the SCP: the spool is reconciled at start).
    **kwargs
        Passed to :func:`sqlalchemy.create_engine` (``poolclass`` …).

    Raises
    ------
    LedgerError
        If the URL is invalid or its driver is missing.
    """
    try:
        sqlite_path(url)
        engine = create_engine(url, **kwargs)
    except (ArgumentError, SQLAlchemyError, ImportError, ValueError) as exc:
        raise LedgerError(f"cannot open ledger: {exc.__class__.__name__}: {exc}") from exc
    if engine.dialect.name == "sqlite":
        pragmas = (
            "PRAGMA journal_mode=WAL",
            f"PRAGMA synchronous={'NORMAL' if synchronous == 'NORMAL' else 'FULL'}",
            "PRAGMA busy_timeout=30000",
            f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}",
        )

        def _connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cursor = dbapi_conn.cursor()
            for pragma in pragmas:
                cursor.execute(pragma)
            cursor.close()

        def _begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN")

        event.listen(engine, "connect", _connect)
        event.listen(engine, "begin", _begin)
    return engine
