"""The DICOM listener: C-ECHO / C-STORE SCP, durable spool and study ledger."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
