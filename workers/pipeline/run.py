"""Run one analysis: read, order, preprocess, infer in batches, aggregate.

The model and its manifest decide everything here: the preprocessing steps,
the input layout, the activation and the aggregation. Nothing names a model.
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

from dicom_node.core.errors import PixelDataError
from models.backends import LoadedModel
from models.contract import to_batch
from models.preprocessing import Preprocessor
from models.routing import read_headers
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
        One per finding unit (image, series or study, as the manifest says).
    images : list of Image
        The images the model ran on, in inference order.
    skipped : list of str
        One line per image that could not be used: SOP Instance UID and why.
    timings : dict of str to float
        Seconds per stage: ``read``, ``preprocess``, ``infer``, ``aggregate``.
    """

    aggregates: list[Aggregate] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def read_images(paths: Sequence[str]) -> tuple[list[Image], list[str]]:
    """Read the headers of an analysis's files (:func:`models.routing.read_headers`).

    Returns
    -------
    (list of Image, list of str)
        Readable images, and one reason per file that is not a usable instance.
    """
    instances, skipped = read_headers(paths)
    return [Image(Path(path), header) for path, header in instances], skipped


def _infer(model: LoadedModel, inputs: list[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
    outputs = [
        model.predict(to_batch(model.manifest, inputs[start : start + BATCH_SIZE]))
        for start in range(0, len(inputs), BATCH_SIZE)
    ]
    return np.concatenate(outputs, axis=0)


def run_analysis(model: LoadedModel, paths: Sequence[str]) -> Outcome:
    """Run ``model`` on the images at ``paths`` and aggregate its outputs.

    Parameters
    ----------
    model : LoadedModel
        The model, its manifest and weights.
    paths : sequence of str
        Spool files the router chose for this model.

    Returns
    -------
    Outcome
        Aggregates, the images used, the images skipped and stage timings.

    Raises
    ------
    PixelDataError
        If no image could be read and preprocessed.
    ModelError
        From the input contract check or the backend.
    """
    manifest = model.manifest
    outcome = Outcome()
    started = time.perf_counter()
    images, outcome.skipped = read_images(paths)
    series = group_by_series(images, sort=manifest.aggregation.slice_order == "patient_axis")
    ordered = [image for group in series.values() for image in group]
    outcome.timings["read"] = time.perf_counter() - started

    started = time.perf_counter()
    preprocess = Preprocessor.from_manifest(manifest)
    inputs: list[npt.NDArray[np.float32]] = []
    for image in ordered:
        try:
            inputs.append(preprocess(dcmread(image.path)))
            outcome.images.append(image)
        except PixelDataError as exc:
            outcome.skipped.append(f"{image.sop_instance_uid}: {exc}")
        except Exception as exc:  # a malformed image must not sink the others
            outcome.skipped.append(f"{image.sop_instance_uid}: {exc.__class__.__name__}")
    outcome.timings["preprocess"] = time.perf_counter() - started
    for line in outcome.skipped:
        log.warning("model %s: image skipped: %s", manifest.id, line)
    if not inputs:
        raise PixelDataError(f"none of {len(paths)} images could be used")

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
