"""The kernel: errors, settings, durable writes, UIDs, DIMSE status, the ledger, the task contract.

It imports nothing else of ours; every other layer builds on it.
"""
