"""Which layer Grad-CAM reads, per architecture.

Grad-CAM (Selvaraju et al. 2017, arXiv:1610.02391, section 3) weights the
feature maps of a convolutional layer by the gradient of the class score; the
paper uses the last convolutional layer, whose maps keep spatial detail and see
the whole image. For the DenseNets of :mod:`models.architectures` that is the
output of ``features`` (its last module, ``features.norm5``: the BatchNorm after
the fourth dense block, before the final ReLU and global pooling; 7 x 7 cells
for a 224 x 224 input), the layer torchxrayvision's and most DenseNet Grad-CAM
examples use.

The table is keyed by the manifest's ``architecture`` key, so it does not
depend on a manifest's labels or weights; a network of another architecture
gets the last ``Conv2d`` or ``BatchNorm2d`` module in definition order (a
heuristic, named in the method text). A module wrapped for an NHWC manifest
(:func:`models.engines.build_torch_model` puts the network in ``.model``) is
looked up through the wrapper.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

from dicom_node.core.errors import ModelError

if TYPE_CHECKING:
    from torch import nn

TARGET_LAYERS = MappingProxyType(
    {
        "densenet121": "features.norm5",
        "densenet169": "features.norm5",
    }
)
"""Architecture key -> dotted module name of the Grad-CAM target layer."""

WRAPPER_PREFIX = "model."
"""Where :func:`models.engines.build_torch_model` puts the network of an NHWC manifest."""


def target_layer(module: nn.Module, architecture: str | None) -> tuple[str, nn.Module]:
    """The Grad-CAM target layer of a network.

    Parameters
    ----------
    module : torch.nn.Module
        The network (possibly wrapped for NHWC input).
    architecture : str or None
        The manifest's ``architecture`` key.

    Returns
    -------
    (str, torch.nn.Module)
        The layer's dotted name and the layer.

    Raises
    ------
    ModelError
        If the network has no convolutional or batch-norm layer.
    """
    from torch import nn

    named = dict(module.named_modules())
    wanted = TARGET_LAYERS.get(architecture or "")
    if wanted is not None:
        for name in (wanted, WRAPPER_PREFIX + wanted):
            if name in named:
                return name, named[name]
    spatial = [
        (name, layer)
        for name, layer in named.items()
        if isinstance(layer, nn.Conv2d | nn.BatchNorm2d)
    ]
    if not spatial:
        raise ModelError(f"architecture {architecture}: no convolutional layer for Grad-CAM")
    return spatial[-1]
