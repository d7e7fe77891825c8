"""Run one analysis: read, admit, order, preprocess, infer in batches, aggregate.

The model and its manifest decide everything here: the preprocessing steps,
the input layout, the activation and the aggregation. Nothing names a model.

One bad image never fails a study. Each image that cannot be used is skipped
with a specific reason (:class:`~dicom_node.core.ledger.SkippedImage`): a file
that is not a readable instance, a header the report cannot reference
(:mod:`workers.pipeline.admit`), pixel data that cannot be decoded or a blank
frame (:mod:`models.preprocessing`), or a preprocessed image that does not fit
the model's input contract (:func:`models.contract.check_image`). The model
runs on the rest; when nothing is left, the outcome has no images and the
caller decides (the ``analyze`` task ends the analysis ``failed``). Reasons
name keywords, never values, and pydicom's and highdicom's warnings are
captured (:func:`dicom_node.core.redact.captured_library_warnings`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom import dcmread

from dicom_node.core.errors import DicomNodeError
from dicom_node.core.ledger import SkippedImage
from dicom_node.core.redact import captured_library_warnings, reason_for
from models.backends import LoadedModel
from models.contract import check_image, to_batch
from models.preprocessing import Preprocessor
from models.routing import read_headers
from workers.pipeline.admit import admit, skipped_file
from workers.pipeline.aggregate import Aggregate, aggregate
from workers.pipeline.order import Image, group_by_series

log = logging.getLogger(__name__)

BATCH_SIZE = 16
"""Images per backend call: bounds host and device memory for long CT series."""


@dataclass
class Outcome:
    """What an analysis produced.

    Attributes
    ----------
    aggregates : list of Aggregate
        One per finding unit (image, series or study, as the manifest says);
        empty when no image could be used.
    images : list of Image
        The images the model ran on, in inference order.
    skipped : list of SkippedImage
        One per image that could not be used: SOP Instance UID (the file stem
        when the header is unreadable) and a reason naming keywords, never values.
    timings : dict of str to float
        Seconds per stage: ``read``, ``preprocess``, ``infer``, ``aggregate``.
    """

    aggregates: list[Aggregate] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)
    skipped: list[SkippedImage] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def read_images(paths: Sequence[str]) -> tuple[list[Image], list[SkippedImage]]:
    """Read the headers of an analysis's files (:func:`models.routing.read_headers`).

    Returns
    -------
    (list of Image, list of SkippedImage)
        Readable images, and one skipped entry per file that is not a usable instance.
    """
    instances, unreadable = read_headers(paths)
    images = [Image(Path(path), header) for path, header in instances]
    return images, [skipped_file(line) for line in unreadable]


def prepare(preprocess: Preprocessor, model: LoadedModel, image: Image) -> npt.NDArray[np.float32]:
    """Read one image's pixels and turn them into a checked model input.

    Raises
    ------
    DicomNodeError
        PixelDataError (decode, blank, a step) or InputContractError (shape, values).
    Exception
        Anything else a malformed file makes a library raise; the caller
        turns it into a skip reason with :func:`dicom_node.core.redact.reason_for`.
    """
    array = preprocess(dcmread(image.path))
    check_image(model.manifest, array)
    return array


def _infer(model: LoadedModel, inputs: list[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
    outputs = [
        model.predict(to_batch(model.manifest, inputs[start : start + BATCH_SIZE]))
        for start in range(0, len(inputs), BATCH_SIZE)
    ]
    return np.concatenate(outputs, axis=0)


def run_analysis(model: LoadedModel, paths: Sequence[str], study_uid: str | None = None) -> Outcome:
    """Run ``model`` on the images at ``paths`` that can be used, and aggregate its outputs.

    Parameters
    ----------
    model : LoadedModel
        The model, its manifest and weights.
    paths : sequence of str
        Spool files the router chose for this model.
    study_uid : str, optional
        The analysed study: an image of another study is skipped.

    Returns
    -------
    Outcome
        Aggregates, the images used, the images skipped (each with its reason)
        and stage timings. No image usable: no aggregates, nothing inferred.

    Raises
    ------
    ModelError
        When the backend fails on a batch of usable images (not an image problem).
    """
    with captured_library_warnings():
        return _run(model, paths, study_uid)


def _run(model: LoadedModel, paths: Sequence[str], study_uid: str | None) -> Outcome:
    manifest = model.manifest
    outcome = Outcome()
    started = time.perf_counter()
    images, outcome.skipped = read_images(paths)
    admitted, refused = admit(images, study_uid)
    outcome.skipped += refused
    series = group_by_series(admitted, sort=manifest.aggregation.slice_order == "patient_axis")
    ordered = [image for group in series.values() for image in group]
    outcome.timings["read"] = time.perf_counter() - started

    started = time.perf_counter()
    preprocess = Preprocessor.from_manifest(manifest)
    inputs: list[npt.NDArray[np.float32]] = []
    for image in ordered:
        try:
            inputs.append(prepare(preprocess, model, image))
            outcome.images.append(image)
        except Exception as exc:  # a malformed image must not sink the others
            why = reason_for(exc) if isinstance(exc, DicomNodeError) else _unexpected(exc)
            outcome.skipped.append(SkippedImage(image.sop_instance_uid, why))
    outcome.timings["preprocess"] = time.perf_counter() - started
    for item in outcome.skipped:
        log.warning(
            "model %s: image %s skipped: %s", manifest.id, item.sop_instance_uid, item.reason
        )
    if not inputs:
        return outcome

    started = time.perf_counter()
    probabilities = _infer(model, inputs)
    outcome.timings["infer"] = time.perf_counter() - started

    started = time.perf_counter()
    used = {id(i) for i in outcome.images}
    kept = {uid: [i for i in group if id(i) in used] for uid, group in series.items()}
    outcome.aggregates = aggregate(
        manifest.aggregation.scope,
        manifest.aggregation.reduce,
        outcome.images,
        probabilities,
        {uid: group for uid, group in kept.items() if group},
    )
    outcome.timings["aggregate"] = time.perf_counter() - started
    return outcome


def _unexpected(exc: Exception) -> str:
    return f"cannot be read: {reason_for(exc)}"
