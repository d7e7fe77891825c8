"""The analysis pipeline: slice order, aggregation, and one real head CT series through it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread

from dicom_node.app.samples import mixed_study
from models.backends import load_model
from models.registry import ModelRegistry
from models.weights import resolve_weights
from workers.pipeline.aggregate import aggregate
from workers.pipeline.order import Image, group_by_series, patient_axis_position, sort_slices
from workers.pipeline.run import run_analysis

ICH = "ich-headct-densenet121-rsna2019"


def _image(
    name: str, series: str = "1.2", z: float | None = None, number: int | None = None
) -> Image:
    ds = Dataset()
    ds.SOPInstanceUID = f"1.2.3.{ord(name)}"
    ds.SeriesInstanceUID = series
    if z is not None:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, z]
    if number is not None:
        ds.InstanceNumber = number
    return Image(Path(f"{name}.dcm"), ds)


def test_slices_sort_along_the_patient_axis_then_by_instance_number() -> None:
    shuffled = [_image("c", z=10.0), _image("a", z=-5.0), _image("b", z=2.5)]
    assert [i.path.stem for i in sort_slices(shuffled)] == ["a", "b", "c"]
    tilted = _image("t", z=0.0)
    tilted.header.ImageOrientationPatient = [0, 1, 0, 0, 0, 1]  # sagittal: normal is x
    tilted.header.ImagePositionPatient = [7.0, 0, 0]
    assert patient_axis_position(tilted.header) == pytest.approx(7.0)
    numbered = [_image("y", number=2), _image("x", number=1), _image("z", number=3)]
    assert [i.path.stem for i in sort_slices(numbered)] == ["x", "y", "z"]
    mixed = [_image("q", z=1.0), _image("p", number=1)]  # neither key for all: keep order
    assert [i.path.stem for i in sort_slices(mixed)] == ["q", "p"]


def test_aggregate_max_references_the_driving_image_and_mean_all() -> None:
    a, b, c = _image("a", "1.1"), _image("b", "1.1"), _image("c", "1.2")
    p = np.array([[0.1, 0.9], [0.7, 0.2], [0.3, 0.4]], np.float32)
    series = group_by_series([a, b, c], sort=False)
    (study,) = aggregate("study", "max", [a, b, c], p, series)
    np.testing.assert_allclose(study.probabilities, [0.7, 0.9])
    assert [s[0].path.stem for s in study.sources] == ["b", "a"]
    s1, s2 = aggregate("series", "max", [a, b, c], p, series)
    assert (s1.scope_key, s2.scope_key) == ("1.1", "1.2")
    np.testing.assert_allclose(s2.probabilities, [0.3, 0.4])
    (mean,) = aggregate("study", "mean", [a, b, c], p, series)
    np.testing.assert_allclose(mean.probabilities, p.mean(axis=0), rtol=1e-6)
    assert all(len(s) == 3 for s in mean.sources)
    per_image = aggregate("image", "max", [a, b, c], p, series)
    assert [u.scope_key for u in per_image] == ["1.2.3.97", "1.2.3.98", "1.2.3.99"]
    with pytest.raises(ValueError):
        aggregate("study", "median", [a, b, c], p, series)


def test_a_head_ct_series_through_the_pipeline(tmp_path: Path, models_dir: Path) -> None:
    """Per series max over slices: each finding references the slice the model scored highest."""
    study = mixed_study(tmp_path / "study", ct_slices=4)
    ct_paths = [str(p) for p in study.files if p.name.startswith("ct")]
    broken = tmp_path / "broken.dcm"  # a CT slice whose pixel data is cut short
    ds = dcmread(ct_paths[0])
    ds.SOPInstanceUID = "1.2.3.999"
    ds.PixelData = ds.PixelData[:100]
    ds.save_as(broken, enforce_file_format=True)
    manifest = ModelRegistry.load(None).get(ICH)
    model = load_model(manifest, resolve_weights(manifest, models_dir, allow_demo=True), models_dir)

    outcome = run_analysis(model, [*ct_paths, str(broken)])
    z = [float(i.header.ImagePositionPatient[2]) for i in outcome.images]
    assert z == sorted(z) and len(z) == 4  # sorted along the patient axis, broken one out
    (skipped,) = outcome.skipped
    assert skipped.sop_instance_uid == "1.2.3.999"
    assert skipped.reason.startswith("pixel data is truncated: 100 bytes")
    (series,) = outcome.aggregates
    assert series.scope_key == str(outcome.images[0].header.SeriesInstanceUID)

    from models.contract import to_batch
    from models.preprocessing import Preprocessor

    pre = Preprocessor.from_manifest(manifest)
    per_slice = np.concatenate(
        [model.predict(to_batch(manifest, [pre(dcmread(i.path))])) for i in outcome.images]
    )
    np.testing.assert_allclose(series.probabilities, per_slice.max(axis=0), atol=1e-5)
    for label, sources in enumerate(series.sources):
        (source,) = sources
        assert source is outcome.images[int(per_slice[:, label].argmax())]
