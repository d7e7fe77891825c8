"""Ledger revisions, oldest first: ``0001`` (release 0.1.0), ``0002`` (fan-out)."""
