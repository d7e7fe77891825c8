"""The study ledger: studies and instances, fanned out into analyses, reports and deliveries.

Every state change is one ``UPDATE … WHERE state IN allowed_from(level, to)``
(:mod:`dicom_node.core.ledger.states` holds the one transition table), so a
change the table does not allow changes nothing and returns False. Inserts of
analyses, reports and deliveries are insert-or-ignore on their natural keys
and return the row that exists, so a task that runs twice makes no second row.

A study's ``generation`` grows by one when a *new* instance arrives after the
study left ``receiving``; that study's queued and running analyses become
``superseded``, and transitions of the older generation fail from then on.

SQLite (WAL, ``synchronous=FULL``, ``busy_timeout``, foreign keys) in the data
directory is the default; any SQLAlchemy URL works (PostgreSQL for several
SCP hosts). Every write transaction starts with a write, so SQLite takes its
write lock first and waits for it (``busy_timeout``) instead of failing.
"""

from __future__ import annotations

from dicom_node.core.ledger.analyses import AnalysisRows
from dicom_node.core.ledger.outputs import OutputRows
from dicom_node.core.ledger.studies import StudyRows


class Ledger(StudyRows, AnalysisRows, OutputRows):
    """Persistent record of studies, instances, analyses, reports and deliveries.

    Parameters
    ----------
    url : str
        SQLAlchemy database URL (``sqlite:////abs/path/ledger.sqlite``).
    upgrade : bool, optional
        Upgrade the schema to this release first (default; under a file lock).
        With False (read-only commands), a schema not at head raises instead.
    durable_commits : bool, optional
        SQLite: fsync every commit (default). The SCP passes False; its spool
        is the source of truth, reconciled with the ledger at start.

    Raises
    ------
    LedgerError
        From the constructor when the schema is outdated (``upgrade=False``) or
        cannot be upgraded, and from every method when the database cannot be
        reached or written.
    """
