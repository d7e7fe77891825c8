"""The worker context: what one worker process holds, created when the process starts.

Settings, the ledger, the model registry, the models this worker serves
(each loaded once, with :func:`backend_options` from the settings), one
:class:`~workers.batching.DynamicBatcher` per model (the only caller of its
backend) and the thread pool that decodes and preprocesses images. The
analyses that Celery's threads pool runs at once share all of it. Created
and warmed up by :func:`workers.app.run_worker` before the worker consumes
anything, or on first use in a process that did not (tests calling the
tasks directly).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from dicom_node.core.errors import DicomNodeError, InferenceError
from dicom_node.core.ledger import Ledger
from dicom_node.core.settings import Settings, load_settings
from models.backends import BackendOptions, LoadedModel, load_model, warm_up
from models.backends.base import available_cores
from models.manifest import Manifest, RoutingRule
from models.priority import parse_stat_rules
from models.registry import ModelRegistry
from models.weights import UNTRAINED_NOTICE, resolve_weights
from workers.batching import DynamicBatcher
from workers.destinations.select import Route, parse_routes

log = logging.getLogger(__name__)

WARMED_SIZES = (1, 8, 32, 64)
"""Batch sizes warmed up (and captured, for CUDA graphs) below a model's largest batch."""


def max_batch(settings: Settings, manifest: Manifest) -> int:
    """Images per backend call: ``DICOM_NODE_BATCH_MAX_SIZE``, else ``serving.max_batch``."""
    return settings.batch_max_size or manifest.serving.max_batch


def max_delay(settings: Settings, manifest: Manifest) -> float:
    """Seconds a batch waits for more images after its oldest one.

    ``DICOM_NODE_BATCH_MAX_DELAY_MS`` unless negative, else ``serving.max_delay_ms``.
    """
    ms = settings.batch_max_delay_ms
    return (ms if ms >= 0 else manifest.serving.max_delay_ms) / 1000.0


def backend_options(settings: Settings, manifest: Manifest) -> BackendOptions:
    """How to load ``manifest``'s backend on this worker.

    Parameters
    ----------
    settings : Settings
        ``inference_precision``, ``inference_device``, ``inference_threads``,
        ``torch_compile``, ``engine_workspace_mb``, ``int8_calibration_dir``
        and the batch size (:func:`max_batch`).
    manifest : Manifest
        Its ``serving.max_batch``.

    Returns
    -------
    BackendOptions
        ``batch_sizes``: those of :data:`WARMED_SIZES` up to the largest batch,
        plus the largest batch itself, ascending (e.g. ``(1, 8, 20)`` for 20).
    """
    largest = max_batch(settings, manifest)
    sizes = tuple(sorted({s for s in WARMED_SIZES if s < largest} | {largest}))
    return BackendOptions(
        precision=settings.inference_precision,
        device=settings.inference_device,
        threads=settings.inference_threads,
        batch_sizes=sizes,
        compile=settings.torch_compile,
        workspace_mb=settings.engine_workspace_mb,
        calibration_dir=settings.int8_calibration_dir,
    )


