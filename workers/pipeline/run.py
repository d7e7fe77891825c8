"""One study through the model: select, decode, preprocess, infer, build the SR.

Pure functions of files and a loaded model, with no Celery in them, so tests
and benchmarks call them directly. The Celery tasks in :mod:`workers.tasks.analyze.analyze`
wrap them with ledger transitions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from dicom_node.core.errors import PixelDataError
from models.manifest import Manifest
from models.preprocessing.xrv import preprocess_xrv
from models.backends.runtime import LoadedModel
from models.weights.store.store import WeightsInfo
from models.preprocessing.pixels import display_image
from workers.outputs.tid1500 import Finding, build_report

log = logging.getLogger(__name__)


@dataclass
class Analysis:
    """Outcome of analysing a study.

    Attributes
    ----------
    report : Dataset or None
        The SR, or None when no instance applied.
    findings : list of Finding
        One per label (empty when no instance applied).
    reason : str
        Why there is no report (empty otherwise).
    used : list of str
        SOP Instance UIDs the model ran on.
    timings : dict of str to float
        Seconds per stage: ``select``, ``decode``, ``infer``, ``report``.
    weights : WeightsInfo or None
        The weights that produced the findings (None when the model did not run).
    """

    report: Dataset | None
    findings: list[Finding] = field(default_factory=list)
    reason: str = ""
    used: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    weights: WeightsInfo | None = None


def select_applicable(
    paths: Sequence[str], manifest: Manifest
) -> tuple[list[tuple[Path, Dataset]], list[str]]:
    """Read headers and keep the instances the model applies to.

    Returns
    -------
    (list of (Path, Dataset), list of str)
        Applicable instances with their headers, and one reason per skipped instance.
    """
    chosen: list[tuple[Path, Dataset]] = []
    skipped: list[str] = []
    for name in paths:
        path = Path(name)
        try:
            header = dcmread(path, stop_before_pixels=True)
        except Exception as exc:
            skipped.append(f"{path.name}: unreadable ({exc.__class__.__name__})")
            continue
        applies, why = manifest.applies_to(header)
        if applies:
            chosen.append((path, header))
        else:
            skipped.append(f"{header.get('SOPInstanceUID', path.stem)}: {why}")
    return chosen, skipped


def analyze(
    study_uid: str,
    generation: int,
    paths: Sequence[str],
    manifest: Manifest,
    get_model: Callable[[], LoadedModel],
) -> Analysis:
    """Run the model on a study's applicable instances and build its SR.

    Parameters
    ----------
    study_uid : str
        Study Instance UID.
    generation : int
        Ledger generation (part of the report UIDs).
    paths : sequence of str
        Spool files of the study.
    manifest : Manifest
        The model's manifest (applicability, labels, input spec).
    get_model : callable
        Returns the loaded model; called only if some instance applies.

    Returns
    -------
    Analysis
        Report and findings, or the reason there is none.

    Raises
    ------
    PixelDataError
        If no applicable instance could be decoded.
    ModelError, ReportError
        From the model or the SR builder.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    chosen, skipped = select_applicable(paths, manifest)
    timings["select"] = time.perf_counter() - started
    for reason in skipped:
        log.info("study %s: not applicable to %s: %s", study_uid, manifest.id, reason)
    if not chosen:
        return Analysis(None, reason="no applicable model", timings=timings)

    started = time.perf_counter()
    inputs, headers = [], []
    height = manifest.input.shape[1]
    for path, header in chosen:
        try:
            image = display_image(dcmread(path))
        except PixelDataError as exc:
            log.warning(
                "study %s: SOP Instance %s skipped: %s", study_uid, header.SOPInstanceUID, exc
            )
            continue
        inputs.append(preprocess_xrv(image, height))
        headers.append(header)
    timings["decode"] = time.perf_counter() - started
    if not inputs:
        raise PixelDataError(f"study {study_uid}: no applicable image could be decoded")

    model = get_model()
    started = time.perf_counter()
    probabilities = model.classifier.predict(np.concatenate(inputs, axis=0))
    timings["infer"] = time.perf_counter() - started

    started = time.perf_counter()
    best = probabilities.argmax(axis=0)  # per label, the image with the highest probability
    findings = [
        Finding(label, float(probabilities[best[i], i]), headers[int(best[i])])
        for i, label in enumerate(manifest.labels)
    ]
    report = build_report(findings, headers, manifest, model.weights, study_uid, generation)
    timings["report"] = time.perf_counter() - started
    return Analysis(
        report,
        findings,
        used=[str(h.SOPInstanceUID) for h in headers],
        timings=timings,
        weights=model.weights,
    )


def synthetic_header() -> Dataset:
    """A minimal, PHI-free CR image header used only to warm up the SR builder."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.PatientName = "WARMUP"
    ds.PatientID = "WARMUP"
    for keyword in (
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "StudyID",
        "AccessionNumber",
    ):
        setattr(ds, keyword, "")
    return ds


def warm_up(model: LoadedModel) -> None:
    """Run one inference and build one SR on synthetic input, so the first study is fast.

    The first SR highdicom builds in a process loads its copy of the standard
    (about a second); the first inference allocates the backend's buffers.
    """
    _, height, width = model.manifest.input.shape
    probabilities = model.classifier.predict(np.zeros((1, 1, height, width), np.float32))
    header = synthetic_header()
    findings = [
        Finding(label, float(probabilities[0, i]), header)
        for i, label in enumerate(model.manifest.labels)
    ]
    build_report(findings, [header], model.manifest, model.weights, header.StudyInstanceUID, 0)
