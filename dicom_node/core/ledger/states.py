"""The ledger's states and its one table of legal transitions.

A study fans out into analyses, an analysis into reports, a report into
deliveries. Each level has its own states; :data:`TRANSITIONS` lists, for every
level, the states each state may move to. Every state change the ledger makes
is an ``UPDATE … WHERE state IN allowed_from(level, to)``, so a change that is
not in this table cannot happen, whoever asks for it.

::

    study      receiving ──▶ queued ──▶ routed              (analyses created)
                   │           │ ╰─▶ queued                  (task id recorded)
                   │           ╰───▶ receiving               (broker refused the task)
                   ╰───────────┴──▶ not_applicable | failed   (no model routes | reason)
               queued | routed | not_applicable | failed ──▶ receiving
                                   (a new instance: reopened as generation + 1)

    analysis   queued ──▶ running ──▶ reported | not_applicable | failed
                            ╰─▶ running                     (a redelivered task re-claims it)
               queued ──▶ failed
               queued | running ──▶ superseded              (the study has a newer generation)

    report     written ──▶ failed                            (the file is lost or unreadable)

    delivery   pending ──▶ delivered | retrying | failed | superseded
               retrying ──▶ delivered | retrying | failed | superseded
               failed ──▶ pending | dropped                (dead letter: exports retry | drop)
               (superseded: its study has a newer generation; it is never sent)

Study transitions name the generation they act on. Analysis transitions check
that the analysis belongs to its study's current generation (``superseded``
checks the opposite), so a task of an older generation cannot overwrite a newer
one's state: its transition returns False and the task stops. Report and
delivery transitions do not check the generation: a written report is a fact,
and sending it is idempotent.
"""

from __future__ import annotations

import enum
from typing import Final


class Level(enum.StrEnum):
    """The four levels of the ledger's fan-out."""

    STUDY = "study"
    ANALYSIS = "analysis"
    REPORT = "report"
    DELIVERY = "delivery"


class StudyState(enum.StrEnum):
    """Lifecycle of a study (one generation at a time)."""

    RECEIVING = "receiving"
    QUEUED = "queued"
    ROUTED = "routed"
    NOT_APPLICABLE = "not_applicable"
    FAILED = "failed"


class AnalysisState(enum.StrEnum):
    """Lifecycle of one model's analysis of one study generation."""

    QUEUED = "queued"
    RUNNING = "running"
    REPORTED = "reported"
    NOT_APPLICABLE = "not_applicable"
    FAILED = "failed"
    SUPERSEDED = "superseded"


class ReportState(enum.StrEnum):
    """Lifecycle of a report file (one per analysis and output profile)."""

    WRITTEN = "written"
    FAILED = "failed"


class DeliveryState(enum.StrEnum):
    """Lifecycle of sending one report to one destination."""

    PENDING = "pending"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    DROPPED = "dropped"


State = StudyState | AnalysisState | ReportState | DeliveryState

_S, _A, _R, _D = StudyState, AnalysisState, ReportState, DeliveryState

TRANSITIONS: Final[dict[Level, dict[str, frozenset[str]]]] = {
    Level.STUDY: {
        _S.RECEIVING: frozenset({_S.QUEUED, _S.NOT_APPLICABLE, _S.FAILED}),
        _S.QUEUED: frozenset({_S.QUEUED, _S.RECEIVING, _S.ROUTED, _S.NOT_APPLICABLE, _S.FAILED}),
        _S.ROUTED: frozenset({_S.RECEIVING}),
        _S.NOT_APPLICABLE: frozenset({_S.RECEIVING}),
        _S.FAILED: frozenset({_S.RECEIVING}),
    },
    Level.ANALYSIS: {
        _A.QUEUED: frozenset({_A.RUNNING, _A.FAILED, _A.SUPERSEDED}),
        _A.RUNNING: frozenset(
            {_A.RUNNING, _A.REPORTED, _A.NOT_APPLICABLE, _A.FAILED, _A.SUPERSEDED}
        ),
        _A.REPORTED: frozenset(),
        _A.NOT_APPLICABLE: frozenset(),
        _A.FAILED: frozenset(),
        _A.SUPERSEDED: frozenset(),
    },
    Level.REPORT: {
        _R.WRITTEN: frozenset({_R.FAILED}),
        _R.FAILED: frozenset(),
    },
    Level.DELIVERY: {
        _D.PENDING: frozenset({_D.DELIVERED, _D.RETRYING, _D.FAILED, _D.SUPERSEDED}),
        _D.RETRYING: frozenset({_D.DELIVERED, _D.RETRYING, _D.FAILED, _D.SUPERSEDED}),
        _D.DELIVERED: frozenset(),
        _D.FAILED: frozenset({_D.PENDING, _D.DROPPED}),
        _D.SUPERSEDED: frozenset(),
        _D.DROPPED: frozenset(),
    },
}
"""Level → state → the states it may move to. The only source of legal moves."""

STATES: Final[dict[Level, type[State]]] = {
    Level.STUDY: StudyState,
    Level.ANALYSIS: AnalysisState,
    Level.REPORT: ReportState,
    Level.DELIVERY: DeliveryState,
}
"""Level → its state enumeration."""


def _check(level: Level, state: str) -> None:
    if state not in TRANSITIONS[level]:
        raise ValueError(f"{state!r} is not a {level.value} state")


def allowed_from(level: Level, to: str) -> frozenset[str]:
    """The states from which ``level`` may move to ``to``.

    Parameters
    ----------
    level : Level
        Study, analysis, report or delivery.
    to : str
        Target state (a member of that level's enumeration).

    Returns
    -------
    frozenset of str
        Source states; empty if nothing may move to ``to``.

    Raises
    ------
    ValueError
        If ``to`` is not a state of ``level``.
    """
    _check(level, to)
    return frozenset(src for src, targets in TRANSITIONS[level].items() if to in targets)


def is_allowed(level: Level, src: str, to: str) -> bool:
    """Whether ``level`` may move from ``src`` to ``to``.

    Raises
    ------
    ValueError
        If either state is not a state of ``level``.
    """
    _check(level, src)
    _check(level, to)
    return to in TRANSITIONS[level][src]
