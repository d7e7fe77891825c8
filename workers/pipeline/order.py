"""Order images: group by series and sort slices along the patient axis.

Source: PS3.3 C.7.6.2.1.1. The position of a slice along the normal of its
Image Orientation (Patient) is ``dot(cross(row, col), ImagePositionPatient)``;
sorting by it orders a CT series from one end of the head to the other,
whatever order the modality sent the slices in. Without a usable orientation
or position, Instance Number decides, then arrival order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset

from models.preprocessing.attributes import is_uid


@dataclass(frozen=True)
class Image:
    """One instance of an analysis: where it is and its header (no pixel data).

    Attributes
    ----------
    path : Path
        Spool file.
    header : Dataset
        Attributes read with ``stop_before_pixels=True``.
    """

    path: Path
    header: Dataset

    @property
    def sop_instance_uid(self) -> str:
        """SOP Instance UID, or the file stem (the spool names files by it) when unusable."""
        value = uid_text(self.header, "SOPInstanceUID")
        return value if is_uid(value) else self.path.stem

    @property
    def series_uid(self) -> str:
        """Series Instance UID, or ``""`` when it is missing or unreadable."""
        return uid_text(self.header, "SeriesInstanceUID")


def uid_text(header: Dataset, keyword: str) -> str:
    """A UID attribute as stripped text; ``""`` when missing, multi-valued or unreadable."""
    try:
        value = header.get(keyword)
    except Exception:  # an undecodable element
        return ""
    return value.strip(" \x00") if isinstance(value, str) else ""


def patient_axis_position(header: Dataset) -> float | None:
    """Position of a slice along its normal, millimetres, or None if it cannot be computed.

    Parameters
    ----------
    header : Dataset
        Needs Image Orientation (Patient) (6 values) and Image Position (Patient) (3 values).
    """
    try:
        orientation = np.asarray([float(v) for v in header.ImageOrientationPatient], np.float64)
        position = np.asarray([float(v) for v in header.ImagePositionPatient], np.float64)
    except Exception:  # missing, not numbers, or undecodable
        return None
    if orientation.shape != (6,) or position.shape != (3,):
        return None
    if not (np.isfinite(orientation).all() and np.isfinite(position).all()):
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    if np.linalg.norm(normal) < 1e-6:
        return None
    return float(np.dot(normal, position))


def _instance_number(header: Dataset) -> float:
    try:
        number = float(header.get("InstanceNumber", "nan"))
    except Exception:  # multi-valued, not a number, or undecodable
        return float("nan")
    return number if np.isfinite(number) else float("nan")


def sort_slices(images: Sequence[Image]) -> list[Image]:
    """Sort one series' images along the patient axis (see module docstring).

    Returns
    -------
    list of Image
        Sorted by position when every image has one, else by Instance Number
        when every image has one, else in the given order.
    """
    positions = [patient_axis_position(i.header) for i in images]
    if all(p is not None for p in positions):
        order = np.argsort(np.asarray(positions, np.float64), kind="stable")
        return [images[int(i)] for i in order]
    numbers = [_instance_number(i.header) for i in images]
    if not any(np.isnan(numbers)):
        order = np.argsort(np.asarray(numbers), kind="stable")
        return [images[int(i)] for i in order]
    return list(images)


def group_by_series(images: Sequence[Image], sort: bool) -> dict[str, list[Image]]:
    """Group images by Series Instance UID, in order of first appearance.

    Parameters
    ----------
    images : sequence of Image
        The analysis's images.
    sort : bool
        Sort each series along the patient axis (:func:`sort_slices`).
    """
    groups: dict[str, list[Image]] = {}
    for image in images:
        groups.setdefault(image.series_uid, []).append(image)
    return {uid: sort_slices(group) if sort else group for uid, group in groups.items()}
