"""The ledger's tables at the head revision (what the migrations build).

::

    studies      study_uid (PK), state, generation, reason, calling_ae, instance_count,
                 first_received_at, last_received_at, queued_at, finished_at, task_id
    instances    sop_instance_uid (PK), study_uid → studies, series_uid, sop_class_uid,
                 transfer_syntax_uid, path, calling_ae, received_at
    analyses     id (PK), UNIQUE (study_uid → studies, generation, model_id, model_version),
                 state, reason, backend, weights_kind, weights_sha256, task_id, n_instances,
                 queued_at, started_at, finished_at
    reports      id (PK), UNIQUE (analysis_id → analyses, profile, ordinal),
                 sop_instance_uid (UNIQUE), series_instance_uid, sop_class_uid, path, state,
                 created_at  (ordinal: a profile's objects in sending order, e.g. SC 0, KOS 1)
    deliveries   id (PK), UNIQUE (report_id → reports, destination), state, attempts,
                 last_error, status, warning, created_at, last_attempt_at, delivered_at

Times are epoch seconds (float). Only UIDs, AE titles, model ids, paths and
reasons are stored: no patient data.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

studies = Table(
    "studies",
    metadata,
    Column("study_uid", String(64), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("generation", Integer, nullable=False),
    Column("reason", Text),
    Column("calling_ae", String(16)),
    Column("instance_count", Integer, nullable=False),
    Column("first_received_at", Float, nullable=False),
    Column("last_received_at", Float, nullable=False),
    Column("queued_at", Float),
    Column("finished_at", Float),
    Column("task_id", String(160)),
    Index("ix_studies_state", "state"),
    Index("ix_studies_last_received_at", "last_received_at"),
)

instances = Table(
    "instances",
    metadata,
    Column("sop_instance_uid", String(64), primary_key=True),
    Column("study_uid", String(64), ForeignKey("studies.study_uid"), nullable=False),
    Column("series_uid", String(64)),
    Column("sop_class_uid", String(64), nullable=False),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("path", Text, nullable=False),
    Column("calling_ae", String(16)),
    Column("received_at", Float, nullable=False),
    Column("role", String(16), nullable=False, server_default="image"),
    Index("ix_instances_study_uid", "study_uid"),
)

analyses = Table(
    "analyses",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_uid", String(64), ForeignKey("studies.study_uid"), nullable=False),
    Column("generation", Integer, nullable=False),
    Column("model_id", String(64), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("reason", Text),
    Column("backend", String(32)),
    Column("weights_kind", String(16)),
    Column("weights_sha256", String(64)),
    Column("task_id", String(160)),
    Column("n_instances", Integer, nullable=False),
    Column("queued_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("payload", Text),
    Column("requeues", Integer, nullable=False, server_default="0"),
    Column("skipped", Text),
    UniqueConstraint(
        "study_uid", "generation", "model_id", "model_version", name="uq_analyses_natural_key"
    ),
    Index("ix_analyses_state", "state"),
)

reports = Table(
    "reports",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("analysis_id", Integer, ForeignKey("analyses.id"), nullable=False),
    Column("profile", String(32), nullable=False),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("series_instance_uid", String(64)),
    Column("path", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("sop_class_uid", String(64)),
    Column("ordinal", Integer, nullable=False, server_default="0"),
    UniqueConstraint("analysis_id", "profile", "ordinal", name="uq_reports_natural_key"),
    UniqueConstraint("sop_instance_uid", name="uq_reports_sop_instance_uid"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("report_id", Integer, ForeignKey("reports.id"), nullable=False),
    Column("destination", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text),
    Column("created_at", Float, nullable=False),
    Column("last_attempt_at", Float),
    Column("delivered_at", Float),
    Column("status", Integer),
    Column("warning", Text),
    UniqueConstraint("report_id", "destination", name="uq_deliveries_natural_key"),
    Index("ix_deliveries_state", "state"),
)
