"""Output profile "pdf": a one-page summary as an Encapsulated PDF (Modality DOC).

The page (reportlab platypus, A4, ``invariant=1`` so that the same input gives the
same bytes; every text comes from :mod:`workers.outputs.summary`):

- the disclaimer "AI-generated, not a diagnosis." in a red box at the top, and the
  untrained demo weights statement beside it when the weights are not real;
- patient name and ID, study date, accession number and Study Instance UID, as
  a PACS shows them (these values go into the PDF and the DICOM object only,
  never into a log line or an error text);
- the algorithm line (name, id, version, backend, precision, device) and the
  model card's URL and reference;
- a table of the findings: finding, scope ("study", "series <Series Number>",
  "image <Instance Number>", as in the TID 1500 tracking identifiers), probability,
  threshold, result (present rows in bold); the images not analysed, with their reasons.

The page is shrunk to fit (platypus ``KeepInFrame``) when a large series-scope or
image-scope analysis has many rows, so it is always one page.

DICOM (PS3.3 A.45.1 Encapsulated PDF IOD, SOP Class 1.2.840.10008.5.1.4.1.1.104.1):
Patient, General Study, Encapsulated Document Series (Modality ``DOC``; viewers
break on ``OT``), General Equipment, SC Equipment (Conversion Type ``WSD``),
Encapsulated Document (MIME Type ``application/pdf``, Document Title, Burned In
Annotation ``YES``, Concept Name Code Sequence LN 18748-4 "Diagnostic imaging
report", Source Instance Sequence = the images analysed, Encapsulated Document
padded to even length with a trailing NUL, Encapsulated Document Length = the PDF's
own length) and SOP Common.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Sequence
from typing import Any
from xml.sax.saxutils import escape

from pydicom import Dataset

from dicom_node.core.errors import ReportError
from workers.outputs.document import new_document
from workers.outputs.findings import Finding, ReportInput
from workers.outputs.headers import (
    BuildSteps,
    first_of_study,
    text_value,
    uid_of,
    unique_headers,
)
from workers.outputs.summary import algorithm_line, scope_labels, statements
from workers.outputs.tid1500 import model_card_lines, series_description

__all__ = ["ENCAPSULATED_PDF", "PROFILE", "build_pdf", "render_pdf"]

PROFILE = "pdf"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
SUFFIX = " (PDF)"
TITLE = "AI results summary"
REPORT_TITLE = ("18748-4", "LN", "Diagnostic imaging report")
MAX_ROWS = 60
"""Findings listed at most; further ones are counted in a closing line (the SRs list all)."""
MAX_SKIPPED = 10


def build_pdf(inp: ReportInput) -> list[Dataset]:
    """Build the Encapsulated PDF summary of one analysis.

    Parameters
    ----------
    inp : ReportInput
        Findings, evidence headers, manifest, weights, serving, study UID, generation.

    Returns
    -------
    list of pydicom.Dataset
        ``[doc]``: one Encapsulated PDF instance, Modality DOC, file meta Explicit
        VR Little Endian, patient and study copied from the first evidence image of
        the study.

    Raises
    ------
    ReportError
        If the input is inconsistent, nothing is reportable, no evidence image is
        of the study, a header lacks a UID, or reportlab fails. The message names
        the stage and the exception class, never a header value.
    """
    findings = inp.reported()
    if not findings:
        raise ReportError(f"model {inp.manifest.id}: no reportable finding")
    with BuildSteps(f"{PROFILE} document", inp.study_uid, "document") as steps:
        ds = new_document(
            inp,
            PROFILE,
            0,
            sop_class_uid=ENCAPSULATED_PDF,
            modality="DOC",
            series_description=series_description(inp, SUFFIX),
        )
        steps.stage = "pdf"
        source = first_of_study(unique_headers(inp.evidence), inp.study_uid)
        document = render_pdf(inp, source)
        steps.stage = "encapsulated document"
        _encapsulate(ds, inp, document)
    return [ds]


def _encapsulate(ds: Dataset, inp: ReportInput, document: bytes) -> None:
    """SC Equipment (C.8.6.1) and Encapsulated Document (C.24.2) attributes."""
    ds.ConversionType = "WSD"  # workstation
    ds.BurnedInAnnotation = "YES"  # patient name and ID are in the document
    ds.AcquisitionDateTime = f"{ds.ContentDate}{ds.ContentTime}"
    ds.DocumentTitle = TITLE
    value, scheme, meaning = REPORT_TITLE
    name = Dataset()
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = value, scheme, meaning
    ds.ConceptNameCodeSequence = [name]
    ds.VerificationFlag = "UNVERIFIED"
    sources = unique_headers(s for f in inp.reported() for s in f.sources)
    ds.SourceInstanceSequence = [_reference(header) for header in sources]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(document)
    ds.EncapsulatedDocument = document + b"\x00" * (len(document) % 2)  # OB: even length


def _reference(header: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = uid_of(header, "SOPClassUID")
    item.ReferencedSOPInstanceUID = uid_of(header, "SOPInstanceUID")
    return item


def render_pdf(inp: ReportInput, source: Dataset) -> bytes:
    """The one-page summary as PDF bytes (reportlab, ``invariant=1``: no dates, fixed ID).

    Parameters
    ----------
    inp : ReportInput
        The analysis.
    source : pydicom.Dataset
        The header the patient and study lines are read from (the first evidence
        image of the study).

    Returns
    -------
    bytes
        A PDF 1.4 document of one A4 page; the same input gives the same bytes.
    """
    from reportlab.lib.pagesizes import A4  # imported on first use
    from reportlab.lib.units import mm
    from reportlab.platypus import KeepInFrame, SimpleDocTemplate

    buffer = io.BytesIO()
    margin = 15 * mm
    page = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=margin,
        rightMargin=margin,
        topMargin=margin,
        bottomMargin=margin,
        title=TITLE,
        author="dicom-node",
        subject=f"{inp.manifest.id} {inp.manifest.version}",
        creator="dicom-node",
        invariant=1,
    )
    flowables = _story(inp, source)
    page.build([KeepInFrame(page.width, page.height, flowables, mode="shrink")])
    return buffer.getvalue()


def _story(inp: ReportInput, source: Dataset) -> list[Any]:
    from reportlab.lib import colors
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import Paragraph, Spacer, Table, TableStyle

    styles = getSampleStyleSheet()
    body, small = styles["BodyText"], styles["BodyText"].clone("small", fontSize=8, leading=10)
    alert = styles["BodyText"].clone(
        "alert", fontName="Helvetica-Bold", fontSize=13, leading=16, textColor=colors.darkred
    )
    story: list[Any] = [Paragraph(escape(f"{TITLE}: {inp.manifest.name}"), styles["Title"])]
    warning = Table(
        [[Paragraph(escape(line), alert)] for line in statements(inp)],
        colWidths=["100%"],
        style=TableStyle(
            [
                ("BOX", (0, 0), (-1, -1), 2, colors.darkred),
                ("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#fdecea")),
                ("TOPPADDING", (0, 0), (-1, -1), 4),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 4),
            ]
        ),
    )
    story += [warning, Spacer(1, 6)]
    story.append(_facts(_patient_lines(inp, source), small))
    story.append(Spacer(1, 6))
    story.append(Paragraph(escape(algorithm_line(inp)), body))
    for line in model_card_lines(inp.manifest):
        if not line.startswith("intended"):
            story.append(Paragraph(escape(line), small))
    story.append(Spacer(1, 6))
    story.append(_findings_table(inp, small))
    if inp.skipped:
        story.append(Spacer(1, 6))
        story.append(Paragraph(f"Images not analysed ({len(inp.skipped)}):", body))
        for item in inp.skipped[:MAX_SKIPPED]:
            story.append(Paragraph(escape(f"{item.sop_instance_uid} - {item.reason}"), small))
        if len(inp.skipped) > MAX_SKIPPED:
            story.append(Paragraph(f"... and {len(inp.skipped) - MAX_SKIPPED} more", small))
    story.append(Spacer(1, 8))
    story.append(
        Paragraph(
            escape(
                "Probabilities are the model's outputs in [0, 1]; a finding is PRESENT when "
                "the probability reaches the label's operating threshold. The structured "
                "reports (DICOM SR) of this analysis carry the same results."
            ),
            small,
        )
    )
    return story


def _patient_lines(inp: ReportInput, source: Dataset) -> list[tuple[str, str]]:
    """Label and value of the patient and study lines (values as the source has them)."""
    return [
        ("Patient", text_value(source, "PatientName").replace("^", " ").strip()),
        ("Patient ID", text_value(source, "PatientID")),
        ("Study date", _date(text_value(source, "StudyDate"))),
        ("Accession", text_value(source, "AccessionNumber")),
        ("Study Instance UID", inp.study_uid),
        ("Images analysed", str(len(unique_headers(inp.evidence)))),
    ]


def _date(value: str) -> str:
    try:
        return dt.datetime.strptime(value[:8], "%Y%m%d").date().isoformat()
    except ValueError:
        return value


def _facts(lines: Sequence[tuple[str, str]], style: Any) -> Any:
    from reportlab.platypus import Paragraph, Table, TableStyle

    rows = [
        [Paragraph(f"<b>{escape(k)}</b>", style), Paragraph(escape(v), style)] for k, v in lines
    ]
    return Table(
        rows,
        colWidths=["25%", "75%"],
        style=TableStyle(
            [("VALIGN", (0, 0), (-1, -1), "TOP"), ("TOPPADDING", (0, 0), (-1, -1), 1)]
        ),
    )


def _findings_table(inp: ReportInput, style: Any) -> Any:
    """Finding, scope ("study", "series <n>", "image <n>"), probability, threshold, result."""
    from reportlab.lib import colors
    from reportlab.platypus import Paragraph, Table, TableStyle

    findings: list[Finding] = inp.reported()
    scopes = scope_labels(inp, findings)
    header = ["Finding", "Scope", "Probability", "Threshold", "Result"]
    rows: list[list[Any]] = [[Paragraph(f"<b>{h}</b>", style) for h in header]]
    shown = findings[:MAX_ROWS]
    for finding in shown:
        bold = finding.present
        cells = [
            finding.label.code.meaning,
            scopes[finding.scope_key] or "study",
            f"{finding.probability:.3f}",
            f"{finding.label.threshold:.3f}",
            "PRESENT" if finding.present else "absent",
        ]
        rows.append([Paragraph(f"<b>{escape(c)}</b>" if bold else escape(c), style) for c in cells])
    if len(findings) > len(shown):
        more = f"... {len(findings) - len(shown)} more findings: see the structured report"
        rows.append([Paragraph(escape(more), style), "", "", "", ""])
    table = Table(rows, colWidths=["40%", "18%", "14%", "14%", "14%"], repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
                ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8e8e8")),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ]
        )
    )
    return table
