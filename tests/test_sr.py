from pathlib import Path

from pydicom import dcmread

from models.manifest import Manifest
from models.backends.runtime import load_model
from models.weights.store.store import WeightsInfo
from tests.conftest import dciodvfy_errors
from workers.pipeline.run.run import analyze
from workers.outputs.tid1500 import read_findings


def test_chest_cr_gives_a_valid_tid1500_sr(
    manifest: Manifest, demo_weights: WeightsInfo, models_dir: Path, cr_path: Path, tmp_path: Path
) -> None:
    model = load_model(manifest, demo_weights, models_dir)
    source = dcmread(cr_path, stop_before_pixels=True)
    result = analyze(source.StudyInstanceUID, 1, [str(cr_path)], manifest, lambda: model)
    assert result.report is not None
    sr = result.report
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert (sr.StudyInstanceUID, sr.PatientID) == (source.StudyInstanceUID, source.PatientID)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    findings = read_findings(sr)
    assert [f.finding for f in findings] == [label.code.meaning for label in manifest.labels]
    for finding, label in zip(result.findings, manifest.labels, strict=True):
        expected = "Present" if finding.probability >= label.threshold else "Absent"
        assert expected == ("Present" if finding.present else "Absent")
    assert "UNTRAINED" in sr.SeriesDescription
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    # Deterministic UIDs: the same study and generation give the same SR instance.
    again = analyze(source.StudyInstanceUID, 1, [str(cr_path)], manifest, lambda: model)
    assert again.report is not None and again.report.SOPInstanceUID == sr.SOPInstanceUID
    assert dcmread(path).SOPInstanceUID == sr.SOPInstanceUID


def test_ct_is_not_applicable(manifest: Manifest, ct_path: Path) -> None:
    def no_model():  # type: ignore[no-untyped-def]
        raise AssertionError("the model must not load for a CT study")

    result = analyze("1.2.3", 1, [str(ct_path)], manifest, no_model)
    assert result.report is None and result.reason == "no applicable model"
