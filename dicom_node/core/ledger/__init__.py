"""The study ledger: a study fans out into analyses, reports and deliveries.

::

    study (study_uid, generation) ──< analysis (model id, version) ──< report (profile)
                                                                   ──< delivery (destination)

Modules, one job each: :mod:`.states` (states and the one transition table),
:mod:`.schema` (tables at head), :mod:`.records` (inputs and snapshots),
:mod:`.base` (connection; the table as SQL guards), :mod:`.studies`,
:mod:`.analyses` and :mod:`.outputs` (reports, deliveries) (the methods of each
level), :mod:`.store` (:class:`Ledger`, all of them), :mod:`.views` (reading
the fan-out), :mod:`.engine` (durable SQLite engines), :mod:`.migrate`
(Alembic upgrades; revisions in ``migrations/versions``).
"""

from __future__ import annotations

import logging

from dicom_node.core.ledger.migrate import current_revision, head_revision, upgrade_ledger
from dicom_node.core.ledger.records import (
    UNTRAINED,
    AnalysisSnapshot,
    AnalysisSpec,
    AnalysisView,
    DeadLetter,
    DeliverySnapshot,
    InstanceRecord,
    InstanceRole,
    Outgoing,
    PriorReport,
    ReportSnapshot,
    ReportView,
    SkippedImage,
    StalledAnalysis,
    StudySnapshot,
    StudyView,
)
from dicom_node.core.ledger.states import (
    TRANSITIONS,
    AnalysisState,
    DeliveryState,
    Level,
    ReportState,
    StudyState,
    allowed_from,
    is_allowed,
)
from dicom_node.core.ledger.store import Ledger

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "TRANSITIONS",
    "UNTRAINED",
    "AnalysisSnapshot",
    "AnalysisSpec",
    "AnalysisState",
    "AnalysisView",
    "DeadLetter",
    "DeliverySnapshot",
    "DeliveryState",
    "InstanceRecord",
    "InstanceRole",
    "Ledger",
    "Level",
    "Outgoing",
    "PriorReport",
    "ReportSnapshot",
    "ReportState",
    "ReportView",
    "SkippedImage",
    "StalledAnalysis",
    "StudySnapshot",
    "StudyState",
    "StudyView",
    "allowed_from",
    "current_revision",
    "head_revision",
    "is_allowed",
    "upgrade_ledger",
]
