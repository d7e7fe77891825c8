"""What every backend provides, and the loaded model that wraps one.

A backend loader turns (manifest, weights) into a :class:`Runner` that maps
a batch in the manifest's layout to RAW outputs. :class:`LoadedModel` adds
what is the same for every backend: the input contract before, the output
shape check and the manifest's activation after (in numpy, in one place).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from dicom_node.core.errors import InferenceError
from models.architectures import Architecture
from models.contract import check_input
from models.manifest import Activation, Manifest
from models.weights import WeightsInfo

Precision = Literal["fp32", "fp16", "bf16", "int8"]


@dataclass(frozen=True)
class BackendOptions:
    """How a backend should run a model (from the worker's settings).

    Attributes
    ----------
    precision : {"auto", "fp32", "fp16", "bf16", "int8"}
        ``auto``: fp16 on CUDA, fp32 on the CPU. A backend that cannot run the
        requested precision raises :class:`~dicom_node.core.errors.BackendUnavailableError`.
    device : {"auto", "cuda", "cpu"}
        ``auto``: CUDA when the backend's library sees a GPU.
    threads : int
        CPU threads (ONNX Runtime intra-op, torch); 0: the cores this process may use.
    batch_sizes : tuple of int
        Batch sizes the batcher uses, ascending; a backend warms each one up
        (torch: one CUDA graph each; TensorRT: the optimization profile spans
        ``(1, batch_sizes[-1])``, optimal at the largest).
    compile : bool
        torch: ``torch.compile`` (CUDA graphs on a GPU).
    workspace_mb : int
        TensorRT builder workspace limit, MiB.
    calibration_dir : Path or None
        TensorRT INT8: a folder of DICOM images to calibrate with.
    """

    precision: Literal["auto", "fp32", "fp16", "bf16", "int8"] = "auto"
    device: Literal["auto", "cuda", "cpu"] = "auto"
    threads: int = 0
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    compile: bool = True
    workspace_mb: int = 4096
    calibration_dir: Path | None = None

    @property
    def max_batch(self) -> int:
        """The largest batch size."""
        return max(self.batch_sizes)


class Runner(Protocol):
    """A backend session over one model.

    Attributes
    ----------
    name : str
        Backend key ("tensorrt", "torch", "onnxruntime").
    device : str
        "cuda" or "cpu".
    precision : str
        "fp32", "fp16", "bf16" or "int8": what the backend computes in.
    engine_key : str
        What identifies the compiled artefact it runs: the TensorRT engine key,
        the ONNX file's name, or "" for eager torch.
    """

    name: str
    device: str
    precision: str
    engine_key: str

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Raw outputs ``(N, L) float32`` for a checked batch ``(N, *input.shape) float32``."""
        ...


BackendLoader = Callable[
    [Manifest, WeightsInfo, Path, Mapping[str, Architecture] | None, BackendOptions], Runner
]
"""``loader(manifest, weights, models_dir, architectures, options) -> Runner``.

Raises BackendUnavailableError when its library or device is absent (``auto``
then tries the next backend), InferenceError (or EngineError) when it cannot load."""


def apply_activation(
    raw: npt.NDArray[np.floating], activation: Activation
) -> npt.NDArray[np.float32]:
    """Turn raw outputs into scores as the manifest says.

    Parameters
    ----------
    raw : ndarray
        ``(N, L)`` logits.
    activation : {"sigmoid", "softmax", "none"}
        Sigmoid per column, softmax over columns, or identity.

    Returns
    -------
    ndarray
        ``(N, L) float32``; probabilities in [0, 1] for sigmoid and softmax.
    """
    x = np.asarray(raw, dtype=np.float64)
    if activation == "sigmoid":
        out = np.exp(-np.logaddexp(0.0, -x))
    elif activation == "softmax":
        e = np.exp(x - x.max(axis=1, keepdims=True))
        out = e / e.sum(axis=1, keepdims=True)
    else:
        out = x
    return out.astype(np.float32)


@dataclass
class LoadedModel:
    """A manifest, its weights and a ready backend.

    Attributes
    ----------
    manifest : Manifest
    weights : WeightsInfo
    runner : Runner
    """

    manifest: Manifest
    weights: WeightsInfo
    runner: Runner

    @property
    def backend(self) -> str:
        """The backend's key ("tensorrt", "torch", "onnxruntime")."""
        return self.runner.name

    @property
    def device(self) -> str:
        """Device the backend runs on: ``cuda`` or ``cpu``."""
        return self.runner.device

    @property
    def precision(self) -> str:
        """What the backend computes in: ``fp32``, ``fp16``, ``bf16`` or ``int8``."""
        return str(getattr(self.runner, "precision", "fp32"))

    @property
    def engine_key(self) -> str:
        """The compiled artefact's key ("" for eager torch)."""
        return str(getattr(self.runner, "engine_key", ""))

    @property
    def algorithm(self) -> str:
        """One line for SRs and logs: ``"tensorrt fp16 on cuda, engine <key>"``."""
        engine = f", engine {self.engine_key}" if self.engine_key else ""
        return f"{self.backend} {self.precision} on {self.device}{engine}"

    def raw(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Raw outputs ``(N, L) float32`` after the input contract check.

        Raises
        ------
        InputContractError
            See :func:`models.contract.check_input`.
        InferenceError
            If the backend fails or returns another shape or non-finite values.
        """
        check_input(self.manifest, batch)
        out = np.asarray(self.runner.run(batch), dtype=np.float32)
        expected = (batch.shape[0], len(self.manifest.labels))
        if out.shape != expected:
            raise InferenceError(
                f"model {self.manifest.id}: {self.backend} returned shape {out.shape}, "
                f"expected {expected}"
            )
        if not np.isfinite(out).all():
            raise InferenceError(f"model {self.manifest.id}: {self.backend} returned NaN or inf")
        return out

    def predict(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Scores ``(N, L) float32``: input check, backend, then the manifest's activation.

        Parameters
        ----------
        batch : ndarray
            ``(N, *input.shape) float32`` in the manifest's layout (see
            :func:`models.contract.to_batch`).

        Returns
        -------
        ndarray
            ``(N, L) float32``, column ``j`` is ``manifest.labels[j]``.

        Raises
        ------
        InputContractError, InferenceError
            See :meth:`raw`.
        """
        return apply_activation(self.raw(batch), self.manifest.output.activation)


def available_cores() -> int:
    """The CPU cores this process may run on (``os.sched_getaffinity``; else ``os.cpu_count``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_device(device: str) -> Literal["cuda", "cpu"]:
    """The device ``auto`` means on this host.

    Parameters
    ----------
    device : {"auto", "cuda", "cpu"}
        ``auto``: ``cuda`` when ``torch.cuda.is_available()`` (torch imported
        here, lazily; absent torch means ``cpu``).

    Returns
    -------
    {"cuda", "cpu"}
    """
    if device == "cuda":
        return "cuda"
    if device == "cpu":
        return "cpu"
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(precision: str, device: str) -> Precision:
    """The precision ``auto`` means on a device: ``fp16`` on CUDA, ``fp32`` on the CPU."""
    if precision == "auto":
        return "fp16" if device == "cuda" else "fp32"
    if precision not in ("fp32", "fp16", "bf16", "int8"):
        raise InferenceError(f"unknown precision {precision!r}")
    return precision  # type: ignore[return-value]


def padded_size(n: int, batch_sizes: tuple[int, ...]) -> int:
    """The smallest of ``batch_sizes`` that holds ``n`` rows (the largest when none does)."""
    fits = [size for size in sorted(batch_sizes) if size >= n]
    return fits[0] if fits else max(batch_sizes)


def run_padded(
    batch: npt.NDArray[np.float32],
    batch_sizes: tuple[int, ...],
    run_fixed: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]],
) -> npt.NDArray[np.float32]:
    """Run a batch through a runner that only takes fixed (warmed) batch sizes.

    The batch is cut into chunks of at most ``max(batch_sizes)`` rows; a chunk
    whose size is not one of ``batch_sizes`` is padded with zero rows up to the
    next one (:func:`padded_size`), and only its real rows are kept. Rows do
    not interact in inference (eval-mode normalisation), so padding does not
    change them.

    Parameters
    ----------
    batch : ndarray
        ``(N, ...) float32``.
    batch_sizes : tuple of int
        The sizes ``run_fixed`` accepts (CUDA graphs captured, TensorRT profile
        warmed).
    run_fixed : callable
        ``(B, ...) float32 -> (B, L) float32`` for ``B`` in ``batch_sizes``.

    Returns
    -------
    ndarray
        ``(N, L) float32``, row ``i`` from row ``i`` of ``batch``.
    """
    largest = max(batch_sizes)
    outputs: list[npt.NDArray[np.float32]] = []
    for start in range(0, batch.shape[0], largest):
        chunk = batch[start : start + largest]
        size = padded_size(chunk.shape[0], batch_sizes)
        if size != chunk.shape[0]:
            pad = np.zeros((size - chunk.shape[0], *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        rows = min(largest, batch.shape[0] - start)
        outputs.append(np.asarray(run_fixed(chunk), dtype=np.float32)[:rows])
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)
