"""Agreement of every available backend and precision with the reference outputs.

``dicom-node models verify`` runs this after re-hashing the weights. Reference
inputs are a seeded random batch, uniform in the manifest's
``input.value_range`` (``(8, *input.shape) float32``), plus any preprocessed
images given. Reference outputs are PyTorch FP32 eager on the CPU (ONNX
Runtime FP32 on the CPU for ONNX-only models). Each backend of the table is
loaded at each precision (fp32, fp16, bf16, int8); one that cannot load says
why ("unavailable: ..."). The largest absolute difference of the activated
scores is compared with the manifest's bound for that precision
(:class:`models.manifest.Tolerance`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, cast

import numpy as np
import numpy.typing as npt

import models.backends
from dicom_node.core.errors import BackendUnavailableError, InferenceError
from models.architectures import Architecture
from models.backends import load_model
from models.backends.base import BackendLoader, BackendOptions, LoadedModel, apply_activation
from models.contract import to_batch
from models.manifest import Manifest
from models.weights import WeightsInfo

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
PrecisionChoice = Literal["auto", "fp32", "fp16", "bf16", "int8"]
REFERENCE_SEED = 20240607
REFERENCE_BATCH = 8


@dataclass(frozen=True)
class VerifyRow:
    """One backend at one precision against the reference.

    Attributes
    ----------
    backend, precision, device : str
        What was asked (precision) and what ran (device: ``cuda``/``cpu``; "-" when
        it did not load).
    max_abs_diff : float or None
        Largest ``|score - reference|`` over the batch and labels; None when it did not run.
    tolerance : float
        The manifest's bound for ``precision``.
    reason : str
        Why it is unavailable (``unavailable``) or failed to run.
    unavailable : bool
        True when the backend could not load at this precision (not a failure).
    engine_key : str
        What ran (see :attr:`models.backends.LoadedModel.engine_key`).
    """

    backend: str
    precision: str
    device: str
    max_abs_diff: float | None
    tolerance: float
    reason: str = ""
    unavailable: bool = False
    engine_key: str = ""

    @property
    def ok(self) -> bool:
        """False only for a FAIL (an unavailable backend is not a failure)."""
        return self.unavailable or (
            self.max_abs_diff is not None and self.max_abs_diff <= self.tolerance
        )

    @property
    def status(self) -> str:
        """``OK``, ``FAIL`` (with the reason when it did not run) or ``unavailable: <reason>``."""
        if self.unavailable:
            return f"unavailable: {self.reason}"
        if self.ok:
            return "OK"
        return f"FAIL: {self.reason}" if self.reason else "FAIL"


def reference_inputs(
    manifest: Manifest,
    images: Sequence[npt.NDArray[np.float32]] | None = None,
    seed: int = REFERENCE_SEED,
) -> npt.NDArray[np.float32]:
    """The reference batch: ``(8 + len(images), *input.shape) float32``.

    Rows 0-7 are uniform in ``input.value_range`` (``numpy.random.default_rng(seed)``);
    the rest are ``images`` (``(C, H, W) float32``, preprocessed) in the manifest's layout.
    """
    low, high = manifest.input.value_range
    rng = np.random.default_rng(seed)
    batch = rng.uniform(low, high, (REFERENCE_BATCH, *manifest.input.shape)).astype(np.float32)
    if images:
        batch = np.concatenate([batch, to_batch(manifest, list(images))])
    return batch


def reference_model(
    manifest: Manifest,
    weights: WeightsInfo,
    models_dir: Path,
    architectures: Mapping[str, Architecture] | None = None,
    threads: int = 0,
) -> LoadedModel:
    """PyTorch FP32 eager on the CPU; ONNX Runtime FP32 on the CPU for ONNX weights."""
    from models.backends.onnxruntime import load_onnxruntime
    from models.backends.torch import load_torch

    options = BackendOptions(precision="fp32", device="cpu", threads=threads)
    loader: BackendLoader = load_onnxruntime if weights.format == "onnx" else load_torch
    runner = loader(manifest, weights, models_dir, architectures, options)
    return LoadedModel(manifest, weights, runner)


def verify_backends(
    manifest: Manifest,
    weights: WeightsInfo,
    models_dir: Path,
    *,
    backends: Mapping[str, BackendLoader] | None = None,
    options: BackendOptions | None = None,
    images: Sequence[npt.NDArray[np.float32]] | None = None,
    architectures: Mapping[str, Architecture] | None = None,
    precisions: Sequence[str] = PRECISIONS,
) -> list[VerifyRow]:
    """Run the reference inputs through every backend x precision and compare.

    Parameters
    ----------
    manifest, weights, models_dir
        The model, its installed weights and the engine cache root.
    backends : mapping of str to BackendLoader, optional
        Default :func:`models.backends.builtin_backends`.
    options : BackendOptions, optional
        Device, threads, batch sizes, compile... (``precision`` is set per row).
    images : sequence of ndarray, optional
        Preprocessed images ``(C, H, W) float32`` added to the reference batch.
    architectures : mapping, optional
        Architecture table.
    precisions : sequence of str
        Default fp32, fp16, bf16, int8.

    Returns
    -------
    list of VerifyRow
        One per backend and precision, in table order.

    Raises
    ------
    InferenceError
        If the reference itself cannot run.
    """
    table = models.backends.builtin_backends() if backends is None else backends
    base = options or BackendOptions()
    inputs = reference_inputs(manifest, images)
    reference = reference_model(manifest, weights, models_dir, architectures, base.threads)
    expected = reference.predict(inputs)
    rows: list[VerifyRow] = []
    for key in table:
        for precision in precisions:
            tolerance = manifest.serving.tolerance.for_precision(precision)
            opts = replace(base, precision=cast(PrecisionChoice, precision))
            try:
                model = load_model(
                    manifest, weights, models_dir, key,
                    backends=table, architectures=architectures, options=opts,
                )
            except BackendUnavailableError as exc:
                rows.append(VerifyRow(key, precision, "-", None, tolerance, str(exc), True))
                continue
            except InferenceError as exc:
                rows.append(VerifyRow(key, precision, "-", None, tolerance, str(exc)))
                continue
            diff: float | None = None
            try:
                scores = apply_activation(model.raw(inputs), manifest.output.activation)
                diff = float(np.max(np.abs(scores - expected)))
                reason = "" if diff <= tolerance else f"max abs diff {diff:.3g} > {tolerance:g}"
            except InferenceError as exc:
                reason = str(exc)
            rows.append(
                VerifyRow(key, model.precision, model.device, diff, tolerance, reason,
                          engine_key=model.engine_key)
            )
            log.info("model %s verify: %s %s on %s: %s", manifest.id, key, precision,
                     model.device, rows[-1].status)
    return rows


def render_rows(rows: Sequence[VerifyRow]) -> str:
    """A text table: backend, precision, device, max abs diff, tolerance, status."""
    header = ("backend", "precision", "device", "max abs diff", "tolerance", "result")
    lines = [header]
    for row in rows:
        diff = "-" if row.max_abs_diff is None else f"{row.max_abs_diff:.2e}"
        lines.append((row.backend, row.precision, row.device, diff, f"{row.tolerance:g}",
                      row.status))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True))
        + "  " + line[-1]
        for line in lines
    )
