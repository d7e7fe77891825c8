"""Output profile "key_image": a Secondary Capture key image and a KOS that points to it.

For PACS and viewers that show images only. One pair per analysis, in sending order:

0. **Secondary Capture Image** (PS3.3 A.8.1, SOP Class 1.2.840.10008.5.1.4.1.1.7),
   RGB 8 bit: the source image of the top finding
   (:func:`workers.outputs.summary.top_findings`: present findings first, then
   by probability) in grey, with that finding's saliency map (Grad-CAM,
   Selvaraju et al. 2017, from :attr:`ReportInput.explainer`) coloured and
   blended over it, and below it a dark band with burned-in text
   (:mod:`workers.outputs.overlay`): "AI-generated, not a diagnosis." and, for
   demo weights, :data:`models.weights.UNTRAINED_NOTICE` and the untrained
   statement (yellow); which finding the heat map shows; the top
   :data:`TOP_FINDINGS` finding lines (:func:`workers.outputs.summary.finding_line`);
   the algorithm line. Burned In Annotation YES, Conversion Type WSD
   (workstation), Image Type DERIVED, SECONDARY, Source Image Sequence and
   Derivation Description (the saliency method) naming the source image.
   Sources larger than :data:`workers.outputs.overlay.MAX_SIDE` are scaled down.
1. **Key Object Selection Document** (PS3.3 A.35.4), :mod:`workers.outputs.kos`.

Patient and study are copied from the source
(:func:`workers.outputs.headers.copy_patient_and_study`); each object has its own series
(:func:`workers.outputs.findings.report_uids` and ``series_number("key_image",
ordinal)``), the same for every generation of the study's report, and Instance
Number = the generation.
"""

from __future__ import annotations

import re

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.core.contract import MANUFACTURER
from dicom_node.core.errors import ReportError
from dicom_node.core.redact import captured_library_warnings
from models.weights import UNTRAINED_NOTICE
from workers.outputs.findings import Finding, ReportInput, Saliency, report_uids, series_number
from workers.outputs.headers import (
    BuildSteps,
    copy_patient_and_study,
    first_of_study,
    text_value,
    uid_of,
    unique_headers,
)
from workers.outputs.kos import build_kos
from workers.outputs.overlay import YELLOW, TextLine, compose
from workers.outputs.summary import (
    algorithm_line,
    finding_line,
    statements,
    top_findings,
)

__all__ = ["PROFILE", "TOP_FINDINGS", "build_key_image", "build_secondary_capture"]

PROFILE = "key_image"
TOP_FINDINGS = 3
"""Finding lines burned into the key image."""
SC_ORDINAL = 0
KOS_ORDINAL = 1
PLACEHOLDER_ORIENTATION = ("L", "F")
"""Passed to highdicom (which requires one) and replaced by the source's value or empty."""
_ORIENTATION = re.compile(r"[APRLHF]{1,3}")
_CS = re.compile(r"[A-Z0-9_ ]{1,16}")
PAIRED_BODY_PARTS = frozenset(
    {"ANKLE", "ARM", "BREAST", "CLAVICLE", "EAR", "ELBOW", "EXTREMITY", "EYE", "FEMUR",
     "FIBULA", "FINGER", "FOOT", "FOREARM", "HAND", "HIP", "HUMERUS", "KIDNEY", "KNEE", "LEG",
     "LOWER LEG", "RADIUS", "SCAPULA", "SHOULDER", "THUMB", "TIBIA", "TOE", "ULNA", "UPPER ARM",
     "WRIST"}
)  # fmt: skip
"""Body Part Examined terms (PS3.16 CID 4031) of paired structures: Laterality is empty
(unknown) when the source does not give it."""


def build_key_image(inp: ReportInput) -> list[Dataset]:
    """Build the key image profile of one analysis: ``[Secondary Capture, KOS]``.

    Parameters
    ----------
    inp : ReportInput
        The analysis; :attr:`ReportInput.explainer` gives the saliency map.

    Returns
    -------
    list of pydicom.Dataset
        The SC (ordinal 0) and the KOS that references it (ordinal 1), each with
        file meta (Explicit VR Little Endian).

    Raises
    ------
    ReportError
        If ``inp.explainer`` is None, no finding is reportable, the explainer
        fails, its saliency does not fit, or highdicom refuses the objects. The
        message names the stage and the exception class, never a header value.
    """
    if inp.explainer is None:
        raise ReportError("key_image needs an explainer")
    with captured_library_warnings():
        top = top_findings(inp, TOP_FINDINGS)
        if not top:
            raise ReportError(f"model {inp.manifest.id}: no reportable finding")
        source = source_of(inp, top[0])
        saliency = inp.explainer.explain(source, top[0].label.name)
        sc = build_secondary_capture(inp, top, source, saliency)
        kos = build_kos(inp, sc, source, top[0], saliency.method)
    return [sc, kos]


def source_of(inp: ReportInput, finding: Finding) -> Dataset:
    """The image the key image shows: the finding's first source (the one that drove it).

    Raises
    ------
    ReportError
        If the source header lacks a UID, or no image of the study is at hand.
    """
    sources = unique_headers(finding.sources)
    for ds in sources:
        if uid_of(ds, "StudyInstanceUID") == inp.study_uid:
            return ds
    return first_of_study(unique_headers(inp.evidence), inp.study_uid)


