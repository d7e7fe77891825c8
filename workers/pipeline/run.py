"""Run one analysis: read, admit, order, preprocess (in parallel), infer in batches, aggregate.

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
captured (:func:`dicom_node.core.redact.captured_library_warnings`, shared by
the threads of a worker: :mod:`workers.pipeline.shared_capture`).

In a worker, images are decoded and preprocessed in parallel in the worker's
preprocessing threads, and each one goes to the model's
:class:`~workers.batching.DynamicBatcher` as soon as it is ready, so the
backend never waits for a whole study; the results come back per image and
are aggregated in the images' order, as if the study had run alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, Future, as_completed
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom import dcmread

from dicom_node.core.contract import Priority
from dicom_node.core.errors import DicomNodeError
from dicom_node.core.ledger import SkippedImage
from dicom_node.core.redact import reason_for
from models.backends import LoadedModel
from models.contract import check_image, to_batch
from models.preprocessing import Preprocessor
from models.routing import read_headers
from workers.batching import DynamicBatcher
from workers.pipeline.admit import admit, skipped_file
from workers.pipeline.aggregate import Aggregate, aggregate
from workers.pipeline.order import Image, group_by_series
from workers.pipeline.shared_capture import shared_library_warnings

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
        Seconds per stage: ``read``, ``preprocess``, then ``infer`` (this thread
        ran the backend) or ``wait`` (with a batcher: from the last image
        preprocessed to the last score back; inference overlaps
        ``preprocess``), then ``aggregate``.
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


def run_analysis(
    model: LoadedModel,
    paths: Sequence[str],
    study_uid: str | None = None,
    *,
    batcher: DynamicBatcher | None = None,
    pool: Executor | None = None,
    priority: Priority = "routine",
) -> Outcome:
    """Run ``model`` on the images at ``paths`` that can be used, and aggregate its outputs.

    Parameters
    ----------
    model : LoadedModel
        The model, its manifest and weights.
    paths : sequence of str
        Spool files the router chose for this model.
    study_uid : str, optional
        The analysed study: an image of another study is skipped.
    batcher : DynamicBatcher, optional
        The worker's batcher of this model (shared with the analyses running
        at the same time): each image goes to it as soon as it is
        preprocessed, so inference overlaps decoding. None: this thread runs
        the backend itself, :data:`BATCH_SIZE` images per call, once every
        image is preprocessed (tests, the command line).
    pool : concurrent.futures.Executor, optional
        Where images are decoded and preprocessed, in parallel (the worker's
        preprocessing threads). None: one after the other in this thread.
    priority : {"routine", "stat"}
        The batcher serves a STAT analysis's images before routine ones.

    Returns
    -------
    Outcome
        Aggregates, the images used (in inference order, whatever order
        they were preprocessed in), the images skipped (each with its reason)
        and stage timings. No image usable: no aggregates, nothing inferred.

    Raises
    ------
    ModelError
        When the backend fails on a batch holding usable images of this
        analysis (not an image problem); with a batcher, the batch may hold
        other analyses' images, which fail with it.
    """
    with shared_library_warnings():
        return _run(model, paths, study_uid, batcher, pool, priority)


@dataclass
class _Prepared:
    """What preprocessing made of the ordered images: inputs or skip reasons, by position."""

    inputs: dict[int, npt.NDArray[np.float32]] = field(default_factory=dict)
    scores: dict[int, Future[npt.NDArray[np.float32]]] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)


def _prepare_all(
    model: LoadedModel,
    ordered: list[Image],
    batcher: DynamicBatcher | None,
    pool: Executor | None,
    priority: Priority,
) -> _Prepared:
    """Preprocess every image (in ``pool`` when given), each handed to ``batcher`` when ready."""
    preprocess = Preprocessor.from_manifest(model.manifest)
    done = _Prepared()

    def take(index: int, make: Callable[[], npt.NDArray[np.float32]]) -> None:
        try:
            array = make()
        except Exception as exc:  # a malformed image must not sink the others
            why = reason_for(exc) if isinstance(exc, DicomNodeError) else _unexpected(exc)
            done.reasons[index] = why
            return
        if batcher is None:
            done.inputs[index] = array
        else:
            done.scores[index] = batcher.submit(array, priority)

    if pool is None:
        for index, image in enumerate(ordered):
            take(index, partial(prepare, preprocess, model, image))
        return done
    futures = {pool.submit(prepare, preprocess, model, image): i for i, image in enumerate(ordered)}
    try:
        for future in as_completed(futures):
            take(futures[future], future.result)
    except BaseException:
        _cancel([*futures, *done.scores.values()])
        raise
    return done


def _cancel(futures: Iterable[Future[Any]]) -> None:
    for future in futures:
        future.cancel()


def _collect(prepared: _Prepared, count: int) -> npt.NDArray[np.float32]:
    """Scores of the prepared images from the batcher, in image order.

    Raises
    ------
    Exception
        The first failed batch's exception; this analysis's other images are
        cancelled where they are still queued.
    """
    rows: list[npt.NDArray[np.float32]] = []
    try:
        for index in sorted(prepared.scores):
            rows.append(prepared.scores[index].result())
    except BaseException:
        _cancel(prepared.scores.values())
        raise
    return np.stack(rows).astype(np.float32, copy=False).reshape(len(rows), count)


def _run(
    model: LoadedModel,
    paths: Sequence[str],
    study_uid: str | None,
    batcher: DynamicBatcher | None,
    pool: Executor | None,
    priority: Priority,
) -> Outcome:
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
    prepared = _prepare_all(model, ordered, batcher, pool, priority)
    outcome.timings["preprocess"] = time.perf_counter() - started
    for index, image in enumerate(ordered):
        if index in prepared.reasons:
            outcome.skipped.append(SkippedImage(image.sop_instance_uid, prepared.reasons[index]))
        else:
            outcome.images.append(image)
    for item in outcome.skipped:
        log.warning(
            "model %s: image %s skipped: %s", manifest.id, item.sop_instance_uid, item.reason
        )
    if not outcome.images:
        return outcome

    started = time.perf_counter()
    if batcher is None:
        probabilities = _infer(model, [prepared.inputs[i] for i in sorted(prepared.inputs)])
        outcome.timings["infer"] = time.perf_counter() - started
    else:
        probabilities = _collect(prepared, len(manifest.labels))
        outcome.timings["wait"] = time.perf_counter() - started

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
