"""The key image profile from a real analysis: an RGB Secondary Capture and its KOS.

A real pipeline run (torch backend, CPU, untrained demo weights) of pydicom-data's
RG1 chest CR, its report input with the worker's explainer
(:func:`workers.pipeline.explain.explainer_for`), then
:func:`workers.outputs.key_image.build_key_image`. Both objects must pass
dciodvfy with no error and parse in dcmjs; the SC is RGB 8 bit with Burned In
Annotation YES, its picture is the heat map over the source, and its text band
carries the disclaimer and the untrained notice; the KOS selects the SC.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread

from dicom_node.core.errors import ReportError
from models.backends import BackendOptions, load_model
from models.manifest import Manifest
from models.weights import UNTRAINED_NOTICE, WeightsInfo
from tests.validators import dciodvfy, dcmjs_check
from workers.outputs.findings import ReportInput, Saliency, report_input, report_uids, series_number
from workers.outputs.key_image import build_key_image, source_of, text_lines
from workers.outputs.overlay import MAX_SIDE, fit, heat_overlay, text_band
from workers.outputs.summary import DISCLAIMER, top_findings
from workers.pipeline.explain import explainer_for
from workers.pipeline.run import run_analysis

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
KOS = "1.2.840.10008.5.1.4.1.1.88.59"


@dataclass(frozen=True)
class Built:
    inp: ReportInput
    source: Dataset
    sc: Dataset
    kos: Dataset
    paths: list[Path]


@pytest.fixture(scope="module")
def built(
    manifest: Manifest,
    demo_weights: WeightsInfo,
    models_dir: Path,
    cr_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Built]:
    model = load_model(
        manifest, demo_weights, models_dir, "torch", options=BackendOptions(device="cpu")
    )
    outcome = run_analysis(model, [str(cr_path)])
    study = str(outcome.images[0].header.StudyInstanceUID)
    inp = report_input(outcome, model, study, 2, explainer=explainer_for(model, outcome.images))
    sc, kos = build_key_image(inp)
    directory = tmp_path_factory.mktemp("key-image")
    paths = []
    for name, ds in (("sc", sc), ("kos", kos)):
        path = directory / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    yield Built(inp, outcome.images[0].header, sc, kos, paths)


def test_both_objects_pass_dciodvfy_and_dcmjs(built: Built) -> None:
    for path in built.paths:
        errors, warnings = dciodvfy(path)
        print(f"{path.name} dciodvfy: {len(errors)} errors, {len(warnings)} warnings")
        print("\n".join(f"  {w}" for w in sorted(set(warnings))))
        assert errors == [], f"{path.name}: {errors}"
    seen = dcmjs_check(built.paths)
    for ds, read in zip((built.sc, built.kos), seen, strict=True):
        assert read["parsed"], read
        assert read["sop_class_uid"] == ds.SOPClassUID
        assert read["sop_instance_uid"] == ds.SOPInstanceUID
        assert (read["study_uid"], read["patient_id"]) == (
            built.source.StudyInstanceUID,
            built.source.PatientID,
        )
        print(f"dcmjs: parsed {read['sop_class_uid']} modality {read['modality']}")


def test_the_sc_is_an_rgb_key_image_of_the_source(built: Built) -> None:
    sc = dcmread(built.paths[0])
    assert sc.SOPClassUID == SECONDARY_CAPTURE
    assert (sc.SamplesPerPixel, sc.PhotometricInterpretation, sc.BitsAllocated) == (3, "RGB", 8)
    pixels = sc.pixel_array
    assert pixels.dtype == np.uint8 and pixels.shape == (sc.Rows, sc.Columns, 3)
    assert sc.BurnedInAnnotation == "YES" and sc.ConversionType == "WSD"
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY"]
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == built.source.SOPInstanceUID
    assert "Grad-CAM" in sc.DerivationDescription
    assert "Laterality" not in sc  # CHEST is unpaired: dciodvfy wants it absent
    series_uid, sop_uid = report_uids(built.inp, "key_image", 0)
    assert (sc.SeriesInstanceUID, sc.SOPInstanceUID) == (series_uid, sop_uid)
    assert sc.SeriesNumber == series_number("key_image", 0) and sc.InstanceNumber == 2
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber"):
        assert sc[keyword].value == built.source[keyword].value
    assert sc.Columns == built.source.Columns <= MAX_SIDE  # 1955 x 1841 is not scaled down
    assert "UNTRAINED" in sc.SeriesDescription


def test_the_picture_is_the_heat_map_and_the_band_holds_the_statements(built: Built) -> None:
    pixels = dcmread(built.paths[0]).pixel_array
    top = top_findings(built.inp, 3)
    source = source_of(built.inp, top[0])
    assert built.inp.explainer is not None
    saliency = built.inp.explainer.explain(source, top[0].label.name)
    picture = heat_overlay(*fit(saliency.image, saliency.heat))
    rows = picture.shape[0]
    assert rows == built.source.Rows
    assert np.array_equal(pixels[:rows], picture)  # no text over the anatomy
    assert not np.array_equal(picture, np.repeat(saliency.image[..., None], 3, axis=2))
    lines = text_lines(built.inp, top, saliency.method)
    texts = [line.text for line in lines]
    assert texts[0] == DISCLAIMER and UNTRAINED_NOTICE in texts
    assert any(top[0].label.code.meaning in t for t in texts)
    band = pixels[rows:]
    assert np.array_equal(band, text_band(pixels.shape[1], lines))
    without = [line for line in lines if line.text not in (DISCLAIMER, UNTRAINED_NOTICE)]
    other = text_band(pixels.shape[1], without)
    assert other.shape != band.shape or not np.array_equal(other, band)
    yellow = (band[..., 0] > 200) & (band[..., 1] > 150) & (band[..., 2] < 80)
    assert int(yellow.sum()) > 500, "no yellow (statement) text in the band"


def test_the_kos_selects_the_key_image(built: Built) -> None:
    kos = dcmread(built.paths[1])
    assert kos.SOPClassUID == KOS and kos.Modality == "KO"
    title = kos.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("113000", "DCM")
    evidence = {
        str(sop.ReferencedSOPInstanceUID)
        for study in kos.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert {str(built.sc.SOPInstanceUID), str(built.source.SOPInstanceUID)} <= evidence
    images = [i for i in kos.ContentSequence if i.ValueType == "IMAGE"]
    assert images[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == built.sc.SOPInstanceUID
    (text,) = [
        i for i in kos.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "113012"
    ]  # Key Object Description
    assert text.ValueType == "TEXT" and text.RelationshipType == "CONTAINS"
    assert DISCLAIMER in text.TextValue and UNTRAINED_NOTICE in text.TextValue
    series_uid, sop_uid = report_uids(built.inp, "key_image", 1)
    assert (kos.SeriesInstanceUID, kos.SOPInstanceUID) == (series_uid, sop_uid)
    assert kos.SeriesNumber == series_number("key_image", 1) and kos.InstanceNumber == 2
    assert (kos.StudyInstanceUID, kos.PatientID) == (
        built.source.StudyInstanceUID,
        built.source.PatientID,
    )


def test_a_rebuild_gives_the_same_objects(built: Built) -> None:
    sc, kos = build_key_image(built.inp)
    assert (sc.SOPInstanceUID, kos.SOPInstanceUID) == (
        built.sc.SOPInstanceUID,
        built.kos.SOPInstanceUID,
    )
    assert sc.PixelData == built.sc.PixelData


class _Wrong:
    """An explainer whose heat map does not fit its image."""

    def explain(self, header: Dataset, label_name: str) -> Saliency:
        return Saliency(np.zeros((8, 8), np.uint8), np.zeros((4, 4), np.float32), "broken")


def test_no_explainer_or_a_bad_saliency_is_refused(built: Built) -> None:
    with pytest.raises(ReportError, match="key_image needs an explainer"):
        build_key_image(replace(built.inp, explainer=None))
    with pytest.raises(ReportError, match="differs from the image"):
        build_key_image(replace(built.inp, explainer=_Wrong()))


def test_a_large_source_is_scaled_down() -> None:
    image = np.zeros((3000, 1200), np.uint8)
    heat = np.ones((3000, 1200), np.float32)
    small, small_heat = fit(image, heat)
    assert small.shape == small_heat.shape == (MAX_SIDE, 819)
    assert float(small_heat.min()) >= 0.0 and float(small_heat.max()) <= 1.0
