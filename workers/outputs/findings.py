"""What a report is built from: findings of one analysis, and the analysis around them.

An *analysis* is one model run on one study (one generation). Its report input is
a :class:`ReportInput`: the findings, one per (scope unit, label), the headers of
every image the model ran on, the model's manifest and weights, and how the model
was served (backend, precision, device, engine key).

The manifest and weights are typed by the small protocols below, which name only
the fields a report needs: ``models.manifest.Manifest``, ``models.weights.WeightsInfo``,
``models.backends.LoadedModel`` and ``workers.pipeline.run.Outcome`` satisfy them, and
so do test stand-ins.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from dicom_node.core.errors import ReportError
from dicom_node.core.ledger import PriorReport, SkippedImage
from dicom_node.core.uids import derived_uid

Scope = Literal["image", "series", "study"]
"""Aggregation scope: one finding per image, per series, or per study and label."""

TOLERANCE = 1e-6  # float32 rounding allowed outside [0, 1] before a probability is refused
DEFAULT_PRECISION = "fp32"
"""Precision reported for a model that does not say (a backend of before issue 7, a stand-in)."""


class CodeLike(Protocol):
    """A coded concept: code value, coding scheme designator, code meaning."""

    @property
    def value(self) -> str: ...  # noqa: D102
    @property
    def scheme(self) -> str: ...  # noqa: D102
    @property
    def meaning(self) -> str: ...  # noqa: D102


class LabelLike(Protocol):
    """A model output: name, coded finding, operating threshold, shown in reports or not."""

    @property
    def name(self) -> str: ...  # noqa: D102
    @property
    def code(self) -> CodeLike: ...  # noqa: D102
    @property
    def threshold(self) -> float: ...  # noqa: D102
    @property
    def report(self) -> bool: ...  # noqa: D102


class ModelCardLike(Protocol):
    """Where a reader learns what the model is for and where it fails."""

    @property
    def intended_use(self) -> str: ...  # noqa: D102
    @property
    def reference(self) -> str: ...  # noqa: D102
    @property
    def url(self) -> str | None: ...  # noqa: D102


class AggregationLike(Protocol):
    """How per-image outputs become findings."""

    @property
    def scope(self) -> str: ...  # noqa: D102


class ManifestLike(Protocol):
    """The manifest fields a report uses."""

    @property
    def id(self) -> str: ...  # noqa: D102
    @property
    def name(self) -> str: ...  # noqa: D102
    @property
    def version(self) -> str: ...  # noqa: D102
    @property
    def labels(self) -> Sequence[LabelLike]: ...  # noqa: D102
    @property
    def aggregation(self) -> AggregationLike: ...  # noqa: D102
    @property
    def model_card(self) -> ModelCardLike | None: ...  # noqa: D102


class WeightsLike(Protocol):
    """The weights fields a report uses."""

    @property
    def model_id(self) -> str: ...  # noqa: D102
    @property
    def kind(self) -> str: ...  # noqa: D102
    @property
    def sha256(self) -> str: ...  # noqa: D102


def finding_site_code(manifest: ManifestLike, label: LabelLike) -> CodeLike | None:
    """The anatomic site of a label's finding: its own ``finding_site``, else the manifest's.

    Read with ``getattr`` so that manifests without the field (test stand-ins,
    the warm-up manifest) have none; ``models.manifest.Manifest.finding_site_of``
    is the same rule on the typed manifest.
    """
    return getattr(label, "finding_site", None) or getattr(manifest, "finding_site", None)


@dataclass(frozen=True)
class Finding:
    """One label's result for one scope unit (an image, a series, or the study).

    Attributes
    ----------
    label : LabelLike
        The manifest label (code and operating threshold).
    probability : float
        Model output after activation and aggregation, in [0, 1] (unit "1").
    sources : tuple of Dataset
        Headers (pixel data not needed) of the images that gave ``probability``:
        one for ``max`` (for series scope the slice that drove it), every image of
        the scope unit for ``mean``. Each must be among the report's evidence or
        is added to it.
    scope_key : str or None
        Series Instance UID for series scope, SOP Instance UID for image scope,
        None for study scope.
    """

    label: LabelLike
    probability: float
    sources: tuple[Dataset, ...]
    scope_key: str | None = None

    @property
    def present(self) -> bool:
        """Whether the probability reaches the label's operating threshold."""
        return self.probability >= self.label.threshold