def text_lines(inp: ReportInput, top: list[Finding], method: str) -> list[TextLine]:
    """The burned-in text: statements (yellow), heat map label, finding lines, algorithm."""
    warnings = [UNTRAINED_NOTICE] if inp.is_demo else []
    shown = top[0].label.code.meaning
    return [
        *(
            TextLine(text, YELLOW)
            for text in [*statements(inp)[:1], *warnings, *statements(inp)[1:]]
        ),
        TextLine(f"Heat map: {shown} ({method.split(',')[0]})"),
        *(TextLine(finding_line(f)) for f in top),
        TextLine(algorithm_line(inp)),
    ]


def check_saliency(saliency: Saliency) -> None:
    """Refuse a saliency that cannot be drawn.

    Raises
    ------
    ReportError
        ``image`` not 2-D uint8, ``heat`` of another shape, or heat not finite.
    """
    image, heat = np.asarray(saliency.image), np.asarray(saliency.heat)
    if image.ndim != 2 or image.dtype != np.uint8 or min(image.shape) < 1:
        raise ReportError(f"saliency image must be 2-D uint8, got {image.dtype} {image.shape}")
    if heat.shape != image.shape:
        raise ReportError(f"saliency heat {heat.shape} differs from the image {image.shape}")
    if not np.isfinite(heat).all():
        raise ReportError("saliency heat map is not finite")


def series_description(inp: ReportInput, what: str) -> str:
    """``"AI key image <model id>"`` (+ ``" UNTRAINED"``), at most 64 characters."""
    suffix = " UNTRAINED" if inp.is_demo else ""
    return f"AI {what} {inp.manifest.id}"[: 64 - len(suffix)] + suffix


def build_secondary_capture(
    inp: ReportInput, top: list[Finding], source: Dataset, saliency: Saliency
) -> Dataset:
    """The key image: an RGB Secondary Capture of the heat map over the source.

    Parameters
    ----------
    inp : ReportInput
        The analysis.
    top : list of Finding
        The findings to list; ``top[0]``'s heat map is shown.
    source : Dataset
        Header of the image shown.
    saliency : Saliency
        ``image`` ``(H, W) uint8``, ``heat`` ``(H, W) float32`` in [0, 1], ``method``.

    Returns
    -------
    pydicom.Dataset
        Secondary Capture Image Storage, RGB, 8 bits, Explicit VR Little Endian.

    Raises
    ------
    ReportError
        A saliency that does not fit (:func:`check_saliency`), or highdicom fails.
    """
    check_saliency(saliency)
    series_uid, sop_uid = report_uids(inp, PROFILE, SC_ORDINAL)
    with BuildSteps(f"{PROFILE} SC", inp.study_uid, "pixels") as steps:
        pixels = compose(saliency.image, saliency.heat, text_lines(inp, top, saliency.method))
        steps.stage = "secondary capture"
        sc = hd.sc.SCImage(
            pixel_array=pixels,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            study_instance_uid=inp.study_uid,
            series_instance_uid=series_uid,
            series_number=series_number(PROFILE, SC_ORDINAL),
            sop_instance_uid=sop_uid,
            instance_number=inp.generation,
            manufacturer=MANUFACTURER,
            patient_orientation=PLACEHOLDER_ORIENTATION,
            transfer_syntax_uid=ExplicitVRLittleEndian,
        )
        steps.stage = "attributes"
        _describe(sc, inp, source, saliency)
        steps.stage = "patient and study"
        copy_patient_and_study(sc, source)
        sc.StudyInstanceUID = inp.study_uid
    return sc


def laterality_of(source: Dataset, body_part: str) -> str | None:
    """Laterality (0020,0060) of the key image's series, Type 2C (PS3.3 C.7.3.1).

    Returns
    -------
    str or None
        The source's ``R`` or ``L``; else ``""`` (unknown) when the body part is
        not known or is a paired one (:data:`PAIRED_BODY_PARTS`); else None (an
        unpaired body part such as CHEST or HEAD: the attribute is left out, as
        dciodvfy requires).
    """
    laterality = text_value(source, "Laterality")
    if laterality in ("R", "L"):
        return laterality
    if not body_part or body_part in PAIRED_BODY_PARTS:
        return ""
    return None


def _describe(sc: Dataset, inp: ReportInput, source: Dataset, saliency: Saliency) -> None:
    """Series, image and derivation attributes of the SC (see the module docstring)."""
    sc.SeriesDescription = series_description(inp, "key image")
    orientation = text_value(source, "PatientOrientation") if "PatientOrientation" in source else ""
    values = source.get("PatientOrientation") if orientation else None
    parts = [str(v) for v in values] if values is not None and not isinstance(values, str) else []
    valid = len(parts) == 2 and all(_ORIENTATION.fullmatch(p) for p in parts)
    sc.PatientOrientation = parts if valid else ""  # Type 2C: empty when not known
    body_part = text_value(source, "BodyPartExamined")
    if _CS.fullmatch(body_part):
        sc.BodyPartExamined = body_part
    laterality = laterality_of(source, body_part if _CS.fullmatch(body_part) else "")
    if laterality is not None:
        sc.Laterality = laterality
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = "NO"
    lossy = text_value(source, "LossyImageCompression")
    sc.LossyImageCompression = "01" if lossy == "01" else "00"
    sc.ContentDate, sc.ContentTime = sc.DateOfSecondaryCapture, sc.TimeOfSecondaryCapture
    reference = Dataset()
    reference.ReferencedSOPClassUID = uid_of(source, "SOPClassUID")
    reference.ReferencedSOPInstanceUID = uid_of(source, "SOPInstanceUID")
    sc.SourceImageSequence = [reference]
    derivation = f"AI saliency overlay, not a diagnosis: {saliency.method}"
    sc.DerivationDescription = derivation[:1024]
