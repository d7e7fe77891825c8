"""Bring a ledger's schema to this release's revision, with Alembic, from code.

There is no ``alembic.ini``: :func:`alembic_config` points Alembic at the
``migrations`` folder inside this package. :func:`upgrade_ledger`

* stamps a ledger written by release 0.1.0 (tables, no ``alembic_version``)
  as ``0001``; an empty database goes straight to head;
* for SQLite, holds ``<ledger>.migrate.lock`` (:mod:`filelock`) so processes
  that open the ledger at the same time do not race, copies the file to
  ``<ledger>.<revision>.bak`` before changing an existing schema, and runs with
  foreign keys off (tables are rebuilt), checking them afterwards;
* for PostgreSQL, holds a transaction-level advisory lock;
* runs everything in one transaction: a failed upgrade changes nothing.

``dicom-node up``, ``dicom-node scp`` and the worker call it (``Ledger(url)``
does too, unless ``upgrade=False``).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from filelock import FileLock, Timeout
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from dicom_node.core.errors import LedgerError
from dicom_node.core.ledger.engine import make_engine, sqlite_path

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
LEGACY_REVISION = "0001"
"""Revision of a ledger that release 0.1.0 wrote (it had no ``alembic_version``)."""
LOCK_TIMEOUT_S = 300.0
_PG_LOCK_KEY = 0x6C6564676572  # "ledger"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for the packaged migrations.

    Parameters
    ----------
    connection : sqlalchemy.Connection, optional
        Open connection that ``env.py`` migrates (``config.attributes["connection"]``).
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The schema revision of this release (``"0003"``)."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the packaged migrations have no head"
    return head


def _revision(conn: Connection) -> tuple[str | None, bool]:
    """The schema revision, and whether it is recorded in ``alembic_version``."""
    stamped = MigrationContext.configure(conn).get_current_revision()
    if stamped is None and inspect(conn).has_table("studies"):
        return LEGACY_REVISION, False
    return stamped, stamped is not None


def current_revision(url: str) -> str | None:
    """The schema revision of the ledger at ``url``.

    Returns
    -------
    str or None
        ``"0001"`` for a ledger of release 0.1.0 (never stamped), None for an
        empty database.

    Raises
    ------
    LedgerError
        If the database cannot be reached.
    """
    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return _revision(conn)[0]
    except SQLAlchemyError as exc:
        raise LedgerError(f"cannot read the ledger schema: {exc.__class__.__name__}") from exc
    finally:
        engine.dispose()


def outdated_message(current: str | None, head: str) -> str:
    """The one-line message for a ledger that is not at ``head``."""
    if current is None:
        return (
            f"the ledger has no schema yet (this release: {head}); "
            "run `dicom-node up` or `dicom-node ledger upgrade`"
        )
    return (
        f"ledger schema {current} is older than this release ({head}); "
        "run `dicom-node up` or `dicom-node ledger upgrade`"
    )


@contextmanager
def _file_lock(db_file: str | None) -> Iterator[None]:
    if db_file is None:
        yield
        return
    lock = FileLock(f"{db_file}.migrate.lock", timeout=LOCK_TIMEOUT_S)
    try:
        with lock:
            yield
    except Timeout as exc:
        raise LedgerError(f"another process holds {lock.lock_file} for too long") from exc


def _backup(db_file: str, revision: str) -> Path:
    target = Path(f"{db_file}.{revision}.bak")
    src, dst = sqlite3.connect(db_file), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    return target


def _upgrade(conn: Connection, db_file: str | None, head: str) -> str | None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    current, stamped = _revision(conn)
    if current == head:
        return current
    if current not in (None, *_known()):
        raise LedgerError(
            f"ledger schema {current} is unknown to this release ({head}); "
            "it was written by a newer release"
        )
    if current is not None and db_file is not None:
        log.info("ledger: copied to %s before the upgrade", _backup(db_file, current))
    config = alembic_config(conn)
    if current is not None and not stamped:
        command.stamp(config, LEGACY_REVISION)
    command.upgrade(config, "head")
    if conn.dialect.name == "sqlite":
        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
        if broken:
            raise LedgerError(f"ledger upgrade broke {len(broken)} foreign key(s); rolled back")
    log.info("ledger: schema %s upgraded to %s", current or "(empty)", head)
    return current


def _known() -> set[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return {rev.revision for rev in script.walk_revisions()}


def upgrade_ledger(url: str) -> str | None:
    """Upgrade the ledger at ``url`` to :func:`head_revision`; a no-op when it is there.

    Parameters
    ----------
    url : str
        SQLAlchemy database URL (a SQLite file's directory must exist).

    Returns
    -------
    str or None
        The revision found before upgrading (None: the database was empty).

    Raises
    ------
    LedgerError
        If the database cannot be reached, its revision is unknown to this
        release, or a migration fails (nothing is changed then).
    """
    db_file = sqlite_path(url)
    if db_file is not None and not Path(db_file).parent.is_dir():
        raise LedgerError(f"ledger directory {Path(db_file).parent} does not exist")
    head = head_revision()
    engine = make_engine(url, foreign_keys=False, poolclass=NullPool)
    try:
        with _file_lock(db_file), engine.begin() as conn:
            return _upgrade(conn, db_file, head)
    except (SQLAlchemyError, CommandError, OSError) as exc:
        raise LedgerError(f"ledger upgrade failed: {exc.__class__.__name__}: {exc}") from exc
    finally:
        engine.dispose()
