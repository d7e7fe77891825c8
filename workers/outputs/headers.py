"""Source headers for a report: PHI-free stand-ins for highdicom, patient/study copy, safe errors.

highdicom parses the patient and study attributes of the first evidence instance
(dates, sex, names) and raises, warns or logs, quoting the value, when one is
invalid. So the SR is built from a *stand-in* header that carries only the
source's UIDs, and the Patient, Clinical Trial Subject, General Study, Patient
Study and Clinical Trial Study module attributes are copied afterwards, verbatim,
from the real header (:func:`copy_patient_and_study`): an invalid value in a
source stays as the source had it and does not stop the report.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from copy import deepcopy

from pydicom import Dataset
from pydicom.charset import python_encoding
from pydicom.datadict import keyword_dict, tag_for_keyword

from dicom_node.core.errors import ReportError

# Root-level attributes of the Patient (C.7.1.1), Clinical Trial Subject (C.7.1.3),
# General Study (C.7.2.1), Patient Study (C.7.2.2) and Clinical Trial Study (C.7.2.3)
# modules, plus the retired Other Patient IDs that sources still carry.
PATIENT_AND_STUDY: tuple[str, ...] = (
    # Patient
    "PatientName", "PatientID", "IssuerOfPatientID", "TypeOfPatientID",
    "IssuerOfPatientIDQualifiersSequence", "SourcePatientGroupIdentificationSequence",
    "GroupOfPatientsIdentificationSequence", "PatientBirthDate", "PatientBirthTime",
    "PatientBirthDateInAlternativeCalendar", "PatientDeathDateInAlternativeCalendar",
    "PatientAlternativeCalendar", "PatientSex", "QualityControlSubject", "StrainDescription",
    "StrainNomenclature", "StrainStockSequence", "StrainAdditionalInformation",
    "StrainCodeSequence", "GeneticModificationsSequence", "OtherPatientNames",
    "OtherPatientIDs", "OtherPatientIDsSequence", "ReferencedPatientPhotoSequence",
    "EthnicGroupCodeSequence", "PatientSpeciesDescription", "PatientSpeciesCodeSequence",
    "PatientBreedDescription", "PatientBreedCodeSequence", "BreedRegistrationSequence",
    "ResponsiblePerson", "ResponsiblePersonRole", "ResponsibleOrganization", "PatientComments",
    "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    "ReferencedPatientSequence",
    # Clinical Trial Subject
    "ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialProtocolName",
    "IssuerOfClinicalTrialProtocolID", "OtherClinicalTrialProtocolIDsSequence",
    "ClinicalTrialSiteID", "ClinicalTrialSiteName", "IssuerOfClinicalTrialSiteID",
    "ClinicalTrialSubjectID", "IssuerOfClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID",
    "IssuerOfClinicalTrialSubjectReadingID", "ClinicalTrialProtocolEthicsCommitteeName",
    "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
    # General Study
    "StudyDate", "StudyTime", "AccessionNumber", "IssuerOfAccessionNumberSequence",
    "ReferringPhysicianName", "ReferringPhysicianIdentificationSequence",
    "ConsultingPhysicianName", "ConsultingPhysicianIdentificationSequence", "StudyDescription",
    "ProcedureCodeSequence", "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence",
    "NameOfPhysiciansReadingStudy", "PhysiciansReadingStudyIdentificationSequence",
    "ReferencedStudySequence", "StudyID", "RequestingService", "RequestingServiceCodeSequence",
    "ReasonForPerformedProcedureCodeSequence",
    # Patient Study
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "PatientAge",
    "PatientSize", "PatientSizeCodeSequence", "PatientBodyMassIndex", "MeasuredAPDimension",
    "MeasuredLateralDimension", "PatientWeight", "MedicalAlerts", "Allergies", "Occupation",
    "SmokingStatus", "AdditionalPatientHistory", "PregnancyStatus", "LastMenstrualDate",
    "PatientSexNeutered", "ReasonForVisit", "ReasonForVisitCodeSequence", "AdmissionID",
    "IssuerOfAdmissionIDSequence", "ServiceEpisodeID", "ServiceEpisodeDescription",
    "IssuerOfServiceEpisodeIDSequence", "PatientState",
    # Clinical Trial Study
    "ClinicalTrialTimePointID", "ClinicalTrialTimePointDescription",
    "LongitudinalTemporalOffsetFromEvent", "LongitudinalTemporalEventType",
    "ClinicalTrialTimePointTypeCodeSequence", "IssuerOfClinicalTrialTimePointID",
    "ConsentForClinicalTrialUseSequence",
)  # fmt: skip

# Type 2 attributes highdicom sets from the first evidence; the stand-in leaves them empty.
_EMPTY_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
)  # fmt: skip
_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
DEIDENTIFIED_UNSTATED = "Not stated by the source images"
UTF8 = "ISO_IR 192"


@contextmanager
def quiet() -> Iterator[None]:
    """Silence pydicom's and highdicom's warnings while a report is built.

    Both warn (pydicom also logs, on logger "pydicom") quoting the offending value,
    which may be a patient name, ID or birth date. Inside this context warnings are
    ignored and the "pydicom" logger passes ERROR and above only. Process-wide
    state: meant for single-threaded (prefork) workers.
    """
    log = logging.getLogger("pydicom")
    level = log.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        log.setLevel(logging.ERROR)
        try:
            yield
        finally:
            log.setLevel(level)


def uid_of(ds: Dataset, keyword: str) -> str:
    """Return a UID attribute of a header as ``str``.

    Raises
    ------
    ReportError
        If it is missing or empty (the message names the keyword only).
    """
    try:
        value = str(ds.get(keyword) or "").strip()
    except Exception as exc:  # a malformed element that pydicom cannot convert
        raise ReportError(f"source header: {safe_reason(exc, keyword)}") from exc
    if not value:
        raise ReportError(f"source header lacks {keyword}")
    return value


def unique_headers(headers: Iterable[Dataset]) -> list[Dataset]:
    """Headers in first-seen order, one per SOP Instance UID.

    Raises
    ------
    ReportError
        If a header lacks one of SOP Class, SOP Instance, Study or Series Instance UID.
    """
    seen: dict[str, Dataset] = {}
    for ds in headers:
        for keyword in _UIDS:
            uid_of(ds, keyword)
        seen.setdefault(uid_of(ds, "SOPInstanceUID"), ds)
    return list(seen.values())


def stand_in(ds: Dataset) -> Dataset:
    """A PHI-free copy of a header's identity for highdicom: UIDs, modality, empty Type 2.

    The image pixel description attributes highdicom looks for in a source image
    (Rows, Columns, Samples per Pixel, Pixel Representation) are copied when they
    are non-negative integers; a modality that is not a valid CS value becomes "OT".
    """
    proxy = Dataset()
    for keyword in _UIDS:
        setattr(proxy, keyword, uid_of(ds, keyword))
    modality = text_value(ds, "Modality")
    proxy.Modality = modality if re.fullmatch(r"[A-Z0-9_ ]{1,16}", modality) else "OT"
    for keyword in ("Rows", "Columns", "SamplesPerPixel", "PixelRepresentation"):
        value = int_value(ds, keyword)
        if value is not None and value >= 0:
            setattr(proxy, keyword, value)
    for keyword in _EMPTY_TYPE2:
        setattr(proxy, keyword, "")
    return proxy


def text_value(ds: Dataset, keyword: str) -> str:
    """A single-valued attribute as stripped text; "" when missing or unreadable."""
    try:
        value = ds.get(keyword)
    except Exception:
        return ""
    return "" if value is None else str(value).strip()


def int_value(ds: Dataset, keyword: str) -> int | None:
    """A single-valued integer attribute; None when missing or not an integer."""
    try:
        return int(ds.get(keyword))
    except Exception:
        return None


def copy_patient_and_study(report: Dataset, source: Dataset) -> None:
    """Copy the patient and study modules of ``source`` into ``report``, verbatim.

    Includes Other Patient IDs (retired, still common) and Other Patient IDs
    Sequence. Where the source says Patient Identity Removed "YES" without naming
    the method, De-identification Method (Type 1C) is filled with
    :data:`DEIDENTIFIED_UNSTATED`. The report's Specific Character Set becomes the
    source's when pydicom knows every term of it, UTF-8 (``ISO_IR 192``) otherwise.
    """
    for keyword in PATIENT_AND_STUDY:
        tag = tag_for_keyword(keyword)
        if tag is None or tag not in source:
            continue
        try:
            report[tag] = deepcopy(source[tag])
        except Exception:  # an element pydicom cannot even convert: keep highdicom's value
            continue
    if text_value(report, "PatientIdentityRemoved").upper() == "YES" and not (
        "DeidentificationMethod" in report or "DeidentificationMethodCodeSequence" in report
    ):
        report.DeidentificationMethod = DEIDENTIFIED_UNSTATED
    report.SpecificCharacterSet = character_set(source)


def character_set(source: Dataset) -> str | list[str]:
    """The source's Specific Character Set if pydicom can encode with it, else ``ISO_IR 192``."""
    try:
        value = source.get("SpecificCharacterSet")
    except Exception:
        return UTF8
    if not value:
        return UTF8
    terms = [value] if isinstance(value, str) else [str(v) for v in value]
    cleaned = [t.strip() for t in terms]
    known = all(t in python_encoding or (t == "" and i == 0) for i, t in enumerate(cleaned))
    if not known:
        return UTF8
    return cleaned[0] if len(cleaned) == 1 else cleaned


