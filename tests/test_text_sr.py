"""The Basic Text SR profile (workers.outputs.text_sr) on real pydicom-data headers.

Checked by content (statements, algorithm, one TEXT per finding, codes, image
references, predecessor) and by real tools: dciodvfy (no error), dsrdump
(renders the tree, long values printed whole) and dcmjs (parses it).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from pydicom import Dataset, dcmread

from dicom_node.core.ledger import PriorReport, SkippedImage
from dicom_node.core.uids import derived_uid
from tests.test_sr import HEAD, FakeWeights, chest_input, ct_series
from tests.validators import dciodvfy, dcmjs_check, tool
from workers.outputs import builder
from workers.outputs.findings import Finding, ReportInput, predecessor_key
from workers.outputs.reader import read_not_analysed
from workers.outputs.summary import DISCLAIMER, UNTRAINED_STATEMENT, algorithm_line, finding_lines
from workers.outputs.text_sr import BASIC_TEXT_SR, build_text_sr

ALLOWED_VALUE_TYPES = {"TEXT", "CODE", "UIDREF", "IMAGE", "CONTAINER"}
ALLOWED_RELATIONSHIPS = {"CONTAINS", "HAS OBS CONTEXT", "HAS CONCEPT MOD", "INFERRED FROM"}


def text_sr(inp: ReportInput) -> Dataset:
    objects = build_text_sr(inp)
    assert isinstance(objects, list) and len(objects) == 1
    return objects[0]


def items(node: Dataset) -> Iterator[Dataset]:
    for item in node.get("ContentSequence", []):
        yield item
        yield from items(item)


def concept(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


def texts(sr: Dataset, code_value: str) -> list[str]:
    return [
        str(i.TextValue) for i in items(sr) if i.ValueType == "TEXT" and concept(i) == code_value
    ]


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def dsrdump_long(path: Path) -> str:
    """dsrdump with long values printed whole (``+Pl``); fails on any error line."""
    out = subprocess.run(
        [tool("dsrdump"), "+Pl", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0 and not [
        line for line in out.stderr.splitlines() if line.startswith(("E:", "F:"))
    ], out.stderr
    return out.stdout


def head_input(slices: list[Dataset], best: int) -> ReportInput:
    """Series-scope head CT analysis whose every finding came from slice ``best``."""
    probabilities = {"hemorrhage": 0.62, "fracture": 0.12, "normal": 0.3}
    findings = [
        Finding(label, probabilities[label.name], (slices[best],), slices[0].SeriesInstanceUID)
        for label in HEAD.labels
    ]
    return ReportInput(
        study_uid=slices[0].StudyInstanceUID,
        generation=1,
        manifest=HEAD,
        weights=FakeWeights(HEAD.id, "real"),
        backend="onnxruntime",
        findings=findings,
        evidence=slices,
    )


def test_chest_text_sr_says_what_was_found_and_that_it_is_not_a_diagnosis(tmp_path: Path) -> None:
    inp = chest_input()
    source = inp.evidence[0]
    sr = text_sr(inp)
    assert builder("text_sr") is build_text_sr
    assert (sr.SOPClassUID, sr.Modality, sr.SeriesNumber) == (BASIC_TEXT_SR, "SR", 9902)
    assert sr.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (sr.StudyInstanceUID, sr.PatientID) == (source.StudyInstanceUID, source.PatientID)
    assert "(text)" in sr.SeriesDescription and "UNTRAINED" in sr.SeriesDescription
    assert len(sr.SeriesDescription) <= 64
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.ContinuityOfContent) == (
        "COMPLETE",
        "UNVERIFIED",
        "SEPARATE",
    )
    assert sr.ConceptNameCodeSequence[0].CodeValue == "18748-4"
    assert sr.PerformedProcedureCodeSequence == []
    (study,) = sr.CurrentRequestedProcedureEvidenceSequence
    assert study.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        source.SOPInstanceUID
    )
    # The statements, the algorithm and every finding, in order, one TEXT each.
    assert texts(sr, "121106") == [DISCLAIMER, UNTRAINED_STATEMENT]
    assert texts(sr, "111001") == [algorithm_line(inp)]
    assert texts(sr, "121071") == finding_lines(inp)
    assert len(finding_lines(inp)) == len(inp.reported()) == 18
    # One CODE per finding (the label's code), its site, and the source image.
    findings_container = next(i for i in sr.ContentSequence if concept(i) == "121070")
    for item, finding in zip(findings_container.ContentSequence, inp.reported(), strict=True):
        codes = {concept(c): c for c in item.ContentSequence if c.ValueType == "CODE"}
        assert codes["121071"].ConceptCodeSequence[0].CodeValue == finding.label.code.value
        site = "80891009" if finding.label.name == "Cardiomegaly" else "39607008"
        assert codes["363698007"].ConceptCodeSequence[0].CodeValue == site
        (image,) = [c for c in item.ContentSequence if c.ValueType == "IMAGE"]
        assert image.RelationshipType == "INFERRED FROM"
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    # Only what a Basic Text SR allows (PS3.3 A.35.1).
    assert {i.ValueType for i in items(sr)} <= ALLOWED_VALUE_TYPES
    assert {i.RelationshipType for i in items(sr)} <= ALLOWED_RELATIONSHIPS
    path = save(sr, tmp_path / "text.dcm")
    errors, _ = dciodvfy(path)
    assert errors == []
    tree = dsrdump_long(path)
    assert tree.splitlines()[0].startswith("Basic Text SR")
    for line in [DISCLAIMER, UNTRAINED_STATEMENT, algorithm_line(inp), *finding_lines(inp)]:
        assert line in tree
    (seen,) = dcmjs_check([path])
    assert seen["parsed"] and seen["sop_class_uid"] == BASIC_TEXT_SR
    assert seen["modality"] == "SR" and seen["study_uid"] == source.StudyInstanceUID


def test_real_weights_carry_no_untrained_statement() -> None:
    inp = chest_input(kind="real")
    sr = text_sr(inp)
    assert texts(sr, "121106") == [DISCLAIMER]
    assert "UNTRAINED" not in sr.SeriesDescription
    assert sr.SeriesDescription == "AI Fake chest classifier (text)"
    assert not [t for t in texts(sr, "111001") if "UNTRAINED" in t]


def test_head_ct_references_the_slice_that_drove_the_finding(tmp_path: Path) -> None:
    slices = ct_series(3, derived_uid("test-text-sr", "head"), 4)
    inp = head_input(slices, best=2)
    sr = text_sr(inp)
    assert len(texts(sr, "121071")) == 2  # "normal" has report: false
    referenced = {
        str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for i in items(sr)
        if i.ValueType == "IMAGE"
    }
    assert referenced == {str(slices[2].SOPInstanceUID)}
    sites = {
        str(i.ConceptCodeSequence[0].CodeValue) for i in items(sr) if concept(i) == "363698007"
    }
    assert sites == {"12738006"}  # Brain, from the manifest
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert sum(len(s.ReferencedSOPSequence) for s in evidence) == 3  # every slice analysed
    assert "CodingSchemeIdentificationSequence" not in sr  # SCT codes only
    path = save(sr, tmp_path / "head.dcm")
    assert dciodvfy(path)[0] == []
    assert "Hemorrhage: PRESENT, probability 0.620 (threshold 0.400)" in dsrdump_long(path)


def test_same_input_same_uids_and_a_later_generation_supersedes_in_the_same_series(
    tmp_path: Path,
) -> None:
    inp = chest_input()
    first, again = text_sr(inp), text_sr(inp)
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (
        again.SOPInstanceUID,
        again.SeriesInstanceUID,
    )
    assert "PredecessorDocumentsSequence" not in first
    prior = PriorReport(
        sop_class_uid=BASIC_TEXT_SR,
        sop_instance_uid=str(first.SOPInstanceUID),
        series_instance_uid=str(first.SeriesInstanceUID),
        study_uid=str(first.StudyInstanceUID),
    )
    later = replace(inp, generation=2, predecessors={predecessor_key("text_sr"): prior})
    second = text_sr(later)
    assert second.SeriesInstanceUID == first.SeriesInstanceUID
    assert second.SOPInstanceUID != first.SOPInstanceUID
    assert (first.InstanceNumber, second.InstanceNumber) == (1, 2)
    (study,) = second.PredecessorDocumentsSequence
    (series,) = study.ReferencedSeriesSequence
    (sop,) = series.ReferencedSOPSequence
    assert (study.StudyInstanceUID, series.SeriesInstanceUID) == (
        first.StudyInstanceUID,
        first.SeriesInstanceUID,
    )
    assert (sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID) == (
        BASIC_TEXT_SR,
        first.SOPInstanceUID,
    )
    path = save(second, tmp_path / "second.dcm")
    assert dciodvfy(path)[0] == []
    assert dcmread(path).PredecessorDocumentsSequence[0].StudyInstanceUID == first.StudyInstanceUID
    # The TID 1500 report's predecessor is not this profile's.
    other = replace(inp, predecessors={predecessor_key("tid1500"): prior})
    assert "PredecessorDocumentsSequence" not in text_sr(other)


def test_images_not_analysed_are_named(tmp_path: Path) -> None:
    skipped = [
        SkippedImage("1.2.826.0.1.3680043.8.498.1", "image is constant (blank)"),
        SkippedImage("1.2.826.0.1.3680043.8.498.2", "Rows (0028,0010) is missing"),
    ]
    sr = text_sr(replace(chest_input(), skipped=skipped))
    assert read_not_analysed(sr) == [(s.sop_instance_uid, s.reason) for s in skipped]
    assert "99DCMNODE" in {
        str(s.CodingSchemeDesignator) for s in sr.CodingSchemeIdentificationSequence
    }
    assert dciodvfy(save(sr, tmp_path / "skipped.dcm"))[0] == []
    assert read_not_analysed(text_sr(chest_input())) == []
