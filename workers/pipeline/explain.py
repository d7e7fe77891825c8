"""The analysis's explainer: saliency maps of a model's findings on the images it ran on.

:func:`explainer_for` returns a :class:`workers.outputs.findings.Explainer` for
one analysis (one model, its images). ``explain(header, label_name)`` finds
the image by SOP Instance UID, reads it from the spool, preprocesses it as the
analysis did (the manifest's :class:`~models.preprocessing.Preprocessor`),
computes Grad-CAM (Selvaraju et al. 2017) of the label
(:mod:`models.explain.gradcam`) and returns it on the source's Rows x Columns
grid with the source rendered for display (8-bit MONOCHROME2,
:mod:`models.explain.display`).

Lazy: nothing is built until the first ``explain``; the model's FP32 PyTorch
copy is built then, once per explainer, on CUDA when the model runs there.
Thread-safe: one lock serialises the Grad-CAM computations (the worker runs
several analyses in threads); reading and preprocessing run outside it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from pydicom import Dataset, dcmread

from dicom_node.core.errors import DicomNodeError, ReportError
from dicom_node.core.redact import reason_for
from models.architectures import Architecture
from models.backends import LoadedModel
from models.explain.gradcam import GradCam
from models.explain.saliency import InstanceExplainer
from workers.outputs.findings import Explainer, Saliency
from workers.pipeline.order import Image, uid_text


class ModelExplainer:
    """Grad-CAM saliency of one model's labels on the analysis's images.

    Parameters
    ----------
    model : LoadedModel
        Manifest and weights (the backend itself is not used).
    images : sequence of Image
        The analysis's images (spool path and header).
    architectures : mapping of str to Architecture, optional
        Architecture table (default: the built-in one).

    Attributes
    ----------
    gradcam : GradCam
        The model's Grad-CAM; its network is built on the first ``explain``
        (``gradcam.layer`` is "" until then).
    images : dict of str to Image
        The analysis's images by SOP Instance UID.
    """

    def __init__(
        self,
        model: LoadedModel,
        images: Sequence[Image],
        architectures: Mapping[str, Architecture] | None = None,
    ) -> None:
        self.model_id = model.manifest.id
        self.images = {image.sop_instance_uid: image for image in images}
        device = "cuda" if model.device == "cuda" else "cpu"
        self.gradcam = GradCam(model.manifest, model.weights, architectures, device)
        self._explainer: InstanceExplainer | None = None
        self._lock = threading.Lock()

    def _instance_explainer(self) -> InstanceExplainer:
        with self._lock:
            if self._explainer is None:
                self._explainer = InstanceExplainer(self.gradcam)
            return self._explainer

    def explain(self, header: Dataset, label_name: str) -> Saliency:
        """Saliency of ``label_name`` on the image whose header is ``header``.

        Parameters
        ----------
        header : pydicom.Dataset
            A header of one of the analysis's images (its SOP Instance UID is used).
        label_name : str
            A manifest label's name.

        Returns
        -------
        Saliency
            ``image`` ``(Rows, Columns) uint8`` MONOCHROME2, ``heat`` ``(Rows,
            Columns) float32`` in [0, 1], ``method`` (Grad-CAM, layer, label, geometry).

        Raises
        ------
        ReportError
            The image is not one of the analysis's, the label is unknown, or the
            saliency cannot be computed (the reason names classes and keywords,
            never values).
        """
        uid = uid_text(header, "SOPInstanceUID")
        image = self.images.get(uid)
        if image is None:
            raise ReportError(f"model {self.model_id}: image {uid} is not in the analysis")
        try:
            ds = dcmread(image.path)
            found = self._instance_explainer().explain(ds, label_name)
        except KeyError:
            raise ReportError(f"model {self.model_id}: no label {label_name!r}") from None
        except DicomNodeError as exc:
            raise ReportError(f"model {self.model_id}: no saliency for image {uid}: {exc}") from exc
        except Exception as exc:  # a library failure; its text may quote values
            raise ReportError(
                f"model {self.model_id}: no saliency for image {uid}: {reason_for(exc)}"
            ) from exc
        return Saliency(image=found.image, heat=found.heat, method=found.method)


def explainer_for(
    model: LoadedModel,
    images: Sequence[Image],
    architectures: Mapping[str, Architecture] | None = None,
) -> Explainer:
    """The explainer of one analysis (see the module docstring).

    Parameters
    ----------
    model : LoadedModel
        The model that ran (manifest, weights, device).
    images : sequence of Image
        The images it ran on (``Outcome.images``).
    architectures : mapping of str to Architecture, optional
        The registry's architecture table when it is not the built-in one.

    Returns
    -------
    Explainer
        Builds nothing until its first ``explain``.
    """
    return ModelExplainer(model, images, architectures)