def safe_reason(exc: BaseException, keyword: str | None = None) -> str:
    """Describe an exception without quoting data: class name and DICOM keyword only.

    Parameters
    ----------
    exc : BaseException
        The error, typically from highdicom or pydicom, whose text may quote
        patient data (names, IDs, dates).
    keyword : str, optional
        The attribute known to be at fault; otherwise the first DICOM keyword
        found in the exception text (an enum name such as ``PatientSexValues``
        counts as its keyword) is named.

    Returns
    -------
    str
        ``"ValueError (PatientSex)"`` or just ``"ValueError"``.
    """
    name = type(exc).__name__
    keyword = keyword or _keyword_in(exc)
    return f"{name} ({keyword})" if keyword else name


def _keyword_in(exc: BaseException) -> str | None:
    candidates: list[str] = []
    attribute = getattr(exc, "name", None)
    if isinstance(attribute, str):
        candidates.append(attribute)
    candidates.extend(re.findall(r"[A-Z][A-Za-z0-9]+", str(exc)))
    for word in candidates:
        for candidate in (word, word.removesuffix("Values")):
            if candidate in keyword_dict:
                return candidate
    return None


def first_of_study(headers: Sequence[Dataset], study_uid: str) -> Dataset:
    """The first header of the given study (the one patient and study are copied from).

    Raises
    ------
    ReportError
        If no header belongs to the study.
    """
    for ds in headers:
        if uid_of(ds, "StudyInstanceUID") == study_uid:
            return ds
    raise ReportError(f"no evidence image belongs to study {study_uid}")