@dataclass(frozen=True)
class Saliency:
    """Where the model looked for one finding, on the source image.

    Attributes
    ----------
    image : numpy.ndarray
        ``(H, W) uint8``: the source image for display (windowed, MONOCHROME2),
        at the source's Rows x Columns (or downscaled, same aspect).
    heat : numpy.ndarray
        ``(H, W) float32`` in [0, 1], same shape as ``image``.
    method : str
        How it was computed, e.g. ``"Grad-CAM (captum LayerGradCam), features.norm5"``.
    """

    image: npt.NDArray[np.uint8]
    heat: npt.NDArray[np.float32]
    method: str


class Explainer(Protocol):
    """Saliency of a finding on one of the analysis's source images (the key image profile)."""

    def explain(self, header: Dataset, label_name: str) -> Saliency:
        """Saliency of label ``label_name`` on the image whose header is ``header``.

        Raises
        ------
        ReportError
            If the image is not one of the analysis's, or its saliency cannot be computed.
        """
        ...


_NO_PREDECESSORS: Mapping[tuple[str, int], PriorReport] = MappingProxyType({})


def predecessor_key(profile: str, ordinal: int = 0) -> tuple[str, int]:
    """Key of :attr:`ReportInput.predecessors` (as ``Ledger.prior_reports`` keys them)."""
    return (profile, ordinal)


@dataclass(frozen=True)
class ReportInput:
    """Everything one analysis's report is built from.

    Attributes
    ----------
    study_uid : str
        Study Instance UID of the analysed study.
    generation : int
        Ledger generation of the study (part of the report UIDs).
    manifest : ManifestLike
        The model's manifest (id, name, version, labels, aggregation, model card).
    weights : WeightsLike
        The weights that produced the findings (model id, kind "real" or
        "untrained-demo", sha256 as 64 lowercase hex digits).
    backend : str
        Inference backend that ran the model, e.g. "onnxruntime" or "torch".
    findings : sequence of Finding
        One per (scope unit, label), in the order the report lists them. Labels
        with ``report: false`` are accepted and left out of the report.
    evidence : sequence of Dataset
        Headers of every image the model ran on (one or more series of the study).
    skipped : sequence of SkippedImage
        Images of the analysis that were not analysed, each with its reason (no
        values); the report names them.
    precision : str
        What the backend computed in: "fp32" (default), "fp16", "bf16" or "int8".
    engine_key : str
        Key of the compiled artefact that ran (a TensorRT engine, an ONNX export);
        "" when there is none (eager PyTorch), and then not reported.
    device : str
        "cuda" or "cpu"; "" when unknown, and then not reported.
    instance_digest : str
        sha256 (hex) of the sorted SOP Instance UIDs of the analysis's instances
        (analysed and skipped): part of every report UID (:func:`report_uids`).
    predecessors : mapping of (str, int) to PriorReport
        Reports of earlier generations that already went out, by (profile,
        ordinal) (:func:`predecessor_key`); the new reports supersede them.
    explainer : Explainer or None
        Saliency maps for the key image profile; None when no destination takes it.
    """

    study_uid: str
    generation: int
    manifest: ManifestLike
    weights: WeightsLike
    backend: str
    findings: Sequence[Finding]
    evidence: Sequence[Dataset]
    skipped: Sequence[SkippedImage] = ()
    precision: str = DEFAULT_PRECISION
    engine_key: str = ""
    device: str = ""
    instance_digest: str = ""
    predecessors: Mapping[tuple[str, int], PriorReport] = field(
        default_factory=lambda: _NO_PREDECESSORS
    )
    explainer: Explainer | None = None

    def predecessor(self, profile: str, ordinal: int = 0) -> PriorReport | None:
        """The delivered report of an earlier generation this profile's object supersedes."""
        return self.predecessors.get(predecessor_key(profile, ordinal))

    @property
    def is_demo(self) -> bool:
        """Whether the weights are anything but real (trained, imported) weights."""
        return self.weights.kind != "real"

    @property
    def scope(self) -> str:
        """The manifest's aggregation scope ("image", "series" or "study")."""
        return self.manifest.aggregation.scope

    def reported(self) -> list[Finding]:
        """The findings to report: labels with ``report: false`` left out, in input order.

        Raises
        ------
        ReportError
            If a probability is not a finite number in [0, 1], a scope key does not
            fit the scope, a label is not the manifest's, or a (scope unit, label)
            pair comes twice.
        """
        names = {label.name for label in self.manifest.labels}
        seen: set[tuple[str | None, str]] = set()
        kept: list[Finding] = []
        for finding in self.findings:
            name = finding.label.name
            if name not in names:
                raise ReportError(f"label {name!r} is not in manifest {self.manifest.id}")
            p = finding.probability
            if not (math.isfinite(p) and -TOLERANCE <= p <= 1 + TOLERANCE):
                raise ReportError(f"label {name!r}: probability {p!r} is not in [0, 1]")
            if (finding.scope_key is None) != (self.scope == "study"):
                raise ReportError(f"label {name!r}: scope key does not fit {self.scope} scope")
            if not finding.sources:
                raise ReportError(f"label {name!r}: no source image")
            key = (finding.scope_key, name)
            if key in seen:
                raise ReportError(f"label {name!r} is reported twice for one scope unit")
            seen.add(key)
            if finding.label.report:
                kept.append(finding)
        return kept


