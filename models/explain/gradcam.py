"""Grad-CAM saliency of one label on one preprocessed image, with captum.

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks
via Gradient-based Localization", ICCV 2017, arXiv:1610.02391): for the target
layer's feature maps ``A^k`` (``(K, h', w')``) and the label's raw score ``y``
(the logit, before the manifest's activation), the weights are the spatially
averaged gradients ``a_k = mean_ij dy/dA^k_ij`` and the map is
``ReLU(sum_k a_k A^k)``. captum's ``LayerGradCam`` computes ``sum_k a_k A^k``
(captum 0.9, ``captum.attr.LayerGradCam``); the ReLU, the bilinear upsampling
to the model input size (``LayerAttribution.interpolate``) and the
normalisation to [0, 1] (division by the map's maximum) are done here (the
upsampling as captum's ``LayerAttribution.interpolate`` does it:
``torch.nn.functional.interpolate``, bilinear, ``align_corners=False``).

The network is a separate FP32 eager copy built from the manifest and weights
(:func:`models.engines.build_torch_model`), never the backend's module: captum
registers hooks on the target layer, which must not touch inference running in
other threads. It is built on first use, on the CPU or on CUDA when asked, and
one lock serialises the computations (hooks and gradients are per module).
Parameters do not require gradients; only the target layer's output does.

Deterministic: eval mode, no dropout, the same input and label give the same
map (FP32 CPU kernels sum in a fixed order for a fixed thread count).
Untrained demo weights give a map too: it shows what random weights look at,
and every report that shows it says the weights are untrained.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from dicom_node.core.errors import InferenceError, ModelError
from models.explain.layers import target_layer

if TYPE_CHECKING:
    from models.architectures import Architecture
    from models.manifest import Manifest
    from models.weights import WeightsInfo

METHOD = "Grad-CAM (Selvaraju et al. 2017, captum LayerGradCam)"


@dataclass(frozen=True)
class Cam:
    """One Grad-CAM map at the model input size.

    Attributes
    ----------
    heat : ndarray
        ``(H, W) float32`` in [0, 1], ``(H, W)`` the model input's spatial size;
        all zeros when no cell has positive evidence (``peak == 0``).
    layer : str
        Dotted name of the target layer.
    peak : float
        Largest value of the ReLU'd map before normalisation (units of the
        logit per feature unit); 0 when the label has no positive evidence.
    cells : (int, int)
        The target layer's spatial size ``(h', w')`` (the map's true resolution).
    """

    heat: npt.NDArray[np.float32]
    layer: str
    peak: float
    cells: tuple[int, int]


class GradCam:
    """Grad-CAM over one network; thread-safe, the network built on first use.

    Parameters
    ----------
    manifest : Manifest
        Architecture key, input layout and shape, labels.
    weights : WeightsInfo
        Safetensors weights (ONNX weights have no PyTorch network: refused on use).
    architectures : mapping of str to Architecture, optional
        Architecture table (default: the built-in one).
    device : {"cpu", "cuda"}
        Where the FP32 copy runs.
    """

    def __init__(
        self,
        manifest: Manifest,
        weights: WeightsInfo,
        architectures: Mapping[str, Architecture] | None = None,
        device: str = "cpu",
    ) -> None:
        self.manifest = manifest
        self.weights = weights
        self.architectures = architectures
        self.device = device
        self._lock = threading.Lock()
        self._net: Any = None
        self._layer_name = ""
        self._cam: Any = None

    @property
    def layer(self) -> str:
        """The target layer's dotted name ("" until the network is built)."""
        return self._layer_name

    def _build(self) -> None:
        """Build the FP32 network and captum's LayerGradCam (under the lock)."""
        from captum.attr import LayerGradCam

        from models.engines import build_torch_model

        if self.weights.format == "onnx" or self.manifest.architecture is None:
            raise ModelError(
                f"model {self.manifest.id}: Grad-CAM needs a PyTorch architecture and "
                "safetensors weights (ONNX-only model)"
            )
        net = build_torch_model(self.manifest, self.weights, self.architectures)
        net = net.float().to(self.device).eval()
        for parameter in net.parameters():
            parameter.requires_grad_(False)
        self._layer_name, layer = target_layer(net, self.manifest.architecture)
        self._cam = LayerGradCam(net, layer)
        self._net = net

    def compute(self, batch: npt.NDArray[np.float32], label_index: int) -> Cam:
        """Grad-CAM of one label on one image.

        Parameters
        ----------
        batch : ndarray
            ``(1, *manifest.input.shape) float32`` in the manifest's layout
            (:func:`models.contract.to_batch` of one preprocessed image).
        label_index : int
            Index into ``manifest.labels`` (the output column).

        Returns
        -------
        Cam
            The map at the model input's spatial size, in [0, 1].

        Raises
        ------
        ModelError
            ONNX-only model, a network without a convolutional layer.
        InferenceError
            A batch that is not one image, a label index out of range, or a
            failure inside torch/captum.
        """
        if batch.shape[0] != 1 or tuple(batch.shape[1:]) != tuple(self.manifest.input.shape):
            raise InferenceError(
                f"model {self.manifest.id}: Grad-CAM takes one image of shape "
                f"{tuple(self.manifest.input.shape)}, got {batch.shape}"
            )
        if not 0 <= label_index < len(self.manifest.labels):
            raise InferenceError(f"model {self.manifest.id}: no label {label_index}")
        size = self._spatial_size()
        with self._lock:
            if self._net is None:
                self._build()
            try:
                raw = self._attribute(batch, label_index)
            except Exception as exc:
                raise InferenceError(
                    f"model {self.manifest.id}: Grad-CAM failed: {type(exc).__name__}"
                ) from exc
        return _normalised(raw, size, self._layer_name)

    def _spatial_size(self) -> tuple[int, int]:
        shape = tuple(int(v) for v in self.manifest.input.shape)
        if self.manifest.input.layout == "NHWC":
            return shape[0], shape[1]
        return shape[1], shape[2]

    def _attribute(self, batch: npt.NDArray[np.float32], label_index: int) -> Any:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(self.device)
        with torch.enable_grad():
            attribution = self._cam.attribute(x, target=label_index, relu_attributions=False)
        return attribution.detach().to("cpu", torch.float32)


def _normalised(raw: Any, size: tuple[int, int], layer: str) -> Cam:
    """ReLU, bilinear upsampling to ``size``, division by the maximum."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    cells = (int(raw.shape[-2]), int(raw.shape[-1]))
    cam = torch.relu(raw.sum(dim=1, keepdim=True))  # (1, 1, h', w'); K already summed by captum
    with torch.no_grad():
        up = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    heat = np.asarray(up[0, 0].numpy(), dtype=np.float32)
    peak = float(cam.max())
    if peak > 0 and np.isfinite(peak):
        heat = np.clip(heat / float(heat.max()), 0.0, 1.0).astype(np.float32)
    else:
        heat, peak = np.zeros(size, np.float32), 0.0
    return Cam(heat=np.ascontiguousarray(heat), layer=layer, peak=peak, cells=cells)
