"""What goes into the ledger and the read-only snapshots that come out of it.

All times are epoch seconds (float); None until the event happened.
Snapshots are frozen copies of rows: changing the ledger never changes one.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Self

from dicom_node.core.ledger.states import AnalysisState, DeliveryState, ReportState, StudyState

UNTRAINED = "untrained-demo"
"""``weights_kind`` of weights that were never trained (demo only)."""


def _copy(cls: type[Any], row: Mapping[Any, Any], state: Any) -> dict[str, Any]:
    values = {f.name: row[f.name] for f in fields(cls)}
    values["state"] = state(row["state"])
    return values


class InstanceRole(enum.StrEnum):
    """What a stored instance may start.

    ``image`` may start (or reopen) an analysis. ``non_image`` (SR, KOS, PR,
    SEG, …) and ``own_output`` (an object this node produced, forwarded back
    by a PACS) are stored and listed, but never start an analysis and never
    reopen a study: the loop guard.
    """

    IMAGE = "image"
    NON_IMAGE = "non_image"
    OWN_OUTPUT = "own_output"


@dataclass(frozen=True)
class InstanceRecord:
    """What the C-STORE handler knows about a durably stored instance (UIDs and AE only)."""

    study_uid: str
    series_uid: str | None
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    calling_ae: str | None
    role: InstanceRole = InstanceRole.IMAGE
    changed: bool = False
    """A re-send of a known SOP Instance UID whose bytes differ from the stored file
    (e.g. a PACS that changed pixels): the study is reopened as a new generation."""


@dataclass(frozen=True)
class SkippedImage:
    """An image an analysis could not use, and why (a keyword-level reason, no values)."""

    sop_instance_uid: str
    reason: str


@dataclass(frozen=True)
class StalledAnalysis:
    """A ``running`` analysis past its deadline, with the message that started it.

    Attributes
    ----------
    id : int
        Ledger id.
    task_id : str or None
        Deterministic Celery task id.
    payload : str or None
        The ``analyze`` message as published (JSON); None for rows older than 0.3.
    requeues : int
        How many times it was published again already.
    """

    id: int
    task_id: str | None
    payload: str | None
    requeues: int


@dataclass(frozen=True)
class AnalysisSpec:
    """One model that routing chose for a study generation.

    Attributes
    ----------
    model_id, model_version : str
        Manifest id and version.
    n_instances : int
        How many of the study's instances the model runs on.
    """

    model_id: str
    model_version: str
    n_instances: int


@dataclass(frozen=True)
class StudySnapshot:
    """A study's current generation.

    ``finished_at`` is when it became routed, not_applicable or failed.
    """

    study_uid: str
    state: StudyState
    generation: int
    reason: str | None
    calling_ae: str | None
    instance_count: int
    first_received_at: float
    last_received_at: float
    queued_at: float | None
    finished_at: float | None
    task_id: str | None

    @classmethod
    def of(cls, row: Mapping[Any, Any]) -> Self:
        """Copy a ``studies`` row."""
        return cls(**_copy(cls, row, StudyState))


@dataclass(frozen=True)
class AnalysisSnapshot:
    """One model's analysis of one study generation.

    ``queued_at`` is when routing created it, ``started_at`` when a worker
    claimed it, ``finished_at`` when it reached a final state.
    """

    id: int
    study_uid: str
    generation: int
    model_id: str
    model_version: str
    state: AnalysisState
    reason: str | None
    backend: str | None
    weights_kind: str | None
    weights_sha256: str | None
    task_id: str | None
    n_instances: int
    queued_at: float
    started_at: float | None
    finished_at: float | None
    requeues: int = 0
    skipped: tuple[SkippedImage, ...] = ()

    @property
    def untrained(self) -> bool:
        """Whether it ran (or runs) on untrained demo weights."""
        return self.weights_kind == UNTRAINED

    @classmethod
    def of(cls, row: Mapping[Any, Any]) -> Self:
        """Copy an ``analyses`` row (``skipped`` is decoded from its JSON column)."""
        values = _copy(cls, row, AnalysisState)
        values["requeues"] = row["requeues"] or 0
        values["skipped"] = decode_skipped(row["skipped"])
        return cls(**values)


def encode_skipped(skipped: Sequence[SkippedImage]) -> str | None:
    """The ``analyses.skipped`` column value: JSON, or None for an empty list."""
    if not skipped:
        return None
    return json.dumps(
        [{"sop_instance_uid": s.sop_instance_uid, "reason": s.reason} for s in skipped]
    )


def decode_skipped(text: str | None) -> tuple[SkippedImage, ...]:
    """Decode the ``analyses.skipped`` column; unreadable JSON gives an empty tuple."""
    if not text:
        return ()
    try:
        items = json.loads(text)
        return tuple(SkippedImage(str(i["sop_instance_uid"]), str(i["reason"])) for i in items)
    except (ValueError, KeyError, TypeError):
        return ()


@dataclass(frozen=True)
class ReportSnapshot:
    """One report file of an analysis in one output profile (e.g. ``tid1500``).

    ``series_instance_uid`` is None only for reports migrated from release 0.1.0.
    """

    id: int
    analysis_id: int
    profile: str
    sop_instance_uid: str
    series_instance_uid: str | None
    path: str
    state: ReportState
    created_at: float
    sop_class_uid: str | None = None
    ordinal: int = 0

    @classmethod
    def of(cls, row: Mapping[Any, Any]) -> Self:
        """Copy a ``reports`` row."""
        return cls(**_copy(cls, row, ReportState))


@dataclass(frozen=True)
class DeliverySnapshot:
    """Sending one report to one destination (its name, e.g. ``pacs`` or ``outbox``).

    ``status`` is the last DIMSE status the destination answered (STOW-RS answers
    mapped to one), ``warning`` the warning it came with when delivered with one.
    """

    id: int
    report_id: int
    destination: str
    state: DeliveryState
    attempts: int
    last_error: str | None
    created_at: float
    last_attempt_at: float | None
    delivered_at: float | None
    status: int | None = None
    warning: str | None = None

    @classmethod
    def of(cls, row: Mapping[Any, Any]) -> Self:
        """Copy a ``deliveries`` row."""
        return cls(**_copy(cls, row, DeliveryState))


@dataclass(frozen=True)
class ReportView:
    """A report and its deliveries (oldest first)."""

    report: ReportSnapshot
    deliveries: tuple[DeliverySnapshot, ...]


@dataclass(frozen=True)
class AnalysisView:
    """An analysis and its reports (oldest first)."""

    analysis: AnalysisSnapshot
    reports: tuple[ReportView, ...]


@dataclass(frozen=True)
class StudyView:
    """A study and its analyses: newest generation first, then by model id."""

    study: StudySnapshot
    analyses: tuple[AnalysisView, ...]


@dataclass(frozen=True)
class PriorReport:
    """A report that already went out, which a newer report of the same study supersedes.

    Referenced in the Predecessor Documents Sequence (0040,A360) of the new SR
    (PS3.3 C.17.2.1) and kept in the same series.
    """

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_uid: str


@dataclass(frozen=True)
class Outgoing:
    """One report object waiting to go to one destination (what ``deliver`` sends)."""

    delivery_id: int
    report_id: int
    path: str
    sop_class_uid: str
    sop_instance_uid: str
    attempts: int


@dataclass(frozen=True)
class DeadLetter:
    """A delivery that failed for good, for ``dicom-node exports`` (UIDs only, no PHI)."""

    delivery_id: int
    destination: str
    study_uid: str
    generation: int
    model_id: str
    profile: str
    sop_instance_uid: str
    status: int | None
    last_error: str | None
    attempts: int
    last_attempt_at: float | None
    state: DeliveryState
