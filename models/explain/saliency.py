"""One label's saliency on one source instance, on the source's own pixel grid.

:func:`explain_instance` runs the manifest's preprocessing on the instance
(as the analysis did), Grad-CAM (:mod:`models.explain.gradcam`) on the result,
maps the map back through the preprocessing's geometry
(:mod:`models.explain.geometry`) and renders the display image
(:mod:`models.explain.display`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from models.contract import check_image, to_batch
from models.explain.display import display_image, display_preprocessor
from models.explain.geometry import trace
from models.explain.gradcam import METHOD, GradCam
from models.preprocessing import Preprocessor


@dataclass(frozen=True)
class SourceSaliency:
    """A display image and a heat map of the same instance, same size.

    Attributes
    ----------
    image : ndarray
        ``(Rows, Columns) uint8`` MONOCHROME2 display image.
    heat : ndarray
        ``(Rows, Columns) float32`` in [0, 1], peak 1 (all 0 when the label has no
        positive evidence).
    method : str
        How the heat map was made: method, target layer, label, geometry.
    """

    image: npt.NDArray[np.uint8]
    heat: npt.NDArray[np.float32]
    method: str


class InstanceExplainer:
    """Grad-CAM on source instances of one model.

    Parameters
    ----------
    gradcam : GradCam
        The model's Grad-CAM (its manifest gives preprocessing and labels).
    """

    def __init__(self, gradcam: GradCam) -> None:
        self.gradcam = gradcam
        self.manifest = gradcam.manifest
        self.preprocess = Preprocessor.from_manifest(self.manifest)
        self.display = display_preprocessor()

    def label_index(self, label_name: str) -> int:
        """Output column of a label.

        Raises
        ------
        KeyError
            If the manifest has no such label.
        """
        for index, label in enumerate(self.manifest.labels):
            if label.name == label_name:
                return index
        raise KeyError(f"model {self.manifest.id} has no label {label_name!r}")

    def explain(self, ds: Dataset, label_name: str) -> SourceSaliency:
        """Grad-CAM of ``label_name`` on ``ds``, on the source's pixel grid.

        Parameters
        ----------
        ds : pydicom.Dataset
            The complete instance (pixel data included) the model ran on.
        label_name : str
            A manifest label's name.

        Returns
        -------
        SourceSaliency

        Raises
        ------
        KeyError
            Unknown label.
        PixelDataError, InputContractError
            The instance cannot be preprocessed (it would have been skipped).
        ModelError, InferenceError
            See :meth:`models.explain.gradcam.GradCam.compute`.
        """
        index = self.label_index(label_name)
        array = self.preprocess(ds)
        check_image(self.manifest, array)
        cam = self.gradcam.compute(to_batch(self.manifest, [array]), index)
        image = display_image(ds, self.display)
        geometry = trace(self.manifest.preprocessing, image.shape[0], image.shape[1])
        heat = geometry.to_source(cam.heat)
        top = float(heat.max())
        if top > 0:  # resampling can miss the model-size map's peak: peak 1 again
            heat = np.clip(heat / top, 0.0, 1.0).astype(np.float32)
        evidence = "" if cam.peak > 0 else "; no positive evidence (map is zero)"
        method = (
            f"{METHOD}, layer {cam.layer} ({cam.cells[0]}x{cam.cells[1]}), "
            f"label {label_name}, {geometry.describe()}{evidence}"
        )
        return SourceSaliency(image=image, heat=heat, method=method)
