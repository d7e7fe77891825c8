"""The parts every report object shares, for the profiles built without highdicom.

:func:`new_document` starts an instance with the modules every IOD we write has:
SOP Common (PS3.3 C.12.1), Patient and General Study copied from the source
(:func:`workers.outputs.headers.copy_patient_and_study`), General Series
(C.7.3.1) and General Equipment (C.7.5.1), with deterministic UIDs
(:func:`workers.outputs.findings.report_uids`). :func:`evidence_sequence` and
:func:`predecessor_sequence` write the Hierarchical SOP Instance Reference Macro
(PS3.3 C.17.2.1, Table C.17-3) for the SR Document General module's Current
Requested Procedure Evidence and Predecessor Documents sequences.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from dicom_node.core.contract import MANUFACTURER
from dicom_node.core.errors import ReportError
from dicom_node.core.ledger import PriorReport
from workers.outputs.findings import ReportInput, report_uids, series_number
from workers.outputs.headers import (
    copy_patient_and_study,
    first_of_study,
    uid_of,
    unique_headers,
)


def new_document(
    inp: ReportInput,
    profile: str,
    ordinal: int,
    *,
    sop_class_uid: str,
    modality: str,
    series_description: str,
) -> Dataset:
    """A new report instance with file meta and the modules every report IOD has.

    Parameters
    ----------
    inp : ReportInput
        The analysis (study, generation, evidence, model).
    profile : str
        Output profile name (part of the UIDs and the Series Number).
    ordinal : int
        The object within the profile.
    sop_class_uid : str
        SOP Class of the new object.
    modality : str
        ``SR``, ``DOC``, ``KO``, ``OT``.
    series_description : str
        At most 64 characters (LO); longer is cut.

    Returns
    -------
    pydicom.Dataset
        File meta (Explicit VR Little Endian), SOP Class/Instance UID, Specific
        Character Set, patient and study copied from the first evidence image of
        the study, Modality, Series Instance UID/Number/Description, Manufacturer,
        Instance Number (the generation), Instance Creation and Content Date/Time
        (now, local time).

    Raises
    ------
    ReportError
        If no evidence image belongs to the study or a header lacks a UID.
    """
    evidence = unique_headers(inp.evidence)
    if not evidence:
        raise ReportError(f"{profile}: no evidence image")
    source = first_of_study(evidence, inp.study_uid)
    series_uid, sop_uid = report_uids(inp, profile, ordinal)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid
    copy_patient_and_study(ds, source)
    ds.StudyInstanceUID = inp.study_uid
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number(profile, ordinal)
    ds.SeriesDescription = series_description[:64]
    ds.Manufacturer = MANUFACTURER
    ds.InstanceNumber = inp.generation
    now = dt.datetime.now()
    ds.InstanceCreationDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = ds.ContentTime = now.strftime("%H%M%S")
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        if keyword not in ds:  # Type 2 of the Patient module
            setattr(ds, keyword, "")
    for keyword in ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID"):
        if keyword not in ds:  # Type 2 of the General Study module
            setattr(ds, keyword, "")
    if "AccessionNumber" not in ds:
        ds.AccessionNumber = ""
    return ds


def evidence_sequence(headers: Sequence[Dataset]) -> list[Dataset]:
    """Hierarchical SOP Instance Reference items (study → series → SOP) for ``headers``.

    Parameters
    ----------
    headers : sequence of Dataset
        Source headers; each needs SOP Class, SOP Instance, Study and Series
        Instance UIDs. Repeats are listed once.

    Returns
    -------
    list of Dataset
        One item per study (Study Instance UID, Referenced Series Sequence: Series
        Instance UID, Referenced SOP Sequence: Referenced SOP Class/Instance UID),
        in first-seen order. PS3.3 Table C.17-3.

    Raises
    ------
    ReportError
        If a header lacks one of the UIDs.
    """
    studies: dict[str, dict[str, list[Dataset]]] = {}
    for ds in unique_headers(headers):
        series = studies.setdefault(uid_of(ds, "StudyInstanceUID"), {})
        item = Dataset()
        item.ReferencedSOPClassUID = uid_of(ds, "SOPClassUID")
        item.ReferencedSOPInstanceUID = uid_of(ds, "SOPInstanceUID")
        series.setdefault(uid_of(ds, "SeriesInstanceUID"), []).append(item)
    return [_study_item(study, series) for study, series in studies.items()]


def predecessor_sequence(prior: PriorReport) -> list[Dataset]:
    """Predecessor Documents Sequence (0040,A360) items for the report ``prior``.

    Returns
    -------
    list of Dataset
        One Hierarchical SOP Instance Reference item. PS3.3 C.17.2.1.
    """
    item = Dataset()
    item.ReferencedSOPClassUID = prior.sop_class_uid
    item.ReferencedSOPInstanceUID = prior.sop_instance_uid
    return [_study_item(prior.study_uid, {prior.series_instance_uid: [item]})]


def _study_item(study_uid: str, series: dict[str, list[Dataset]]) -> Dataset:
    study = Dataset()
    study.StudyInstanceUID = study_uid
    series_items = []
    for series_uid, sops in series.items():
        entry = Dataset()
        entry.SeriesInstanceUID = series_uid
        entry.ReferencedSOPSequence = sops
        series_items.append(entry)
    study.ReferencedSeriesSequence = series_items
    return study
