"""Warm-up: build one SR from a synthetic, PHI-free header at worker start.

The first SR highdicom builds in a process loads its copy of the standard (about
a second); building one at start moves that cost off the first study. The header
has everything a real source image has that the SR reads (UIDs, modality, the
image pixel description attributes), so a healthy start logs no warning or error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom import Dataset

from dicom_node.core.uids import derived_uid
from workers.outputs.findings import (
    DEFAULT_PRECISION,
    AggregationLike,
    Finding,
    LabelLike,
    ManifestLike,
    ModelCardLike,
    ReportInput,
)

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


@dataclass(frozen=True)
class _Code:
    value: str = "WARMUP"
    scheme: str = "99DCMNODE"
    meaning: str = "Warm-up finding"


@dataclass(frozen=True)
class _Label:
    name: str = "warm-up"
    code: _Code = field(default_factory=_Code)
    threshold: float = 0.5
    report: bool = True


@dataclass(frozen=True)
class _Aggregation:
    scope: str = "study"


@dataclass(frozen=True)
class _Card:
    intended_use: str = "Warm-up of the report writer; never delivered."
    reference: str = ""
    url: str | None = None


@dataclass(frozen=True)
class _Manifest:
    id: str = "warm-up"
    name: str = "Warm-up"
    version: str = "0"
    labels: Sequence[LabelLike] = (_Label(),)
    aggregation: AggregationLike = field(default_factory=_Aggregation)
    model_card: ModelCardLike | None = field(default_factory=_Card)


@dataclass(frozen=True)
class _Weights:
    model_id: str = "warm-up"
    kind: str = "untrained-demo"
    sha256: str = "0" * 64


def synthetic_header() -> Dataset:
    """A PHI-free CR image header (no pixel data) with fixed, derived UIDs.

    Returns
    -------
    pydicom.Dataset
        SOP Common, patient/study Type 2 attributes empty, Modality "CR",
        and Image Pixel description: 256 x 256, 1 sample, 16 bits allocated,
        12 stored, unsigned, MONOCHROME2.
    """
    ds = Dataset()
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = derived_uid("warm-up", "instance")
    ds.StudyInstanceUID = derived_uid("warm-up", "study")
    ds.SeriesInstanceUID = derived_uid("warm-up", "series")
    ds.Modality = "CR"
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "StudyID",
        "AccessionNumber",
    ):
        setattr(ds, keyword, "")
    ds.Rows = ds.Columns = 256
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PatientOrientation = ["L", "F"]
    ds.ImagerPixelSpacing = [0.5, 0.5]
    return ds


def warm_up_sr(
    manifest: ManifestLike | None = None,
    backend: str = "warm-up",
    *,
    precision: str = DEFAULT_PRECISION,
    engine_key: str = "",
    device: str = "",
) -> Dataset:
    """Build one TID 1500 SR from :func:`synthetic_header`, to be thrown away.

    The worker calls it with what its loaded model says of itself
    (``models.backends.LoadedModel``: ``backend``, ``precision``, ``engine_key``,
    ``device``), so that the warm-up SR carries the same algorithm parameters as
    the model's reports (``workers.outputs.tid1500.serving_lines``).

    Parameters
    ----------
    manifest : ManifestLike, optional
        The worker's model, so that its label codes are checked at start
        (default: a one-label stand-in).
    backend : str
        Backend name written in the algorithm identification.
    precision : str
        "fp32" (default), "fp16", "bf16" or "int8".
    engine_key : str
        Engine key ("" for none: not written).
    device : str
        "cuda" or "cpu" ("" for unknown: not written).

    Returns
    -------
    pydicom.Dataset
        The SR (not stored, not delivered).

    Raises
    ------
    ReportError
        If the manifest's labels cannot be written (for example a code highdicom refuses).
    """
    from workers.outputs.tid1500 import build_tid1500  # highdicom: imported on first use

    model = manifest if manifest is not None else _Manifest()
    header = synthetic_header()
    key = {"series": header.SeriesInstanceUID, "image": header.SOPInstanceUID}.get(
        model.aggregation.scope
    )
    findings = [Finding(label, 0.5, (header,), key) for label in model.labels]
    if not any(label.report for label in model.labels):
        findings = [Finding(_Label(), 0.5, (header,), key)]
        model = _Manifest(labels=(_Label(),), aggregation=model.aggregation)
    inp = ReportInput(
        study_uid=header.StudyInstanceUID,
        generation=0,
        manifest=model,
        weights=_Weights(),
        backend=backend,
        findings=findings,
        evidence=[header],
        precision=precision,
        engine_key=engine_key,
        device=device,
    )
    (report,) = build_tid1500(inp)
    return report
