"""Alembic migrations of the ledger, run from code by :mod:`..migrate` (no alembic.ini)."""
