"""Aggregate per-image probabilities into findings, as the manifest declares.

``aggregation.scope`` decides what one finding covers: each ``image``, each
``series`` (for example a CT series, over its slices) or the whole ``study``.
``aggregation.reduce`` combines the images of that unit: ``max`` keeps the
highest probability and references the image that gave it (the slice that
drove the finding); ``mean`` averages them and references all of them
(MURA's study-level mean, Rajpurkar et al. 2017, arXiv:1712.06957).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from workers.pipeline.order import Image


@dataclass(frozen=True)
class Aggregate:
    """One finding unit's probabilities and the images behind each.

    Attributes
    ----------
    scope_key : str or None
        Series Instance UID (series scope), SOP Instance UID (image scope), None (study).
    probabilities : ndarray
        ``(L,) float32``, one per manifest label, in [0, 1].
    sources : list of list of Image
        Per label, the images that gave its probability (one for ``max``).
    images : list of Image
        Every image of the unit.
    """

    scope_key: str | None
    probabilities: npt.NDArray[np.float32]
    sources: list[list[Image]]
    images: list[Image]


def _units(
    scope: str, images: Sequence[Image], series: dict[str, list[Image]]
) -> list[tuple[str | None, list[Image]]]:
    if scope == "image":
        return [(image.sop_instance_uid, [image]) for image in images]
    if scope == "series":
        return [(uid, group) for uid, group in series.items()]
    return [(None, list(images))]


def aggregate(
    scope: str,
    reduce: str,
    images: Sequence[Image],
    probabilities: npt.NDArray[np.float32],
    series: dict[str, list[Image]] | None = None,
) -> list[Aggregate]:
    """Combine per-image probabilities into one :class:`Aggregate` per unit.

    Parameters
    ----------
    scope : {"image", "series", "study"}
        What one finding covers.
    reduce : {"max", "mean"}
        How the images of a unit are combined.
    images : sequence of Image
        The images that were inferred, in the order of ``probabilities``.
    probabilities : ndarray
        ``(N, L) float32``, row ``i`` for ``images[i]``.
    series : dict, optional
        Series UID to its (ordered) images; default: grouped in given order.

    Returns
    -------
    list of Aggregate
        In unit order.

    Raises
    ------
    ValueError
        If ``scope`` or ``reduce`` is unknown, or the shapes disagree.
    """
    if probabilities.ndim != 2 or probabilities.shape[0] != len(images):
        raise ValueError(f"{len(images)} images but probabilities of shape {probabilities.shape}")
    if scope not in ("image", "series", "study") or reduce not in ("max", "mean"):
        raise ValueError(f"unknown aggregation {scope}/{reduce}")
    row_of = {id(image): row for row, image in enumerate(images)}
    if series is None:
        series = {}
        for image in images:
            series.setdefault(image.series_uid, []).append(image)
    out = []
    for key, unit in _units(scope, images, series):
        rows = probabilities[[row_of[id(i)] for i in unit]]
        if reduce == "max":
            best = rows.argmax(axis=0)
            values = rows.max(axis=0)
            sources = [[unit[int(b)]] for b in best]
        else:
            values = rows.mean(axis=0)
            sources = [list(unit) for _ in range(rows.shape[1])]
        out.append(Aggregate(key, values.astype(np.float32), sources, list(unit)))
    return out
