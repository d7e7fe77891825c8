"""Output profile "text_sr": the findings as a Basic Text SR, for PACS that render only text.

A Basic Text SR (PS3.3 A.35.1, SOP Class 1.2.840.10008.5.1.4.1.1.88.11) holds a
tree of TEXT, CODE, UIDREF, IMAGE and CONTAINER items only (no NUM, no SCOORD;
PS3.3 Table A.35.1-2 relationship constraints). highdicom has no document class
for it, so the document is written with pydicom on
:func:`workers.outputs.document.new_document`, its content items with highdicom's.

Content (SR Document Content, PS3.3 C.17.3; the headings of CID 7001, as in
PS3.16 TID 2000 "Basic Diagnostic Imaging Report")::

    CONTAINER "Diagnostic imaging report" (LN 18748-4), SEPARATE
      HAS CONCEPT MOD  CODE  Language of Content Item and Descendants = en-US
      HAS OBS CONTEXT  CODE  Observer Type = Device; UIDREF Device Observer UID;
                       TEXT  Device Observer Name / Manufacturer / Model Name
      CONTAINS CONTAINER "Summary" (DCM 121111)
        CONTAINS TEXT "Comment" (DCM 121106)   "AI-generated, not a diagnosis."
        CONTAINS TEXT "Comment"                "Untrained demo weights: ..." (demo only)
        CONTAINS TEXT "Algorithm Name" (DCM 111001)   summary.algorithm_line
        CONTAINS TEXT "Algorithm Parameters" (DCM 111002)  model card URL / reference
      CONTAINS CONTAINER "Findings" (DCM 121070)
        CONTAINS TEXT "Finding" (DCM 121071)  one per reported finding:
                 "<meaning>: PRESENT|absent, probability p (threshold t)[ - scope]"
          HAS CONCEPT MOD CODE "Finding" (DCM 121071) = the label's code
          HAS CONCEPT MOD CODE "Finding Site" (SCT 363698007) = site (when the manifest names one)
          INFERRED FROM IMAGE "Source of Measurement" (DCM 121112), per source image
      CONTAINS CONTAINER "Qualitative Evaluations" (UMLS C0034375), only when images
               were not analysed: TEXT "Image not analysed" (99DCMNODE) "<uid> - <reason>"

The SR Document General module (C.17.2): Completion Flag COMPLETE, Verification
Flag UNVERIFIED, Preliminary Flag PRELIMINARY, Performed Procedure Code Sequence
empty, Current Requested Procedure Evidence Sequence = every image analysed,
Predecessor Documents Sequence when ``inp.predecessor("text_sr")`` names the
earlier report this one supersedes.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom import Dataset

from dicom_node.core.contract import MANUFACTURER
from dicom_node.core.errors import ReportError
from dicom_node.core.ledger import SkippedImage
from workers.outputs.document import evidence_sequence, new_document, predecessor_sequence
from workers.outputs.findings import CodeLike, Finding, ReportInput, finding_site_code
from workers.outputs.headers import BuildSteps, uid_of, unique_headers
from workers.outputs.reader import NOT_ANALYSED_CODE
from workers.outputs.summary import algorithm_line, finding_line, scope_labels, statements
from workers.outputs.tid1500 import (
    LOCAL_SCHEME,
    declare_local_schemes,
    device_observer_name,
    device_observer_uid,
    model_card_lines,
    series_description,
)

__all__ = ["BASIC_TEXT_SR", "PROFILE", "build_text_sr"]

PROFILE = "text_sr"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
SUFFIX = " (text)"

Concept = tuple[str, str, str]
"""(code value, coding scheme designator, code meaning)."""

TITLE: Concept = ("18748-4", "LN", "Diagnostic imaging report")
LANGUAGE: Concept = ("121049", "DCM", "Language of Content Item and Descendants")
ENGLISH: Concept = ("en-US", "RFC5646", "English (United States)")
OBSERVER_TYPE: Concept = ("121005", "DCM", "Observer Type")
DEVICE: Concept = ("121007", "DCM", "Device")
OBSERVER_UID: Concept = ("121012", "DCM", "Device Observer UID")
OBSERVER_NAME: Concept = ("121013", "DCM", "Device Observer Name")
OBSERVER_MANUFACTURER: Concept = ("121014", "DCM", "Device Observer Manufacturer")
OBSERVER_MODEL: Concept = ("121015", "DCM", "Device Observer Model Name")
SUMMARY: Concept = ("121111", "DCM", "Summary")
COMMENT: Concept = ("121106", "DCM", "Comment")
ALGORITHM_NAME: Concept = ("111001", "DCM", "Algorithm Name")
ALGORITHM_PARAMETERS: Concept = ("111002", "DCM", "Algorithm Parameters")
FINDINGS: Concept = ("121070", "DCM", "Findings")
FINDING: Concept = ("121071", "DCM", "Finding")
FINDING_SITE: Concept = ("363698007", "SCT", "Finding Site")
SOURCE: Concept = ("121112", "DCM", "Source of Measurement")
QUALITATIVE_EVALUATIONS: Concept = ("C0034375", "UMLS", "Qualitative Evaluations")
NOT_ANALYSED: Concept = (NOT_ANALYSED_CODE, LOCAL_SCHEME, "Image not analysed")

CONTAINS = "CONTAINS"
OBS_CONTEXT = "HAS OBS CONTEXT"
CONCEPT_MOD = "HAS CONCEPT MOD"
INFERRED_FROM = "INFERRED FROM"


def build_text_sr(inp: ReportInput) -> list[Dataset]:
    """Build the Basic Text SR of one analysis.

    Parameters
    ----------
    inp : ReportInput
        Findings, evidence headers, manifest, weights, serving, study UID,
        generation and predecessors.

    Returns
    -------
    list of pydicom.Dataset
        ``[sr]``: one Basic Text SR (Modality SR, Series Description
        "AI <model> (text)", plus the untrained notice for demo weights), file
        meta Explicit VR Little Endian; patient and study copied from the first
        evidence image of the study.

    Raises
    ------
    ReportError
        If the input is inconsistent (:meth:`ReportInput.reported`), nothing is
        reportable, no evidence image is of the study or a header lacks a UID. The
        message names the stage and the exception class, never a header value.
    """
    findings = inp.reported()
    if not findings:
        raise ReportError(f"model {inp.manifest.id}: no reportable finding")
    with BuildSteps(f"{PROFILE} SR", inp.study_uid, "document") as steps:
        ds = new_document(
            inp,
            PROFILE,
            0,
            sop_class_uid=BASIC_TEXT_SR,
            modality="SR",
            series_description=series_description(inp, SUFFIX),
        )
        steps.stage = "document general"
        evidence = unique_headers([*inp.evidence, *(s for f in findings for s in f.sources)])
        _document_general(ds, inp, evidence)
        steps.stage = "content"
        _content(ds, inp, findings)
        declare_local_schemes(ds, inp.manifest, extra=[LOCAL_SCHEME] if inp.skipped else [])
    return [ds]


def _document_general(ds: Dataset, inp: ReportInput, evidence: Sequence[Dataset]) -> None:
    """SR Document Series (C.17.1) and SR Document General (C.17.2) attributes."""
    ds.ReferencedPerformedProcedureStepSequence = []  # Type 2
    ds.PreliminaryFlag = "PRELIMINARY"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = []  # Type 2
    ds.CurrentRequestedProcedureEvidenceSequence = evidence_sequence(evidence)
    prior = inp.predecessor(PROFILE)
    if prior is not None:
        ds.PredecessorDocumentsSequence = predecessor_sequence(prior)


def _content(ds: Dataset, inp: ReportInput, findings: Sequence[Finding]) -> None:
    """The root CONTAINER and its tree (module docstring)."""
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [coded(TITLE)]
    ds.ContinuityOfContent = "SEPARATE"
    scopes = scope_labels(inp, findings)
    children = [
        code(LANGUAGE, ENGLISH, CONCEPT_MOD),
        code(OBSERVER_TYPE, DEVICE, OBS_CONTEXT),
        uidref(OBSERVER_UID, device_observer_uid(inp), OBS_CONTEXT),
        text(OBSERVER_NAME, device_observer_name(inp), OBS_CONTEXT),
        text(OBSERVER_MANUFACTURER, MANUFACTURER, OBS_CONTEXT),
        text(OBSERVER_MODEL, inp.manifest.id[:64], OBS_CONTEXT),
        container(SUMMARY, _summary(inp)),
        container(FINDINGS, [_finding(inp, f, scopes[f.scope_key]) for f in findings]),
    ]
    if inp.skipped:
        children.append(container(QUALITATIVE_EVALUATIONS, _not_analysed(inp.skipped)))
    ds.ContentSequence = children


def _summary(inp: ReportInput) -> list[hd.sr.ContentItem]:
    items = [text(COMMENT, statement, CONTAINS) for statement in statements(inp)]
    items.append(text(ALGORITHM_NAME, algorithm_line(inp), CONTAINS))
    card = [line for line in model_card_lines(inp.manifest) if not line.startswith("intended")]
    items.extend(text(ALGORITHM_PARAMETERS, line, CONTAINS) for line in card)
    return items


def _finding(inp: ReportInput, finding: Finding, scope: str) -> hd.sr.ContentItem:
    item = text(FINDING, finding_line(finding, scope), CONTAINS)
    modifiers = [code(FINDING, _concept(finding.label.code), CONCEPT_MOD)]
    site = finding_site_code(inp.manifest, finding.label)
    if site is not None:
        modifiers.append(code(FINDING_SITE, _concept(site), CONCEPT_MOD))
    sources = [image(SOURCE, header, INFERRED_FROM) for header in unique_headers(finding.sources)]
    item.ContentSequence = hd.sr.ContentSequence([*modifiers, *sources])
    return item


def _not_analysed(skipped: Sequence[SkippedImage]) -> list[hd.sr.ContentItem]:
    return [
        text(NOT_ANALYSED, f"{item.sop_instance_uid} - {item.reason}", CONTAINS) for item in skipped
    ]


def _concept(value: CodeLike) -> Concept:
    return (value.value, value.scheme, value.meaning)


def coded(concept: Concept) -> hd.sr.CodedConcept:
    """A coded concept (PS3.3 Table 8.8-1): value, scheme designator, meaning (64 chars at most)."""
    value, scheme, meaning = concept
    return hd.sr.CodedConcept(value, scheme, meaning[:64])


def text(name: Concept, value: str, relationship: str) -> hd.sr.ContentItem:
    """A TEXT content item (Text Value, UT)."""
    return hd.sr.TextContentItem(name=coded(name), value=value, relationship_type=relationship)


def code(name: Concept, value: Concept, relationship: str) -> hd.sr.ContentItem:
    """A CODE content item (Concept Code Sequence)."""
    return hd.sr.CodeContentItem(
        name=coded(name), value=coded(value), relationship_type=relationship
    )


def uidref(name: Concept, value: str, relationship: str) -> hd.sr.ContentItem:
    """A UIDREF content item."""
    return hd.sr.UIDRefContentItem(name=coded(name), value=value, relationship_type=relationship)


def image(name: Concept, header: Dataset, relationship: str) -> hd.sr.ContentItem:
    """An IMAGE content item referencing one source image (Referenced SOP Sequence)."""
    return hd.sr.ImageContentItem(
        name=coded(name),
        referenced_sop_class_uid=uid_of(header, "SOPClassUID"),
        referenced_sop_instance_uid=uid_of(header, "SOPInstanceUID"),
        relationship_type=relationship,
    )


def container(name: Concept, children: Sequence[hd.sr.ContentItem]) -> hd.sr.ContentItem:
    """A CONTAINER content item (continuity SEPARATE) holding ``children`` (CONTAINS)."""
    item = hd.sr.ContainerContentItem(
        name=coded(name), relationship_type=CONTAINS, is_content_continuous=False
    )
    item.ContentSequence = hd.sr.ContentSequence(list(children))
    return item
