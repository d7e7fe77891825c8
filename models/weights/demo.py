"""Seeded, untrained demo weights for any registered architecture.

For demos and tests on machines without the published weights. They are
clearly labelled: kind ``untrained-demo``, :data:`UNTRAINED_NOTICE` in every
log line, and ``UNTRAINED`` in every report built with them.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from pathlib import Path

from dicom_node.core.durable import write_durably
from dicom_node.core.errors import WeightsUnavailableError
from models.architectures import Architecture, architecture_for
from models.manifest import Manifest
from models.weights.info import UNTRAINED_NOTICE, WeightsInfo, write_record

log = logging.getLogger(__name__)

DEMO_SEED = 20241122
DEMO_FILE = "demo.safetensors"
_BN_BATCHES = 2
_BN_BATCH_SIZE = 4


def demo_fingerprint(manifest: Manifest) -> str:
    """What demo weights depend on: seed, architecture, input shape and range, outputs.

    Demo weights whose recorded origin differs are rebuilt (the manifest changed).
    """
    low, high = manifest.input.value_range
    return (
        f"seed {DEMO_SEED}; {manifest.architecture}; input {list(manifest.input.chw)} "
        f"in [{low:g}, {high:g}]; {len(manifest.labels)} outputs"
    )


def make_demo_weights(
    manifest: Manifest,
    models_dir: Path,
    architectures: Mapping[str, Architecture] | None = None,
) -> WeightsInfo:
    """Create seeded random weights, clearly labelled untrained.

    Parameters are initialised by the architecture with a fixed seed
    (:data:`DEMO_SEED`); batch-norm running statistics are then estimated
    (cumulative average) on seeded uniform noise of the manifest's input
    shape ``(4, C, H, W)`` in its ``value_range``, so the untrained network
    gives finite, non-saturated outputs. The global torch RNG is restored.
    Parameters drawn from the RNG are the same on every machine; the
    batch-norm statistics are float sums whose last bits may differ between
    CPUs (kernel choice, memory alignment), so the file's sha256 is recorded
    per host rather than promised.

    Parameters
    ----------
    manifest : Manifest
        Model to make weights for; needs an ``architecture``.
    models_dir : Path
        Root of installed weights; writes ``<models_dir>/<id>/demo.safetensors``.
    architectures : mapping of str to Architecture, optional
        Architecture table (default: the built-in one).

    Returns
    -------
    WeightsInfo
        kind ``untrained-demo``.

    Raises
    ------
    WeightsUnavailableError
        If the manifest has no architecture (an ONNX-only model).
    ManifestError
        If its architecture key is unknown.
    """
    import torch
    from safetensors.torch import save

    if manifest.architecture is None:
        raise WeightsUnavailableError(
            f"model {manifest.id} is ONNX-only (architecture: null): it has no demo weights; "
            f"import its ONNX file with `dicom-node models import {manifest.id} FILE`"
        )
    architecture = architecture_for(manifest, architectures)
    low, high = manifest.input.value_range
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(DEMO_SEED)
        model = architecture.build(manifest)
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = None  # cumulative average
        model.train()
        with torch.no_grad():
            for _ in range(_BN_BATCHES):
                noise = torch.rand(_BN_BATCH_SIZE, *manifest.input.chw) * (high - low) + low
                model(noise)
        model.eval()
    finally:
        torch.random.set_rng_state(generator_state)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    data = save(tensors, metadata={"model_id": manifest.id, "kind": "untrained-demo"})
    target = models_dir / manifest.id / DEMO_FILE
    write_durably(target, data)
    info = WeightsInfo(
        manifest.id,
        "untrained-demo",
        str(target),
        hashlib.sha256(data).hexdigest(),
        None,
        demo_fingerprint(manifest),
        time.time(),
        "safetensors",
    )
    write_record(info)
    log.warning("model %s: created %s, sha256 %s", manifest.id, UNTRAINED_NOTICE, info.sha256)
    return info
