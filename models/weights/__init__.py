"""Model weights: import (pickled torch, safetensors, ONNX), fetch, pin, verify, demo weights.

Modules: :mod:`~models.weights.info` (records, hashes), :mod:`~models.weights.checkpoint`
(restricted unpickler), :mod:`~models.weights.onnx_file` (ONNX checks),
:mod:`~models.weights.demo` (seeded untrained weights), :mod:`~models.weights.store`
(import, fetch, resolve, verify), :mod:`~models.weights.listing` (``models list``).
"""

from models.weights.checkpoint import read_checkpoint
from models.weights.demo import DEMO_SEED, make_demo_weights
from models.weights.info import UNTRAINED_NOTICE, WeightsInfo, WeightsKind, sha256_file
from models.weights.listing import NOT_INSTALLED, ModelRow, list_models
from models.weights.store import (
    check_state_dict,
    detect_format,
    fetch_weights,
    import_weights,
    installed_weights,
    load_state_dict,
    resolve_weights,
    verify_weights,
)

__all__ = [
    "DEMO_SEED",
    "NOT_INSTALLED",
    "UNTRAINED_NOTICE",
    "ModelRow",
    "WeightsInfo",
    "WeightsKind",
    "check_state_dict",
    "detect_format",
    "fetch_weights",
    "import_weights",
    "installed_weights",
    "list_models",
    "load_state_dict",
    "make_demo_weights",
    "read_checkpoint",
    "resolve_weights",
    "sha256_file",
    "verify_weights",
]