class ImageLike(Protocol):
    """An image of an analysis (``workers.pipeline.order.Image``)."""

    @property
    def header(self) -> Dataset: ...  # noqa: D102


class AggregateLike(Protocol):
    """One finding unit's probabilities (``workers.pipeline.aggregate.Aggregate``)."""

    @property
    def scope_key(self) -> str | None: ...  # noqa: D102
    @property
    def probabilities(self) -> npt.NDArray[np.float32]: ...  # noqa: D102
    @property
    def sources(self) -> Sequence[Sequence[ImageLike]]: ...  # noqa: D102


class OutcomeLike(Protocol):
    """What an analysis produced (``workers.pipeline.run.Outcome``)."""

    @property
    def aggregates(self) -> Sequence[AggregateLike]: ...  # noqa: D102
    @property
    def images(self) -> Sequence[ImageLike]: ...  # noqa: D102
    @property
    def skipped(self) -> Sequence[SkippedImage]: ...  # noqa: D102


class ModelLike(Protocol):
    """A loaded model (``models.backends.LoadedModel``).

    ``precision``, ``engine_key`` and ``device`` (see :class:`Serving`) are read
    when the model has them (:func:`serving_of`); a model without them still fits.
    """

    @property
    def manifest(self) -> ManifestLike: ...  # noqa: D102
    @property
    def weights(self) -> WeightsLike: ...  # noqa: D102
    @property
    def backend(self) -> str: ...  # noqa: D102


@dataclass(frozen=True)
class Serving:
    """Backend, precision, engine key and device of a model, as its reports record them.

    Attributes
    ----------
    backend : str
        "tensorrt", "torch" or "onnxruntime" (anything else is written as is).
    precision : str
        "fp32", "fp16", "bf16" or "int8".
    engine_key : str
        Compiled artefact's key, "" for none.
    device : str
        "cuda" or "cpu", "" when unknown.
    """

    backend: str
    precision: str = DEFAULT_PRECISION
    engine_key: str = ""
    device: str = ""


def serving_of(model: ModelLike) -> Serving:
    """Read how ``model`` is served; attributes it lacks take the defaults of :class:`Serving`.

    Parameters
    ----------
    model : ModelLike
        ``models.backends.LoadedModel`` (``backend``, ``precision``, ``engine_key``,
        ``device``) or a stand-in with ``backend`` only.

    Returns
    -------
    Serving
    """
    return Serving(
        backend=str(model.backend),
        precision=str(getattr(model, "precision", "") or DEFAULT_PRECISION),
        engine_key=str(getattr(model, "engine_key", "") or ""),
        device=str(getattr(model, "device", "") or ""),
    )


