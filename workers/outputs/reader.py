"""Read back the measurement groups of a TID 1500 SR (for the demo, tests and display)."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset

IMAGING_MEASUREMENTS = "126010"
PROBABILITY = "122157"
PRESENT_ABSENT = ("52101004", "272519000")
TRACKING_IDENTIFIER = "112039"
TRACKING_UID = "112040"
FINDING_TYPE = "121071"
SOURCE_IMAGE = "121112"
QUALITATIVE_EVALUATIONS = "C0034375"
NOT_ANALYSED_CODE = "IMGNOTANALYSED"
"""Code value (scheme 99DCMNODE) of the TEXT items naming images that were not analysed."""


@dataclass(frozen=True)
class ReportedFinding:
    """One measurement group of an SR.

    Attributes
    ----------
    finding : str
        Meaning of the finding's code (the label's code meaning).
    probability : float
        DCM 122157 Probability, unit "1" (NaN if absent).
    evaluation : str
        "Present" or "Absent" ("" if absent).
    identifier : str
        Tracking identifier: the label name, with "(series N)" / "(image N)" for
        series and image scope.
    code : str
        Finding type code value.
    tracking_uid : str
        Tracking Unique Identifier.
    sources : tuple of str
        SOP Instance UIDs of the source images of the group.
    series : tuple of str
        Their Series Instance UIDs (from the SR's evidence), in the same order;
        "" where the evidence does not list one.
    """

    finding: str
    probability: float
    evaluation: str
    identifier: str = ""
    code: str = ""
    tracking_uid: str = ""
    sources: tuple[str, ...] = ()
    series: tuple[str, ...] = ()


def read_findings(report: Dataset) -> list[ReportedFinding]:
    """Read the measurement groups of a TID 1500 SR built by this package.

    Parameters
    ----------
    report : pydicom.Dataset
        The SR (read from a file or as built).

    Returns
    -------
    list of ReportedFinding
        In document order.
    """
    series_of = _series_of(report)
    found: list[ReportedFinding] = []
    for container in report.get("ContentSequence", []):
        if _concept(container) != IMAGING_MEASUREMENTS:
            continue
        for group in container.get("ContentSequence", []):
            found.append(_read_group(group, series_of))
    return found


def read_not_analysed(report: Dataset) -> list[tuple[str, str]]:
    """Read the images a TID 1500 SR of this package names as not analysed.

    Returns
    -------
    list of (str, str)
        SOP Instance UID and reason, in document order; empty when every image
        was analysed.
    """
    found: list[tuple[str, str]] = []
    for container in report.get("ContentSequence", []):
        if _concept(container) != QUALITATIVE_EVALUATIONS:
            continue
        for item in container.get("ContentSequence", []):
            if item.ValueType == "TEXT" and _concept(item) == NOT_ANALYSED_CODE:
                uid, _, reason = str(item.TextValue).partition(" - ")
                found.append((uid, reason))
    return found


def _read_group(group: Dataset, series_of: dict[str, str]) -> ReportedFinding:
    probability, name, evaluation = float("nan"), "", ""
    identifier = code = tracking_uid = ""
    sources: list[str] = []
    for item in group.get("ContentSequence", []):
        concept, kind = _concept(item), item.ValueType
        if kind == "NUM" and concept == PROBABILITY:
            probability = float(item.MeasuredValueSequence[0].NumericValue)
        elif kind == "CODE" and item.ConceptCodeSequence[0].CodeValue in PRESENT_ABSENT:
            name = str(item.ConceptNameCodeSequence[0].CodeMeaning)
            evaluation = str(item.ConceptCodeSequence[0].CodeMeaning)
        elif kind == "CODE" and concept == FINDING_TYPE:
            code = str(item.ConceptCodeSequence[0].CodeValue)
        elif kind == "TEXT" and concept == TRACKING_IDENTIFIER:
            identifier = str(item.TextValue)
        elif kind == "UIDREF" and concept == TRACKING_UID:
            tracking_uid = str(item.UID)
        elif kind == "IMAGE" and concept == SOURCE_IMAGE:
            sources.append(str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
    return ReportedFinding(
        finding=name,
        probability=probability,
        evaluation=evaluation,
        identifier=identifier,
        code=code,
        tracking_uid=tracking_uid,
        sources=tuple(sources),
        series=tuple(series_of.get(uid, "") for uid in sources),
    )


def _concept(item: Dataset) -> str:
    names = item.get("ConceptNameCodeSequence")
    return str(names[0].CodeValue) if names else ""


def _series_of(report: Dataset) -> dict[str, str]:
    """SOP Instance UID -> Series Instance UID from the SR's evidence sequences."""
    series_of: dict[str, str] = {}
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in report.get(keyword, []):
            for series in study.get("ReferencedSeriesSequence", []):
                for instance in series.get("ReferencedSOPSequence", []):
                    series_of[str(instance.ReferencedSOPInstanceUID)] = str(
                        series.SeriesInstanceUID
                    )
    return series_of
