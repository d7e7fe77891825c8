"""``dicom-node status``: the ledger's studies as a text tree or as JSON.

Each study shows its state, generation, instances, reason and timings, then
its analyses (model id and version, state, backend, weights kind — untrained
weights marked ``[UNTRAINED weights]`` — timings, reason and the images not
analysed, each with its SOP Instance UID and reason), each analysis its
reports (profile, SOP Instance UID, state) and each report its deliveries
(destination name, state — ``superseded``, ``dropped`` and ``failed`` included,
a failed one marked as a dead letter with its id for ``dicom-node exports`` —,
attempts, the last DIMSE status as text, the warning it was delivered with, last
error). A line ``dead letters: N (dicom-node exports list)`` heads the text when
the ledger holds any. Durations are seconds with two decimals; ``-`` when an end
is not reached yet. No patient data: the ledger holds UIDs and AE titles only.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from dicom_node.core.dimse import status_text
from dicom_node.core.ledger import (
    AnalysisSnapshot,
    AnalysisView,
    DeliverySnapshot,
    DeliveryState,
    ReportView,
    StudySnapshot,
    StudyView,
)

UNTRAINED_MARK = "[UNTRAINED weights]"
_INDENT = "   "


def _seconds(start: float | None, end: float | None) -> float | None:
    return round(end - start, 2) if start is not None and end is not None else None


def _fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"


def _when(epoch: float | None) -> str:
    return dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S") if epoch else "-"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def study_timings(s: StudySnapshot) -> dict[str, float | None]:
    """Seconds: ``receive_s`` (first → last instance), ``wait_s`` (last → queued), ``route_s``."""
    return {
        "receive_s": _seconds(s.first_received_at, s.last_received_at),
        "wait_s": _seconds(s.last_received_at, s.queued_at),
        "route_s": _seconds(s.queued_at, s.finished_at),
    }


def analysis_timings(a: AnalysisSnapshot) -> dict[str, float | None]:
    """Seconds: ``wait_s`` (queued → started) and ``run_s`` (started → finished)."""
    return {
        "wait_s": _seconds(a.queued_at, a.started_at),
        "run_s": _seconds(a.started_at, a.finished_at),
    }


def _timings(values: dict[str, float | None]) -> str:
    return "  ".join(f"{k.removesuffix('_s')} {_fmt(v)}" for k, v in values.items())


def _delivery_line(d: DeliverySnapshot) -> str:
    line = f"delivery {d.destination}  {d.state.value}"
    if d.state is DeliveryState.FAILED:
        line += f" (dead letter {d.id})"
    line += f"  {_plural(d.attempts, 'attempt')}"
    if d.delivered_at is not None:
        line += f"  took {_fmt(_seconds(d.created_at, d.delivered_at))}"
    if d.status is not None:
        line += f"  status {status_text(d.status)}"
    if d.warning:
        line += f"  warning: {d.warning}"
    return line + (f"  last error: {d.last_error}" if d.last_error else "")


def _report_lines(r: ReportView, depth: int) -> list[str]:
    pad = _INDENT * depth
    rep = r.report
    lines = [f"{pad}└─ report {rep.profile}  {rep.sop_instance_uid}  {rep.state.value}"]
    lines += [f"{pad}{_INDENT}└─ {_delivery_line(d)}" for d in r.deliveries]
    return lines


def _analysis_lines(v: AnalysisView, depth: int) -> list[str]:
    pad = _INDENT * depth
    a = v.analysis
    weights = a.weights_kind or "-"
    if a.untrained:
        weights += f" {UNTRAINED_MARK}"
    lines = [
        f"{pad}└─ {a.model_id} {a.model_version}  {a.state.value}  generation {a.generation}  "
        f"backend {a.backend or '-'}  weights {weights}",
        f"{pad}{_INDENT}{_plural(a.n_instances, 'instance')}  {_timings(analysis_timings(a))}",
    ]
    if a.reason:
        lines.append(f"{pad}{_INDENT}reason: {a.reason}")
    if a.skipped:
        lines.append(f"{pad}{_INDENT}not analysed: {_plural(len(a.skipped), 'image')}")
        lines += [
            f"{pad}{_INDENT}{_INDENT}{item.sop_instance_uid}  {item.reason}" for item in a.skipped
        ]
    for r in v.reports:
        lines += _report_lines(r, depth + 1)
    return lines


def dead_letter_line(count: int) -> str:
    """The line heading ``dicom-node status`` when the ledger holds dead letters."""
    return f"dead letters: {count} (dicom-node exports list)"


def render_text(views: Sequence[StudyView], dead_letters: int = 0) -> str:
    """The studies as an indented tree, one block per study.

    Parameters
    ----------
    views : sequence of StudyView
        From :meth:`dicom_node.core.ledger.Ledger.studies`.
    dead_letters : int, optional
        Dead letters in the whole ledger (``Ledger.count_dead_letters()``); when
        above 0 a :func:`dead_letter_line` comes first.

    Returns
    -------
    str
        Text without a trailing newline; ``"no studies in the ledger"`` if empty.
    """
    head = [dead_letter_line(dead_letters)] if dead_letters > 0 else []
    if not views:
        return "\n\n".join([*head, "no studies in the ledger"])
    blocks = head
    for view in views:
        s = view.study
        lines = [
            f"{s.study_uid}  {s.state.value}  generation {s.generation}  "
            f"{_plural(s.instance_count, 'instance')}  from {s.calling_ae or '-'}  "
            f"last received {_when(s.last_received_at)}",
            f"{_INDENT}{_timings(study_timings(s))}",
        ]
        if s.reason:
            lines.append(f"{_INDENT}reason: {s.reason}")
        for analysis in view.analyses:
            lines += _analysis_lines(analysis, 1)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _plain(snapshot: Any) -> dict[str, Any]:
    return {
        k: v.value if isinstance(v, enum.Enum) else list(v) if isinstance(v, tuple) else v
        for k, v in asdict(snapshot).items()
    }


def study_dead_letters(view: StudyView) -> list[int]:
    """Ids of a study's dead letters (``failed`` deliveries), ascending."""
    return sorted(
        d.id
        for a in view.analyses
        for r in a.reports
        for d in r.deliveries
        if d.state is DeliveryState.FAILED
    )


def to_json(views: Sequence[StudyView]) -> list[dict[str, Any]]:
    """The studies as JSON-ready dicts (for ``json.dumps``).

    Parameters
    ----------
    views : sequence of StudyView
        From :meth:`dicom_node.core.ledger.Ledger.studies`.

    Returns
    -------
    list of dict
        Per study: its snapshot's fields (states as strings, times as epoch
        seconds), ``timings`` (seconds, 2 decimals, None when not reached),
        ``dead_letters`` (ids of its ``failed`` deliveries, for ``dicom-node
        exports retry | drop``) and ``analyses``; per analysis: its fields (``skipped``: a list of
        ``{"sop_instance_uid", "reason"}``), ``untrained``, ``timings`` and
        ``reports``; per report: its fields and ``deliveries``.
    """
    return [
        {
            **_plain(view.study),
            "timings": study_timings(view.study),
            "dead_letters": study_dead_letters(view),
            "analyses": [
                {
                    **_plain(a.analysis),
                    "untrained": a.analysis.untrained,
                    "timings": analysis_timings(a.analysis),
                    "reports": [
                        {**_plain(r.report), "deliveries": [_plain(d) for d in r.deliveries]}
                        for r in a.reports
                    ],
                }
                for a in view.analyses
            ],
        }
        for view in views
    ]
