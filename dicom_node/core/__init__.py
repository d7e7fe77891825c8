"""The kernel: errors, settings, durable writes, UIDs, DIMSE status codes, the ledger and
the task contract. It imports nothing else of ours; every other layer builds on it."""
