"""FAKE slow backend: a runner that takes a fixed time per batch and records what each held.

It stands in for a GPU, which this machine does not have: a GPU runs a batch
in about the same time whatever its size (up to the largest), so a fixed
sleep per call is the property the batching tests need. Its raw outputs are
a deterministic function of each image alone (a batch's rows do not depend
on the batch), so a batched run can be compared with a one-by-one run.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from models.backends.base import LoadedModel
from models.manifest import Manifest
from models.weights.info import WeightsInfo


def fingerprint(image: npt.NDArray[np.float32]) -> str:
    """A short stable id of one preprocessed image ``(C, H, W)``."""
    return hashlib.sha1(np.ascontiguousarray(image, np.float32).tobytes()).hexdigest()[:16]


class FakeSlowRunner:
    """FAKE backend runner: sleeps ``seconds`` per call and records each batch's images.

    Parameters
    ----------
    labels : int
        Outputs per image.
    seconds : float
        Sleep per call, whatever the batch size.
    fail_when : callable, optional
        ``fail_when(fingerprints) -> bool``: raise on that batch.
    gate : threading.Event, optional
        Each call waits for it first (a backend that hangs until released).
    """

    name = "FAKE-slow"
    device = "cpu"
    precision = "fp32"
    engine_key = ""

    def __init__(
        self,
        labels: int,
        seconds: float = 0.0,
        fail_when: Callable[[list[str]], bool] | None = None,
        gate: threading.Event | None = None,
    ) -> None:
        self.labels = labels
        self.seconds = seconds
        self.fail_when = fail_when
        self.gate = gate
        self.batches: list[list[str]] = []
        self.calls = 0
        self.entered = threading.Event()  # set once a call has started
        self._lock = threading.Lock()

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait()
        prints = [fingerprint(image) for image in batch]
        with self._lock:
            self.calls += 1
            self.batches.append(prints)
        if self.seconds:
            time.sleep(self.seconds)
        if self.fail_when is not None and self.fail_when(prints):
            from dicom_node.core.errors import InferenceError

            raise InferenceError("FAKE backend failure")
        flat = batch.reshape(batch.shape[0], -1).astype(np.float64)
        features = np.stack([flat.mean(1), flat.std(1), flat[:, : flat.shape[1] // 7].mean(1)], 1)
        weights = np.linspace(-2.0, 2.0, 3 * self.labels).reshape(3, self.labels)
        return (features @ weights).astype(np.float32)


def fake_model(manifest: Manifest, runner: FakeSlowRunner) -> LoadedModel:
    """``manifest`` served by ``runner`` (weights labelled FAKE)."""
    weights = WeightsInfo(manifest.id, "untrained-demo", "FAKE", "ab" * 32, None, "FAKE", 0.0)
    return LoadedModel(manifest, weights, runner)