def report_input(
    outcome: OutcomeLike,
    model: ModelLike,
    study_uid: str,
    generation: int,
    *,
    predecessors: Mapping[tuple[str, int], PriorReport] | None = None,
    explainer: Explainer | None = None,
) -> ReportInput:
    """Turn an analysis outcome into the input of every report profile.

    Parameters
    ----------
    outcome : OutcomeLike
        Aggregates (one per scope unit; ``probabilities`` ``(L,) float32`` in manifest
        label order, ``sources[i]`` the images behind label ``i``) and the images used.
    model : ModelLike
        Manifest, weights and backend name; precision, engine key and device when
        the model has them (:func:`serving_of`).
    study_uid : str
        Study Instance UID.
    generation : int
        Ledger generation of the study.
    predecessors : mapping, optional
        Delivered reports of earlier generations, by (profile, ordinal)
        (``Ledger.prior_reports``).
    explainer : Explainer, optional
        Saliency for the key image profile.

    Returns
    -------
    ReportInput
        One finding per (aggregate, label), labels with ``report: false`` included
        (the builders leave them out); evidence = every image used; the skipped
        images with their reasons.

    Raises
    ------
    ReportError
        If an aggregate's probabilities do not have one value per manifest label.
    """
    labels = list(model.manifest.labels)
    serving = serving_of(model)
    findings: list[Finding] = []
    for unit in outcome.aggregates:
        if len(unit.probabilities) != len(labels) or len(unit.sources) != len(labels):
            raise ReportError(
                f"model {model.manifest.id}: {len(unit.probabilities)} outputs "
                f"for {len(labels)} labels"
            )
        for i, label in enumerate(labels):
            sources = tuple(image.header for image in unit.sources[i])
            findings.append(Finding(label, float(unit.probabilities[i]), sources, unit.scope_key))
    evidence = [image.header for image in outcome.images]
    return ReportInput(
        study_uid=study_uid,
        generation=generation,
        manifest=model.manifest,
        weights=model.weights,
        backend=serving.backend,
        findings=findings,
        evidence=evidence,
        skipped=list(outcome.skipped),
        precision=serving.precision,
        engine_key=serving.engine_key,
        device=serving.device,
        instance_digest=instance_digest(
            [str(ds.get("SOPInstanceUID", "")) for ds in evidence]
            + [item.sop_instance_uid for item in outcome.skipped]
        ),
        predecessors=MappingProxyType(dict(predecessors or {})),
        explainer=explainer,
    )


def instance_digest(sop_instance_uids: Sequence[str]) -> str:
    """sha256 (hex) of a set of SOP Instance UIDs, in any order, duplicates ignored."""
    return hashlib.sha256("\n".join(sorted(set(sop_instance_uids))).encode()).hexdigest()


def report_uids(inp: ReportInput, profile: str, ordinal: int = 0) -> tuple[str, str]:
    """Deterministic (Series Instance UID, SOP Instance UID) of one report object.

    The series is derived (:func:`dicom_node.core.uids.derived_uid`) from the study
    UID, model id, profile and ordinal only, so every generation and model version
    of a study's report stays in one series and a newer report visibly supersedes
    the older one. The instance is derived from the study UID, generation, the
    analysed instances (:attr:`ReportInput.instance_digest`), model id and version,
    weights sha256, profile and ordinal: a task run twice on the same input
    produces the same instance, and a PACS keeps one copy.

    Parameters
    ----------
    inp : ReportInput
        The analysis.
    profile : str
        Output profile name.
    ordinal : int
        The object within the profile (key image: 0 the SC, 1 the KOS).

    Returns
    -------
    tuple of str
        (Series Instance UID, SOP Instance UID).
    """
    series = derived_uid(inp.study_uid, inp.manifest.id, profile, str(ordinal), "series")
    instance = derived_uid(
        inp.study_uid,
        str(inp.generation),
        inp.instance_digest,
        inp.manifest.id,
        inp.manifest.version,
        inp.weights.sha256,
        profile,
        str(ordinal),
        "instance",
    )
    return series, instance


SERIES_NUMBERS: Mapping[str, int] = MappingProxyType(
    {"tid1500": 9901, "text_sr": 9902, "key_image": 9903, "pdf": 9905}
)
"""Series Number of each profile's first object; later objects of a profile count up."""


def series_number(profile: str, ordinal: int = 0) -> int:
    """Series Number of a profile's object: :data:`SERIES_NUMBERS` + ordinal (9900 unknown)."""
    return SERIES_NUMBERS.get(profile, 9900) + ordinal
