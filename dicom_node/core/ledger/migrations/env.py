"""Alembic environment: migrate the connection that :mod:`..migrate` hands over.

There is no ``alembic.ini``: :func:`dicom_node.core.ledger.migrate.alembic_config`
builds the configuration and puts an open connection, inside its transaction,
in ``config.attributes["connection"]``. Offline (SQL script) mode is not used.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
