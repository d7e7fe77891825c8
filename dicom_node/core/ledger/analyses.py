"""Analyses: one per (study, generation, model id, model version)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update

from dicom_node.core.ledger.base import LedgerBase, guard, rowcount, transition_values
from dicom_node.core.ledger.records import (
    AnalysisSnapshot,
    AnalysisSpec,
    SkippedImage,
    StalledAnalysis,
    encode_skipped,
)
from dicom_node.core.ledger.schema import analyses, studies
from dicom_node.core.ledger.states import AnalysisState, Level

_A = AnalysisState


class AnalysisRows(LedgerBase):
    """Ledger methods on analyses."""

    def create_analyses(
        self, study_uid: str, generation: int, specs: Sequence[AnalysisSpec]
    ) -> list[AnalysisSnapshot]:
        """Create one ``queued`` analysis per spec for a study generation (idempotent).

        Parameters
        ----------
        study_uid : str
            Study Instance UID.
        generation : int
            The generation routing looked at.
        specs : sequence of AnalysisSpec
            The models that apply.

        Returns
        -------
        list of AnalysisSnapshot
            One per distinct (model id, version), in ``specs`` order: the new row,
            or the row a previous call made. Empty if the study is not at
            ``generation`` any more (the caller must stop).
        """
        now = time.time()
        with self._tx() as conn:
            current = conn.execute(  # a write first: take the lock, then check
                update(studies)
                .where(studies.c.study_uid == study_uid, studies.c.generation == generation)
                .values(generation=studies.c.generation)
            )
            if not rowcount(current):
                return []
            out: dict[tuple[str, str], AnalysisSnapshot] = {}
            for spec in specs:
                key = (spec.model_id, spec.model_version)
                if key in out:
                    continue
                natural = {"study_uid": study_uid, "generation": generation}
                natural |= {"model_id": spec.model_id, "model_version": spec.model_version}
                row = self._insert_or_get(
                    conn,
                    analyses,
                    natural,
                    {"state": _A.QUEUED, "n_instances": spec.n_instances, "queued_at": now},
                    f"analysis of {spec.model_id} for study {study_uid} cannot be created",
                )
                out[key] = AnalysisSnapshot.of(row)
            return list(out.values())

    def get_analysis(self, analysis_id: int) -> AnalysisSnapshot | None:
        """One analysis, or None."""
        with self._tx() as conn:
            row = self._row(conn, analyses, analyses.c.id == analysis_id)
        return AnalysisSnapshot.of(row) if row else None

    @staticmethod
    def _study_generation() -> Any:
        return (
            select(studies.c.generation)
            .where(studies.c.study_uid == analyses.c.study_uid)
            .correlate(analyses)
            .scalar_subquery()
        )

    def analysis_is_current(self, analysis_id: int) -> bool:
        """Whether the analysis belongs to its study's current generation."""
        with self._tx() as conn:
            found = conn.execute(
                select(analyses.c.id).where(
                    analyses.c.id == analysis_id,
                    analyses.c.generation == self._study_generation(),
                )
            ).first()
        return found is not None

    def transition_analysis(self, analysis_id: int, to: AnalysisState, **fields: Any) -> bool:
        """Move an analysis to ``to``, if the table allows it and its generation is current.

        Parameters
        ----------
        analysis_id : int
            Ledger id of the analysis.
        to : AnalysisState
            New state. ``running`` sets ``started_at`` (first claim only);
            final states set ``finished_at``. ``superseded`` requires the
            opposite: a newer study generation.
        **fields
            ``reason``, ``backend``, ``weights_kind``, ``weights_sha256``,
            ``task_id`` or ``n_instances``.

        Returns
        -------
        bool
            Whether the row changed. False: the study has a newer generation,
            or the analysis is in a state the table does not allow to move to
            ``to`` (e.g. already reported); the caller must stop.

        Raises
        ------
        TypeError
            If ``fields`` names another column.
        """
        study_generation = self._study_generation()
        generation = (
            analyses.c.generation < study_generation
            if to == _A.SUPERSEDED
            else analyses.c.generation == study_generation
        )
        stmt = (
            update(analyses)
            .where(analyses.c.id == analysis_id, guard(Level.ANALYSIS, to), generation)
            .values(transition_values(Level.ANALYSIS, to, fields, time.time()))
        )
        with self._tx() as conn:
            return bool(rowcount(conn.execute(stmt)))

    def record_dispatch(self, analysis_id: int, payload: str) -> None:
        """Keep the ``analyze`` message (JSON) that was published for an analysis.

        The stall sweeper publishes it again, unchanged, if the worker that
        ran it died (:meth:`stalled_analyses`).
        """
        with self._tx() as conn:
            conn.execute(
                update(analyses).where(analyses.c.id == analysis_id).values(payload=payload)
            )

    def record_skipped(self, analysis_id: int, skipped: Sequence[SkippedImage]) -> None:
        """Record the images an analysis could not use, with their reasons (no PHI)."""
        with self._tx() as conn:
            conn.execute(
                update(analyses)
                .where(analyses.c.id == analysis_id)
                .values(skipped=encode_skipped(skipped))
            )

    def stalled_analyses(self, older_than: float) -> list[StalledAnalysis]:
        """Analyses of current generations ``running`` since before ``older_than``.

        Parameters
        ----------
        older_than : float
            Epoch seconds; ``started_at`` (reset by :meth:`requeue_analysis`)
            must be earlier.
        """
        with self._tx() as conn:
            rows = conn.execute(
                select(analyses.c.id, analyses.c.task_id, analyses.c.payload, analyses.c.requeues)
                .where(analyses.c.state == _A.RUNNING)
                .where(analyses.c.started_at < older_than)
                .where(analyses.c.generation == self._study_generation())
                .order_by(analyses.c.started_at)
            ).all()
        return [StalledAnalysis(r[0], r[1], r[2], r[3] or 0) for r in rows]

    def requeue_analysis(self, analysis_id: int, reason: str) -> bool:
        """Count one re-publication of a ``running`` analysis and restart its clock.

        Returns
        -------
        bool
            False if it is no longer ``running`` (it finished meanwhile).
        """
        with self._tx() as conn:
            result = conn.execute(
                update(analyses)
                .where(analyses.c.id == analysis_id, analyses.c.state == _A.RUNNING)
                .values(requeues=analyses.c.requeues + 1, started_at=time.time(), reason=reason)
            )
            return bool(rowcount(result))
