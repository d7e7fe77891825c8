"""INT8 calibration for TensorRT: batches of real images from a folder of DICOM files.

TensorRT's post-training INT8 needs the dynamic range of every tensor; an
entropy calibrator (``IInt8EntropyCalibrator2``, TensorRT developer guide,
"INT8 calibration using Python") feeds it representative batches and caches
the resulting scales. The images are read and preprocessed exactly as the
worker does (:class:`models.preprocessing.Preprocessor`), so the scales fit
what the engine will see. Unreadable files and images that break the input
contract are skipped and counted, never quoted (they may carry PHI).

Note: TensorRT 10 deprecates implicit (calibrated) INT8 in favour of explicit
quantization (Q/DQ nodes); the calibrator API still works there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dicom_node.core.durable import write_durably
from dicom_node.core.errors import DicomNodeError, EngineError
from models.contract import check_image, to_batch
from models.manifest import Manifest

log = logging.getLogger(__name__)

MAX_CALIBRATION_IMAGES = 512
"""At most this many images are read (TensorRT suggests about 500 for ImageNet-scale nets)."""


def calibration_images(
    manifest: Manifest, directory: Path, limit: int = MAX_CALIBRATION_IMAGES
) -> list[npt.NDArray[np.float32]]:
    """Preprocess the DICOM files under ``directory`` (recursively, sorted) for a model.

    Parameters
    ----------
    manifest : Manifest
        Its ``preprocessing`` and ``input`` apply.
    directory : Path
        A folder of DICOM instances (any file names).
    limit : int
        Stop after this many usable images.

    Returns
    -------
    list of ndarray
        ``(C, H, W) float32`` each, within the manifest's input contract.

    Raises
    ------
    EngineError
        If the folder is missing or holds no usable image.
    """
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    from models.preprocessing import Preprocessor

    if not directory.is_dir():
        raise EngineError(f"INT8 calibration folder {directory} does not exist")
    pre = Preprocessor.from_manifest(manifest)
    images: list[npt.NDArray[np.float32]] = []
    skipped = 0
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        if len(images) >= limit:
            break
        try:
            image = pre.pre(dcmread(path))
            check_image(manifest, image)
        except (DicomNodeError, InvalidDicomError, OSError, ValueError):
            skipped += 1
            continue
        images.append(image)
    if not images:
        raise EngineError(
            f"INT8 calibration folder {directory}: no usable image for model {manifest.id} "
            f"({skipped} file(s) skipped)"
        )
    log.info(
        "model %s: INT8 calibration with %d image(s), %d file(s) skipped",
        manifest.id,
        len(images),
        skipped,
    )
    return images


def calibration_batches(
    manifest: Manifest, images: list[npt.NDArray[np.float32]], batch_size: int
) -> Iterator[npt.NDArray[np.float32]]:
    """Full batches ``(batch_size, *input.shape) float32`` in the manifest's layout.

    The last, partial batch is dropped (a calibrator's batch size is fixed);
    with fewer images than ``batch_size``, one batch of all of them repeated.
    """
    if len(images) < batch_size:
        reps = -(-batch_size // len(images))
        images = (images * reps)[:batch_size]
    for start in range(0, len(images) - batch_size + 1, batch_size):
        yield to_batch(manifest, images[start : start + batch_size])


def make_entropy_calibrator(
    trt: Any,
    manifest: Manifest,
    directory: Path,
    cache_path: Path,
    batch_size: int = 8,
) -> Any:
    """An ``IInt8EntropyCalibrator2`` over a folder of DICOM images.

    Parameters
    ----------
    trt : module
        The imported ``tensorrt`` module.
    manifest : Manifest
        The model being built.
    directory : Path
        Calibration images (see :func:`calibration_images`).
    cache_path : Path
        Calibration cache: read when present (no images are read then), written
        durably after calibration.
    batch_size : int
        Rows per calibration batch; must fit the optimization profile.

    Returns
    -------
    tensorrt.IInt8EntropyCalibrator2
        Its ``get_batch`` copies each batch to a CUDA tensor and returns its
        device pointer (TensorRT Python API, ``IInt8Calibrator.get_batch``).
    """
    import torch

    class DicomEntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches: Iterator[npt.NDArray[np.float32]] | None = None
            self._device_batch: Any = None

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self._batches is None:
                images = calibration_images(manifest, directory)
                self._batches = calibration_batches(manifest, images, batch_size)
            batch = next(self._batches, None)
            if batch is None:
                return None
            self._device_batch = torch.from_numpy(batch).to("cuda")
            return [int(self._device_batch.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            write_durably(cache_path, bytes(cache))

    return DicomEntropyCalibrator()
