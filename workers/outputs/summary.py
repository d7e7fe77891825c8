"""The findings of an analysis as plain sentences, shared by the text SR, the PDF and the key image.

Every profile that a human reads as text says the same things in the same
words: what was found (label, scope, probability, operating threshold,
present or absent), which algorithm said so, and that it is an AI result, not
a diagnosis; "untrained demo weights" when the weights are not real.
"""

from __future__ import annotations

from collections.abc import Sequence

from workers.outputs.findings import Finding, ReportInput
from workers.outputs.headers import int_value

DISCLAIMER = "AI-generated, not a diagnosis."
"""Stated first in every text profile (text SR, PDF, key image)."""
UNTRAINED_STATEMENT = (
    "Untrained demo weights: these results are random and must not be used for any decision."
)
"""Stated, after :data:`DISCLAIMER`, whenever the weights are not real."""


def statements(inp: ReportInput) -> list[str]:
    """The disclaimer, and the untrained statement when the weights are demo weights."""
    return [DISCLAIMER, UNTRAINED_STATEMENT] if inp.is_demo else [DISCLAIMER]


def algorithm_line(inp: ReportInput) -> str:
    """``"Algorithm: <name> (<id>) version <v>; <backend> <precision> on <device>"``.

    The device is left out when unknown; ``"; UNTRAINED DEMO WEIGHTS"`` is added
    when the weights are not real.
    """
    serving = f"{inp.backend} {inp.precision}" + (f" on {inp.device}" if inp.device else "")
    line = (
        f"Algorithm: {inp.manifest.name} ({inp.manifest.id}) version {inp.manifest.version}; "
        f"{serving}"
    )
    return f"{line}; UNTRAINED DEMO WEIGHTS" if inp.is_demo else line


def scope_labels(inp: ReportInput, findings: Sequence[Finding]) -> dict[str | None, str]:
    """Human-readable scope of each scope key: ``""`` (study), ``"series 3"``, ``"image 12"``.

    The number is the source's Series Number or Instance Number (an integer, never
    free text); where it is missing, the finding's position among the scope units.
    """
    labels: dict[str | None, str] = {}
    for finding in findings:
        key = finding.scope_key
        if key in labels:
            continue
        if key is None:
            labels[key] = ""
            continue
        number = int_value(
            finding.sources[0], "SeriesNumber" if inp.scope == "series" else "InstanceNumber"
        )
        ordinal = number if number is not None else len(labels) + 1
        labels[key] = f"{'series' if inp.scope == 'series' else 'image'} {ordinal}"
    return labels


def finding_line(finding: Finding, scope: str = "") -> str:
    """``"Pneumothorax: PRESENT, probability 0.873 (threshold 0.500)"`` (+ ``" - <scope>"``)."""
    verdict = "PRESENT" if finding.present else "absent"
    where = f" - {scope}" if scope else ""
    return (
        f"{finding.label.code.meaning}: {verdict}, probability {finding.probability:.3f} "
        f"(threshold {finding.label.threshold:.3f}){where}"
    )


def finding_lines(inp: ReportInput) -> list[str]:
    """One :func:`finding_line` per reported finding, in report order, with its scope label.

    Raises
    ------
    ReportError
        If the input is inconsistent (:meth:`ReportInput.reported`).
    """
    findings = inp.reported()
    scopes = scope_labels(inp, findings)
    return [finding_line(f, scopes[f.scope_key]) for f in findings]


def top_findings(inp: ReportInput, n: int) -> list[Finding]:
    """The ``n`` findings to show first: present ones, then by probability, highest first.

    Ties keep report order.

    Raises
    ------
    ReportError
        If the input is inconsistent (:meth:`ReportInput.reported`).
    """
    ranked = sorted(
        enumerate(inp.reported()),
        key=lambda item: (not item[1].present, -item[1].probability, item[0]),
    )
    return [finding for _, finding in ranked[: max(0, n)]]
