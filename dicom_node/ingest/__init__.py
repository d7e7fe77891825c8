"""Ingest: the C-ECHO / C-STORE SCP, the spool, study completion and the task publisher.

Imports only :mod:`dicom_node.core`.
"""
