"""The Encapsulated PDF profile (workers.outputs.pdf) on real pydicom-data headers.

The PDF is read back with pypdf (a test-only dependency): one page, and its text
says the disclaimer, the untrained statement, the algorithm, every finding and
the patient and study as a PACS shows them. The DICOM object passes dciodvfy
and dcmjs parses it.
"""

from __future__ import annotations

import io
import logging
from copy import deepcopy
from dataclasses import replace
from pathlib import Path

import pypdf  # test-only dependency (dev extras)
import pytest
from pydicom import Dataset

from tests.test_sr import FAKE, FakeAggregation, chest_input, ct_series
from tests.test_text_sr import head_input
from tests.validators import dciodvfy, dcmjs_check
from workers.outputs import builder
from workers.outputs.findings import Finding, ReportInput
from workers.outputs.pdf import ENCAPSULATED_PDF, MAX_ROWS, build_pdf
from workers.outputs.summary import DISCLAIMER, UNTRAINED_STATEMENT, algorithm_line


def pdf_of(inp: ReportInput) -> Dataset:
    objects = build_pdf(inp)
    assert isinstance(objects, list) and len(objects) == 1
    return objects[0]


def document(ds: Dataset) -> bytes:
    """The PDF bytes without the even-length padding."""
    data = bytes(ds.EncapsulatedDocument)
    assert len(data) % 2 == 0 and len(data) - int(ds.EncapsulatedDocumentLength) in (0, 1)
    return data[: int(ds.EncapsulatedDocumentLength)]


def page_text(ds: Dataset) -> str:
    """The text of the one page, whitespace collapsed (lines wrap anywhere)."""
    reader = pypdf.PdfReader(io.BytesIO(document(ds)))
    assert len(reader.pages) == 1
    return " ".join(reader.pages[0].extract_text().split())


def test_chest_pdf_is_a_one_page_doc_with_disclaimer_findings_and_patient(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    inp = chest_input()
    source = inp.evidence[0]
    ds = pdf_of(inp)
    assert builder("pdf") is build_pdf
    assert (ds.SOPClassUID, ds.Modality, ds.SeriesNumber) == (ENCAPSULATED_PDF, "DOC", 9905)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (ds.StudyInstanceUID, ds.PatientID, ds.PatientName) == (
        source.StudyInstanceUID,
        source.PatientID,
        source.PatientName,
    )
    assert (ds.MIMETypeOfEncapsulatedDocument, ds.BurnedInAnnotation, ds.ConversionType) == (
        "application/pdf",
        "YES",
        "WSD",
    )
    assert ds.ConceptNameCodeSequence[0].CodeValue == "18748-4" and ds.DocumentTitle
    assert ds.SourceInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert "UNTRAINED" in ds.SeriesDescription and len(ds.SeriesDescription) <= 64
    data = document(ds)
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    text = page_text(ds)
    assert text.index(DISCLAIMER) < text.index("Finding")  # stated first
    assert " ".join(UNTRAINED_STATEMENT.split()) in text
    assert algorithm_line(inp) in text
    for finding in inp.reported():
        verdict = "PRESENT" if finding.present else "absent"
        row = (
            f"{finding.label.code.meaning} study {finding.probability:.3f} "
            f"{finding.label.threshold:.3f} {verdict}"
        )
        assert row in text, row
    assert "CompressedSamples RG1" in text and str(source.PatientID) in text
    assert str(source.StudyInstanceUID) in text
    path = tmp_path / "pdf.dcm"
    ds.save_as(path, enforce_file_format=True)
    errors, _ = dciodvfy(path)
    assert errors == []
    (seen,) = dcmjs_check([path])
    assert seen["parsed"] and seen["modality"] == "DOC"
    assert seen["sop_class_uid"] == ENCAPSULATED_PDF and seen["patient_id"] == source.PatientID
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "CompressedSamples" not in logged and str(source.PatientID) not in logged


def test_same_input_gives_the_same_pdf_bytes_and_uids() -> None:
    inp = chest_input()
    one, two = pdf_of(inp), pdf_of(inp)
    assert document(one) == document(two)
    assert (one.SOPInstanceUID, one.SeriesInstanceUID) == (
        two.SOPInstanceUID,
        two.SeriesInstanceUID,
    )
    later = pdf_of(replace(inp, generation=2))
    assert later.SeriesInstanceUID == one.SeriesInstanceUID  # same series across generations
    assert later.SOPInstanceUID != one.SOPInstanceUID and later.InstanceNumber == 2


def test_real_weights_carry_no_untrained_statement() -> None:
    ds = pdf_of(chest_input(kind="real"))
    text = page_text(ds)
    assert DISCLAIMER in text and "Untrained" not in text and "UNTRAINED" not in text
    assert ds.SeriesDescription == "AI Fake chest classifier (PDF)"


def test_head_ct_series_scope(tmp_path: Path) -> None:
    slices = ct_series(3, "1.2.826.0.1.3680043.8.498.4242", 4)
    inp = head_input(slices, best=1)
    ds = pdf_of(inp)
    text = page_text(ds)
    assert "Hemorrhage" in text and "PRESENT" in text and "Normal" not in text  # report: false
    assert "Fracture series 4 0.120 0.300 absent" in text
    assert ds.SourceInstanceSequence[0].ReferencedSOPInstanceUID == slices[1].SOPInstanceUID
    path = tmp_path / "head.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert dciodvfy(path)[0] == []


def test_many_findings_still_fit_one_page() -> None:
    inp = chest_input()
    source = inp.evidence[0]
    manifest = replace(FAKE, aggregation=FakeAggregation(scope="image"))
    copies = []
    for k in range(6):
        header = deepcopy(source)
        header.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.77.{k + 1}"
        copies.append(header)
    findings = [
        Finding(label, 0.5, (header,), str(header.SOPInstanceUID))
        for header in copies
        for label in manifest.labels
    ]
    assert len(findings) > MAX_ROWS
    ds = pdf_of(replace(inp, manifest=manifest, findings=findings, evidence=copies))
    text = page_text(ds)  # one page
    assert f"{len(findings) - MAX_ROWS} more findings" in text
    assert DISCLAIMER in text
