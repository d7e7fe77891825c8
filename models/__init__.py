"""Models: manifests, registry, routing, input contract, architectures, weights, backends.

One walk through the package: :mod:`models.manifest` (a model is a YAML file) ->
:mod:`models.registry` (manifests by id, factories by key) -> :mod:`models.routing`
(which models apply to which instances) -> :mod:`models.preprocessing` (instance to
tensor) -> :mod:`models.contract` (the batch fits the manifest) ->
:mod:`models.weights` (import, pin, verify, demo) -> :mod:`models.engines` (ONNX
export cache) -> :mod:`models.backends` (ONNX Runtime, PyTorch; activation).
Imports only :mod:`dicom_node.core`. Nothing is loaded at import time.
"""

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
