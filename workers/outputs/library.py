"""TID 1600 Image Library: one entry per source image, tolerant of incomplete headers.

highdicom's ``ImageLibrary`` needs every descriptor of the modality (for CR it
reads Imager Pixel Spacing, which many CR images lack) and raises otherwise.
This builder writes each descriptor of TID 1602/1603/1604 only when the header
has a valid value for it, so a source without pixel spacing, orientation,
position or frame of reference still gets its library entry.

Layout::

    CONTAINER Image Library (DCM 111028)
      CONTAINER Image Library Group (DCM 126200), one per (modality, frame of reference)
        UIDREF Frame of Reference UID (when the group has one)
        IMAGE Source (SCT 260753009), one per image, first-seen order
          descriptors: Modality, Frame of Reference UID, Pixel Data Rows/Columns,
          then projection (CR, DX, ...) or cross-sectional (CT, MR, PT) descriptors
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import UID

from workers.outputs.headers import text_value, uid_of

SOURCE = hd.sr.CodedConcept("260753009", "SCT", "Source")
PIXELS = hd.sr.CodedConcept("{pixels}", "UCUM", "Pixels")
DIRECTION = hd.sr.CodedConcept("{-1:1}", "UCUM", "{-1:1}")
MM = codes.UCUM.Millimeter
ACQ = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS
PROJECTION = {"CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA"}
CROSS_SECTIONAL = {"CT", "MR", "PT"}
POSITION = (
    codes.DCM.ImagePositionPatientX,
    codes.DCM.ImagePositionPatientY,
    codes.DCM.ImagePositionPatientZ,
)
ORIENTATION = (
    codes.DCM.ImageOrientationPatientRowX,
    codes.DCM.ImageOrientationPatientRowY,
    codes.DCM.ImageOrientationPatientRowZ,
    codes.DCM.ImageOrientationPatientColumnX,
    codes.DCM.ImageOrientationPatientColumnY,
    codes.DCM.ImageOrientationPatientColumnZ,
)


def image_library(images: Sequence[Dataset]) -> hd.sr.ContainerContentItem:
    """Build the Image Library container for the given source images.

    Parameters
    ----------
    images : sequence of Dataset
        Headers of the images, one per SOP Instance (duplicates are the caller's to drop).

    Returns
    -------
    highdicom.sr.ContainerContentItem
        The "Image Library" container, relationship CONTAINS, for the TID 1500 root.

    Raises
    ------
    ReportError
        If an image lacks its SOP Class or SOP Instance UID.
    ValueError
        If highdicom refuses a UID (invalid characters or length).
    """
    groups: dict[tuple[str, str], list[hd.sr.ImageContentItem]] = {}
    for ds in images:
        item = hd.sr.ImageContentItem(
            name=SOURCE,
            referenced_sop_class_uid=uid_of(ds, "SOPClassUID"),
            referenced_sop_instance_uid=uid_of(ds, "SOPInstanceUID"),
            relationship_type=CONTAINS,
        )
        item.ContentSequence = hd.sr.ContentSequence(descriptors(ds))
        key = (text_value(ds, "Modality"), _frame_of_reference(ds) or "")
        groups.setdefault(key, []).append(item)
    library = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibrary, relationship_type=CONTAINS)
    library.ContentSequence = hd.sr.ContentSequence()
    for (_, frame_of_reference), items in groups.items():
        group = hd.sr.ContainerContentItem(
            name=codes.DCM.ImageLibraryGroup, relationship_type=CONTAINS
        )
        group.ContentSequence = hd.sr.ContentSequence()
        if frame_of_reference:
            group.ContentSequence.append(_uid(frame_of_reference))
        group.ContentSequence.extend(items)
        library.ContentSequence.append(group)
    return library


def descriptors(ds: Dataset) -> list[hd.sr.ContentItem]:
    """TID 1602 entry descriptors of one image; each only when its value is valid.

    Returns
    -------
    list of highdicom.sr.ContentItem
        Relationship HAS ACQ CONTEXT; lengths in mm, rows and columns in pixels,
        direction cosines in {-1:1}.
    """
    items: list[hd.sr.ContentItem] = []
    modality = text_value(ds, "Modality").upper()
    coded = coded_modality(modality)
    if coded is not None:
        items.append(hd.sr.CodeContentItem(codes.DCM.Modality, coded, relationship_type=ACQ))
    frame_of_reference = _frame_of_reference(ds)
    if frame_of_reference:
        items.append(_uid(frame_of_reference))
    for name, keyword in (
        (codes.DCM.PixelDataRows, "Rows"),
        (codes.DCM.PixelDataColumns, "Columns"),
    ):
        size = _numbers(ds, keyword, 1, lambda v: v > 0)
        if size:
            items.append(_num(name, int(size[0]), PIXELS))
    if modality in PROJECTION:
        items.extend(_projection(ds))
    elif modality in CROSS_SECTIONAL:
        items.extend(_cross_sectional(ds))
    return items


@lru_cache(maxsize=64)
def coded_modality(modality: str) -> Code | None:
    """CID 29 "Acquisition Modality" code of a Modality (0008,0060) value, or None."""
    collection = codes.cid29
    for keyword in collection.dir():
        code = getattr(collection, keyword)
        if code.value == modality:
            return code
    return None


def _projection(ds: Dataset) -> list[hd.sr.ContentItem]:
    """TID 1603: patient orientation and pixel spacing at the detector (mm)."""
    items: list[hd.sr.ContentItem] = []
    try:
        orientation = [str(v).strip() for v in ds.get("PatientOrientation") or []]
    except Exception:
        orientation = []
    if len(orientation) == 2 and all(orientation):
        row, column = orientation
        items.append(hd.sr.TextContentItem(codes.DCM.PatientOrientationRow, row, ACQ))
        items.append(hd.sr.TextContentItem(codes.DCM.PatientOrientationColumn, column, ACQ))
    spacing = _numbers(ds, "ImagerPixelSpacing", 2, lambda v: v > 0) or _numbers(
        ds, "PixelSpacing", 2, lambda v: v > 0
    )
    items.extend(_spacing(spacing))
    return items


def _cross_sectional(ds: Dataset) -> list[hd.sr.ContentItem]:
    """TID 1604: pixel spacing, slice thickness, position and orientation (mm, cosines)."""
    items = _spacing(_numbers(ds, "PixelSpacing", 2, lambda v: v > 0))
    thickness = _numbers(ds, "SliceThickness", 1, lambda v: v >= 0)
    if thickness:
        items.append(_num(codes.DCM.SliceThickness, thickness[0], MM))
    position = _numbers(ds, "ImagePositionPatient", 3, lambda v: True)
    for name, value in zip(POSITION, position, strict=False):
        items.append(_num(name, value, MM))
    orientation = _numbers(ds, "ImageOrientationPatient", 6, lambda v: -1 <= v <= 1)
    for name, value in zip(ORIENTATION, orientation, strict=False):
        items.append(_num(name, value, DIRECTION))
    between = _numbers(ds, "SpacingBetweenSlices", 1, lambda v: True)
    if between:
        items.append(_num(codes.DCM.SpacingBetweenSlices, between[0], MM))
    return items


def _spacing(spacing: list[float]) -> list[hd.sr.ContentItem]:
    if not spacing:
        return []
    row, column = spacing  # PS3.3: (row spacing = vertical, column spacing = horizontal)
    return [
        _num(codes.DCM.HorizontalPixelSpacing, column, MM),
        _num(codes.DCM.VerticalPixelSpacing, row, MM),
    ]


def _uid(frame_of_reference: str) -> hd.sr.UIDRefContentItem:
    return hd.sr.UIDRefContentItem(codes.DCM.FrameOfReferenceUID, frame_of_reference, ACQ)


def _num(name: Code, value: float, unit: Code | hd.sr.CodedConcept) -> hd.sr.NumContentItem:
    return hd.sr.NumContentItem(name=name, value=value, unit=unit, relationship_type=ACQ)


def _numbers(ds: Dataset, keyword: str, count: int, valid: Callable[[float], bool]) -> list[float]:
    """``count`` finite numbers of an attribute that pass ``valid``; [] otherwise."""
    try:
        raw = ds.get(keyword)
        if raw is None or (count > 1 and isinstance(raw, str | bytes)):
            return []
        values = [float(v) for v in (raw if count > 1 else [raw])]
    except Exception:
        return []
    if len(values) != count or not all(math.isfinite(v) and valid(v) for v in values):
        return []
    return values


def _frame_of_reference(ds: Dataset) -> str | None:
    value = text_value(ds, "FrameOfReferenceUID")
    return value if value and UID(value).is_valid else None
