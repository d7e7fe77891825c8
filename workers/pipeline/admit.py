"""Admission: which images of an analysis can be analysed and reported, and why not the others.

One bad image never fails a study: every image that cannot be used is
*skipped* with a specific reason (a :class:`~dicom_node.core.ledger.SkippedImage`),
and the analysis goes on with the rest. This module holds the checks made on
the header before any pixel is decoded, the ones the report needs to hold for
every image it references (PS3.3 C.17.2, the SR Document General module's
evidence, and highdicom's source image checks):

- SOP Class, SOP Instance, Study and Series Instance UID present, single and
  valid UIDs (PS3.5 9.1);
- the image belongs to the analysed study;
- its SOP Instance UID is not already in the analysis (a second copy is skipped);
- its Modality is not one of a non-image object (SR, SEG, KO, PR, ...).

Decoding problems are found by :mod:`models.preprocessing.decode`, blank
images by :class:`models.preprocessing.Preprocessor`. Reasons name keywords,
never values.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from dicom_node.core.ledger import SkippedImage
from dicom_node.core.redact import shown_value
from models.preprocessing.attributes import is_uid
from workers.pipeline.order import Image, uid_text

IDENTIFYING_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
"""UIDs every referenced image needs (SR evidence and Image Library entries)."""

NON_IMAGE_MODALITIES = frozenset(
    {"SEG", "SR", "DOC", "KO", "PR", "PLAN", "RWV", "REG", "FID", "RTDOSE", "RTPLAN",
     "RTRECORD", "RTSTRUCT"}
)  # fmt: skip
"""Modality values (PS3.3 C.7.3.1.1.1) of objects that are not images; highdicom refuses
them as source images of a measurement."""


def skipped_file(line: str) -> SkippedImage:
    """A :func:`models.routing.read_headers` skip line (``"<path>: why"``) as a skipped image.

    The spool names each file by its SOP Instance UID, so the file stem stands in
    for the UID of a file whose header could not be read.
    """
    path, _, why = line.partition(": ")
    return SkippedImage(Path(path).stem, why or "unreadable")


def header_problem(image: Image, study_uid: str | None) -> str | None:
    """Why an image's header keeps it out of the analysis, or None when it may go on.

    Parameters
    ----------
    image : Image
        Path and header.
    study_uid : str or None
        The analysed study; None accepts any (one-off runs on files).

    Returns
    -------
    str or None
        ``"StudyInstanceUID (0020,000D) is missing or not a valid UID"``,
        ``"image belongs to another study (StudyInstanceUID)"`` or
        ``"Modality SR is not an image modality"``.
    """
    for keyword in IDENTIFYING_UIDS:
        if not is_uid(uid_text(image.header, keyword)):
            return f"{keyword} is missing or not a valid UID"
    if study_uid is not None and uid_text(image.header, "StudyInstanceUID") != study_uid:
        return "image belongs to another study (StudyInstanceUID)"
    modality = _modality(image)
    if modality in NON_IMAGE_MODALITIES:
        return f"Modality {modality} is not an image modality"
    return None


def _modality(image: Image) -> str:
    try:
        value = image.header.get("Modality")
    except Exception:  # an undecodable element: the report writes OT for it
        return ""
    shown = shown_value(value) if isinstance(value, str) else None
    return shown.upper() if shown else ""


def admit(images: Iterable[Image], study_uid: str | None) -> tuple[list[Image], list[SkippedImage]]:
    """Split images into those that may be analysed and those skipped, with reasons.

    Returns
    -------
    (list of Image, list of SkippedImage)
        Admitted images in input order; one skipped entry per other image
        (a second file with an admitted image's SOP Instance UID included).
    """
    admitted: list[Image] = []
    skipped: list[SkippedImage] = []
    seen: set[str] = set()
    for image in images:
        problem = header_problem(image, study_uid)
        if problem is None and image.sop_instance_uid in seen:
            problem = "another file of this analysis has the same SOPInstanceUID"
        if problem is not None:
            skipped.append(SkippedImage(image.sop_instance_uid, problem))
            continue
        seen.add(image.sop_instance_uid)
        admitted.append(image)
    return admitted, skipped
