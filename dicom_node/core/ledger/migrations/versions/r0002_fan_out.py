"""Fan-out: a study has analyses, an analysis reports, a report deliveries.

Creates ``analyses``, ``reports`` and ``deliveries``, moves each 0.1.0 study
row's model, report and delivery into them, maps the old study states, and
drops the moved columns from ``studies``:

==============  ==============  ===========================================
0.1.0 study     study           analysis / report / delivery
==============  ==============  ===========================================
receiving       receiving       -
queued          queued          - (task id cleared: re-published at start)
inferring       routed          running
reported        routed          reported, report written, delivery retrying
                                (only if an attempt was made)
delivered       routed          reported, report written, delivery delivered
not_applicable  not_applicable  not_applicable (if a model was named)
failed          failed          failed (if a model was named)
==============  ==============  ===========================================

Release 0.1.0 did not record model versions (``"unknown"``), report series
UIDs (NULL) or profiles (its one profile was ``tid1500``). A pending
delivery's destination is read from its ``delivery pending: …`` reason.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

MOVED = (
    "inferring_at",
    "reported_at",
    "delivered_at",
    "model_id",
    "weights_kind",
    "report_uid",
    "report_path",
    "destination",
    "delivery_attempts",
)
_PEER = re.compile(r"[^\s@]+@[^\s@:]+:\d+")
_PENDING = "delivery pending: "

_old = sa.table(
    "studies",
    *(
        sa.column(name)
        for name in (
            "study_uid",
            "state",
            "generation",
            "reason",
            "instance_count",
            "last_received_at",
            "queued_at",
            "finished_at",
            "task_id",
            *MOVED,
        )
    ),
)


def _create_tables() -> tuple[sa.Table, sa.Table, sa.Table]:
    analyses = op.create_table(
        "analyses",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("study_uid", sa.String(64), sa.ForeignKey("studies.study_uid"), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("model_id", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("backend", sa.String(32)),
        sa.Column("weights_kind", sa.String(16)),
        sa.Column("weights_sha256", sa.String(64)),
        sa.Column("task_id", sa.String(160)),
        sa.Column("n_instances", sa.Integer, nullable=False),
        sa.Column("queued_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("finished_at", sa.Float),
        sa.UniqueConstraint(
            "study_uid", "generation", "model_id", "model_version", name="uq_analyses_natural_key"
        ),
    )
    op.create_index("ix_analyses_state", "analyses", ["state"])
    reports = op.create_table(
        "reports",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("analysis_id", sa.Integer, sa.ForeignKey("analyses.id"), nullable=False),
        sa.Column("profile", sa.String(32), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("series_instance_uid", sa.String(64)),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("analysis_id", "profile", name="uq_reports_natural_key"),
        sa.UniqueConstraint("sop_instance_uid", name="uq_reports_sop_instance_uid"),
    )
    deliveries = op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("report_id", sa.Integer, sa.ForeignKey("reports.id"), nullable=False),
        sa.Column("destination", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_attempt_at", sa.Float),
        sa.Column("delivered_at", sa.Float),
        sa.UniqueConstraint("report_id", "destination", name="uq_deliveries_natural_key"),
    )
    op.create_index("ix_deliveries_state", "deliveries", ["state"])
    return analyses, reports, deliveries


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _study_state(old: str, has_model: bool) -> str:
    if old in ("inferring", "reported", "delivered"):
        return "routed" if has_model else "queued"
    if old in ("receiving", "queued", "not_applicable", "failed"):
        return old
    return "failed"


def _analysis(r: Any, study_state: str) -> dict[str, Any] | None:
    if not r.model_id or study_state in ("receiving", "queued"):
        return None
    state = {"inferring": "running", "reported": "reported", "delivered": "reported"}.get(
        r.state, study_state
    )
    finished = r.reported_at if state == "reported" else r.finished_at
    return {
        "study_uid": r.study_uid,
        "generation": r.generation,
        "model_id": r.model_id,
        "model_version": "unknown",
        "state": state,
        "reason": r.reason if state in ("not_applicable", "failed") else None,
        "weights_kind": r.weights_kind,
        "task_id": r.task_id,
        "n_instances": r.instance_count,
        "queued_at": _first(r.queued_at, r.inferring_at, r.last_received_at),
        "started_at": r.inferring_at,
        "finished_at": None if state == "running" else finished,
    }


def _delivery(r: Any) -> dict[str, Any] | None:
    created = _first(r.reported_at, r.finished_at, r.last_received_at)
    if r.state == "delivered":
        dest = r.destination or "unknown"
        return {
            "destination": "outbox" if dest.startswith("outbox") else dest,
            "state": "delivered",
            "attempts": max(r.delivery_attempts or 0, 1),
            "created_at": created,
            "last_attempt_at": r.delivered_at,
            "delivered_at": r.delivered_at,
        }
    if r.state == "reported" and (r.delivery_attempts or 0) > 0:
        reason = r.reason or ""
        peer = _PEER.search(reason)
        return {
            "destination": r.destination or (peer.group(0) if peer else "unknown"),
            "state": "retrying",
            "attempts": r.delivery_attempts,
            "last_error": reason.removeprefix(_PENDING) or None,
            "created_at": created,
        }
    return None


def _insert(bind: sa.Connection, table: sa.Table, values: dict[str, Any]) -> int:
    key = bind.execute(table.insert().values(**values)).inserted_primary_key
    assert key is not None
    return int(key[0])


def _move_rows(analyses: sa.Table, reports: sa.Table, deliveries: sa.Table) -> None:
    bind = op.get_bind()
    for r in bind.execute(sa.select(_old)).all():
        study_state = _study_state(r.state, bool(r.model_id))
        routed = study_state == "routed"
        bind.execute(
            _old.update()
            .where(_old.c.study_uid == r.study_uid)
            .values(
                state=study_state,
                reason=None if routed else r.reason,
                task_id=None if study_state == "queued" else r.task_id,
                finished_at=_first(r.inferring_at, r.queued_at) if routed else r.finished_at,
            )
        )
        analysis = _analysis(r, study_state)
        if analysis is None:
            continue
        analysis_id = _insert(bind, analyses, analysis)
        if not r.report_uid or analysis["state"] != "reported":
            continue
        report = {
            "analysis_id": analysis_id,
            "profile": "tid1500",
            "sop_instance_uid": r.report_uid,
            "path": r.report_path or "",
            "state": "written",
            "created_at": _first(r.reported_at, r.finished_at, r.last_received_at),
        }
        report_id = _insert(bind, reports, report)
        delivery = _delivery(r)
        if delivery is not None:
            bind.execute(deliveries.insert().values(report_id=report_id, **delivery))


def upgrade() -> None:
    """Create the fan-out tables, move the old rows into them, drop the moved columns."""
    analyses, reports, deliveries = _create_tables()
    _move_rows(analyses, reports, deliveries)
    with op.batch_alter_table("studies") as batch:
        for name in MOVED:
            batch.drop_column(name)


def downgrade() -> None:
    """Not supported: several analyses per study do not fold back into one row.

    Raises
    ------
    NotImplementedError
        Always. Restore the ``<ledger>.0001.bak`` copy written before the upgrade.
    """
    raise NotImplementedError(
        "the fan-out cannot be folded back into one row per study; "
        "restore the <ledger>.0001.bak copy written before the upgrade"
    )
