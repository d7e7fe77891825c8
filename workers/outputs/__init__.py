"""Report writers ("output profiles"): one analysis in, one DICOM object out.

Profiles are looked up by name in :data:`PROFILES`, an immutable map from profile
name to the builder's import path; the builder module (and highdicom, captum,
reportlab) is imported on first use, so importing this package builds and loads
nothing. Every builder takes a :class:`workers.outputs.findings.ReportInput` and
returns a list of ``pydicom.Dataset``, in sending order (a position in that list
is the object's *ordinal*). Each destination names the profiles it takes
(:class:`dicom_node.core.destinations.Destination`).

- ``tid1500``: :func:`workers.outputs.tid1500.build_tid1500`, a Comprehensive 3D SR
  with a TID 1500 Measurement Report (IHE AI Results; OHIF renders it).
- ``text_sr``: :func:`workers.outputs.text_sr.build_text_sr`, a Basic Text SR for
  PACS that render only text.
- ``key_image``: :func:`workers.outputs.key_image.build_key_image`, a Secondary
  Capture with the saliency map and findings burned in, then a Key Object
  Selection document pointing to it.
- ``pdf``: :func:`workers.outputs.pdf.build_pdf`, an Encapsulated PDF (Modality DOC)
  one-page summary.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import MappingProxyType
from typing import TYPE_CHECKING, cast

from dicom_node.core.errors import ReportError
from workers.outputs.findings import ModelLike, OutcomeLike, ReportInput, report_input
from workers.outputs.warmup import warm_up_sr

if TYPE_CHECKING:
    from pydicom import Dataset

__all__ = [
    "EXPLAINED_PROFILES",
    "PROFILES",
    "ReportInput",
    "build",
    "build_report",
    "builder",
    "warm_up_sr",
]

Builder = Callable[[ReportInput], "list[Dataset]"]

PROFILES = MappingProxyType(
    {
        "tid1500": "workers.outputs.tid1500:build_tid1500",
        "text_sr": "workers.outputs.text_sr:build_text_sr",
        "key_image": "workers.outputs.key_image:build_key_image",
        "pdf": "workers.outputs.pdf:build_pdf",
    }
)
EXPLAINED_PROFILES = frozenset({"key_image"})
"""Profiles that need :attr:`ReportInput.explainer` (saliency maps)."""


def builder(profile: str) -> Builder:
    """Return the builder of an output profile.

    Raises
    ------
    ReportError
        If no profile has that name.
    """
    try:
        module, _, function = PROFILES[profile].partition(":")
    except KeyError:
        raise ReportError(
            f"unknown report profile {profile!r}; known: {sorted(PROFILES)}"
        ) from None
    return cast(Builder, getattr(importlib.import_module(module), function))


def build(profile: str, inp: ReportInput) -> list[Dataset]:
    """Build the report objects of one analysis with the named profile.

    Returns
    -------
    list of pydicom.Dataset
        In sending order (ordinal 0, 1, ...).

    Raises
    ------
    ReportError
        If the profile is unknown or its builder fails.
    """
    return builder(profile)(inp)


def build_report(
    profile: str, outcome: OutcomeLike, model: ModelLike, study_uid: str, generation: int
) -> list[Dataset]:
    """Build one profile's report of an analysis outcome (what the ``analyze`` task calls).

    Parameters
    ----------
    profile : str
        Output profile name, a key of :data:`PROFILES`.
    outcome : OutcomeLike
        ``workers.pipeline.run.Outcome``: aggregates and the images used.
    model : ModelLike
        ``models.backends.LoadedModel``: manifest, weights, backend.
    study_uid : str
        Study Instance UID.
    generation : int
        Ledger generation of the study.

    Returns
    -------
    list of pydicom.Dataset
        The report objects, in sending order.

    Raises
    ------
    ReportError
        If the profile is unknown, the outcome does not fit the manifest, or the
        builder fails.
    """
    return build(profile, report_input(outcome, model, study_uid, generation))