class WorkerContext:
    """Settings, ledger, registry and loaded models of one worker process.

    Parameters
    ----------
    settings : Settings
        Worker settings.
    model_ids : sequence of str, optional
        Models this process serves (warmed at start). Default: every enabled model.

    Raises
    ------
    ConfigError
        If ``settings.stat_rules`` holds an invalid rule (:func:`models.priority.parse_stat_rules`).
    """

    def __init__(self, settings: Settings, model_ids: Sequence[str] | None = None) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(settings.resolved_ledger_url)
        self.registry = ModelRegistry.load(settings.resolved_models_dir / "manifests")
        self.model_ids = list(model_ids or settings.enabled_models or self.registry.ids())
        self.stat_rules: list[RoutingRule] = parse_stat_rules(settings.stat_rules)
        self.routes: list[Route] = parse_routes(settings.report_destinations)
        self._models: dict[str, LoadedModel] = {}
        self._batchers: dict[str, DynamicBatcher] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.RLock()
        self._closed = False

    def model(self, model_id: str) -> LoadedModel:
        """Load (once) and return a model.

        Raises
        ------
        ManifestError
            If no manifest has that id.
        WeightsUnavailableError, WeightsIntegrityError, InferenceError
            From resolving the weights or loading the backend.
        """
        with self._lock:
            if model_id not in self._models:
                manifest = self.registry.get(model_id)
                weights = resolve_weights(
                    manifest, self.settings.resolved_models_dir, self.settings.allow_demo_weights
                )
                if not weights.is_real:
                    log.warning("model %s: serving %s", model_id, UNTRAINED_NOTICE)
                self._models[model_id] = load_model(
                    manifest,
                    weights,
                    self.settings.resolved_models_dir,
                    self.settings.inference_backend,
                    options=backend_options(self.settings, manifest),
                )
            return self._models[model_id]

    def batcher(self, model_id: str) -> DynamicBatcher:
        """The model's batcher, created (with the model) and started on first use.

        Raises
        ------
        ManifestError, WeightsUnavailableError, WeightsIntegrityError, InferenceError
            See :meth:`model`.
        InferenceError
            If the context is closed.
        """
        with self._lock:
            found = self._batchers.get(model_id)
            if found is not None:
                return found
            if self._closed:
                raise InferenceError("the worker is shutting down")
            model = self.model(model_id)
            manifest = model.manifest
            batcher = DynamicBatcher(
                model,
                max_batch(self.settings, manifest),
                max_delay(self.settings, manifest),
                name=model_id,
            ).start()
            self._batchers[model_id] = batcher
            log.info(
                "model %s: batches of up to %d images, %.1f ms deadline%s",
                model_id,
                batcher.max_batch,
                batcher.max_delay * 1000,
                "" if model.weights.is_real else f" {UNTRAINED_NOTICE}",
            )
            return batcher

    @property
    def pool(self) -> ThreadPoolExecutor:
        """Threads that decode and preprocess images (``preprocess_workers``; 0: the cores)."""
        with self._lock:
            if self._pool is None:
                workers = self.settings.preprocess_workers or available_cores()
                self._pool = ThreadPoolExecutor(workers, thread_name_prefix="preprocess")
            return self._pool

    def warm_up(self) -> None:
        """Load every served model, run it at each batch size, build one SR, start its batcher.

        On a GPU every batch size the batcher uses is warmed up (torch compiles
        and captures a CUDA graph per size, TensorRT sets up its context); on
        the CPU only batch 1, since nothing is compiled per size there and a
        DenseNet-121 at batch 32 takes seconds on a few cores.

        A model that cannot be loaded (no weights, a bad engine) is logged as
        a warning: each of its studies will then fail with the same reason.
        """
        from workers.outputs import warm_up_sr

        for model_id in self.model_ids:
            try:
                model = self.model(model_id)
                sizes = backend_options(self.settings, model.manifest).batch_sizes
                seconds = warm_up(model, sizes if model.device == "cuda" else sizes[:1])
                warm_up_sr(
                    model.manifest,
                    backend=model.backend,
                    precision=model.precision,
                    engine_key=model.engine_key,
                    device=model.device,
                )
                self.batcher(model_id)
            except DicomNodeError as exc:
                log.warning("model %s: not ready: %s", model_id, exc)
                continue
            log.info(
                "model %s: warmed up (%s) on %s: %s%s",
                model_id,
                model.algorithm,
                model.device,
                ", ".join(f"batch {n} {s * 1000:.0f} ms" for n, s in seconds.items()),
                "" if model.weights.is_real else f" {UNTRAINED_NOTICE}",
            )
        self.pool  # noqa: B018 (started now, not by the first study)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the batchers (queued images run first) and the preprocessing threads.

        Idempotent. An image still queued after ``timeout`` seconds fails its analysis.
        """
        with self._lock:
            self._closed = True
            batchers, self._batchers = list(self._batchers.values()), {}
            pool, self._pool = self._pool, None
        for batcher in batchers:
            batcher.stop(timeout)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


_current: WorkerContext | None = None
_current_lock = threading.Lock()


def init_context(settings: Settings, model_ids: Sequence[str] | None = None) -> WorkerContext:
    """Create this process's context (replacing and closing any earlier one) and return it.

    Raises
    ------
    ConfigError
        See :class:`WorkerContext`.
    """
    global _current
    with _current_lock:
        previous, _current = _current, WorkerContext(settings, model_ids)
        if previous is not None:
            previous.close(timeout=5.0)
        return _current


def current() -> WorkerContext:
    """Return the process's context, created from the environment on first use."""
    global _current
    with _current_lock:
        if _current is None:
            _current = WorkerContext(load_settings())
        return _current
