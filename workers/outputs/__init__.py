"""Report writers ("output profiles"): one analysis in, one DICOM object out.

Profiles are looked up by name in :data:`PROFILES`, an immutable map from profile
name to the builder's import path; the builder module (and highdicom) is imported
on first use, so importing this package builds and loads nothing. Every builder
takes a :class:`workers.outputs.findings.ReportInput` and returns a
``pydicom.Dataset``; new profiles (text SR, key object selection) are added here.

- ``tid1500``: :func:`workers.outputs.tid1500.build_tid1500`, a Comprehensive 3D SR
  with a TID 1500 Measurement Report.
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

__all__ = ["PROFILES", "ReportInput", "build", "build_report", "builder", "warm_up_sr"]

Builder = Callable[[ReportInput], "Dataset"]

PROFILES = MappingProxyType({"tid1500": "workers.outputs.tid1500:build_tid1500"})


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


def build(profile: str, inp: ReportInput) -> Dataset:
    """Build the report of one analysis with the named profile.

    Raises
    ------
    ReportError
        If the profile is unknown or its builder fails.
    """
    return builder(profile)(inp)


def build_report(
    profile: str, outcome: OutcomeLike, model: ModelLike, study_uid: str, generation: int
) -> Dataset:
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
    pydicom.Dataset
        The report instance.

    Raises
    ------
    ReportError
        If the profile is unknown, the outcome does not fit the manifest, or the
        builder fails.
    """
    return build(profile, report_input(outcome, model, study_uid, generation))
