"""The worker context: what one worker process holds, created when the process starts.

Settings, the ledger, the model registry and the models this worker serves,
each loaded once. Created by ``worker_process_init`` (see
:func:`workers.app.run_worker`), or on first use in a process that did not
get that signal (tests calling the tasks directly, the solo pool).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np

from dicom_node.core.errors import DicomNodeError
from dicom_node.core.ledger import Ledger
from dicom_node.core.settings import Settings, load_settings
from models.backends import LoadedModel, load_model
from models.registry import ModelRegistry
from models.weights import UNTRAINED_NOTICE, resolve_weights

log = logging.getLogger(__name__)


class WorkerContext:
    """Settings, ledger, registry and loaded models of one worker process.

    Parameters
    ----------
    settings : Settings
        Worker settings.
    model_ids : sequence of str, optional
        Models this process serves (warmed at start). Default: every enabled model.
    """

    def __init__(self, settings: Settings, model_ids: Sequence[str] | None = None) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(settings.resolved_ledger_url)
        self.registry = ModelRegistry.load(settings.resolved_models_dir / "manifests")
        self.model_ids = list(model_ids or settings.enabled_models or self.registry.ids())
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

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
                )
            return self._models[model_id]

    def warm_up(self) -> None:
        """Load every served model, run it once and build one SR with its labels.

        A model that cannot be loaded (no weights, a bad engine) is logged as
        a warning: each of its studies will then fail with the same reason.
        """
        from workers.outputs import warm_up_sr

        for model_id in self.model_ids:
            try:
                model = self.model(model_id)
                shape = (1, *model.manifest.input.shape)
                model.predict(np.zeros(shape, np.float32) + model.manifest.input.value_range[0])
                warm_up_sr(model.manifest, backend=model.backend)
            except DicomNodeError as exc:
                log.warning("model %s: not ready: %s", model_id, exc)


_current: WorkerContext | None = None
_current_lock = threading.Lock()


def init_context(settings: Settings, model_ids: Sequence[str] | None = None) -> WorkerContext:
    """Create this process's context (replacing any earlier one) and return it."""
    global _current
    with _current_lock:
        _current = WorkerContext(settings, model_ids)
        return _current


def current() -> WorkerContext:
    """Return the process's context, created from the environment on first use."""
    global _current
    with _current_lock:
        if _current is None:
            _current = WorkerContext(load_settings())
        return _current
