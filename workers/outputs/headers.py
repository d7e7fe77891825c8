"""Source headers for a report: PHI-free stand-ins for highdicom, patient/study copy, safe errors.

highdicom parses the patient and study attributes of the first evidence instance
(dates, sex, names) and raises, warns or logs, quoting the value, when one is
invalid. So the SR is built from a *stand-in* header that carries only the
source's UIDs, and the Patient, Clinical Trial Subject, General Study, Patient
Study and Clinical Trial Study module attributes are copied afterwards from the
real header (:func:`copy_patient_and_study`).

Only valid values are copied (PS3.5 6.2 for the VR, the data dictionary's VM,
calendar dates and times, and the enumerated values of PS3.3 C.7.1.1 and
C.7.2.2). An invalid value never stops the report: a Type 2 attribute is left
empty (Patient's Name, ID, Birth Date and Sex, Study Date and Time, ...), any
other is left out, and a date written ``yyyy.mm.dd`` or ``yyyy-mm-dd`` (the
pre-3.0 form PS3.5 6.2 still mentions) is fixed to ``yyyymmdd``. The keywords
(never the values) of what was left out are logged.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

from pydicom import Dataset
from pydicom.charset import python_encoding
from pydicom.config import RAISE
from pydicom.datadict import dictionary_VM, dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.valuerep import PersonName, validate_value

from dicom_node.core.errors import ReportError
from dicom_node.core.redact import reason_for
from models.preprocessing.attributes import is_uid

log = logging.getLogger(__name__)

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

TYPE_2: frozenset[str] = frozenset(
    {*_EMPTY_TYPE2, "ClinicalTrialProtocolName", "ClinicalTrialSiteID", "ClinicalTrialSiteName",
     "ClinicalTrialTimePointID"}
)  # fmt: skip
"""Type 2 attributes of the copied modules: left empty (not out) when the source's value is
invalid (PS3.3 C.7.1.1, C.7.1.3, C.7.2.1, C.7.2.3)."""

ENUMERATED: dict[str, frozenset[str]] = {
    "PatientSex": frozenset({"M", "F", "O"}),
    "PatientSexNeutered": frozenset({"ALTERED", "UNALTERED"}),
    "QualityControlSubject": frozenset({"YES", "NO"}),
    "PatientIdentityRemoved": frozenset({"YES", "NO"}),
}
"""Enumerated values (PS3.3 C.7.1.1, C.7.2.2) of copied attributes."""

_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
     "UR", "UT"}
)  # fmt: skip
_DATE_FIX = re.compile(r"(\d{4})[.-](\d{2})[.-](\d{2})")
_TIME = re.compile(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?")


def uid_of(ds: Dataset, keyword: str) -> str:
    """Return a UID attribute of a header as ``str``.

    Raises
    ------
    ReportError
        If it is missing, empty or not a valid UID (PS3.5 9.1); the message names
        the keyword only.
    """
    try:
        value = str(ds.get(keyword) or "").strip(" \x00")
    except Exception as exc:  # a malformed element that pydicom cannot convert
        raise ReportError(f"source header: {safe_reason(exc, keyword)}") from exc
    if not value:
        raise ReportError(f"source header lacks {keyword}")
    if not is_uid(value):
        raise ReportError(f"source header: {keyword} is not a valid UID")
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


def copy_patient_and_study(report: Dataset, source: Dataset) -> list[str]:
    """Copy the valid patient and study attributes of ``source`` into ``report``.

    Includes Other Patient IDs (retired, still common) and Other Patient IDs
    Sequence. An attribute whose value is invalid (:func:`checked_element`) is
    left empty when it is Type 2 (:data:`TYPE_2`) and left out otherwise. Where
    the source says Patient Identity Removed "YES" without naming the method,
    De-identification Method (Type 1C) is filled with
    :data:`DEIDENTIFIED_UNSTATED`. The report's Specific Character Set becomes
    the source's when pydicom knows every term of it, UTF-8 (``ISO_IR 192``)
    otherwise.

    Returns
    -------
    list of str
        Keywords of the attributes left empty or out (logged, without values).
    """
    dropped: list[str] = []
    for keyword in PATIENT_AND_STUDY:
        tag = tag_for_keyword(keyword)
        if tag is None or tag not in source:
            continue
        element = checked_element(source, tag)
        if element is not None:
            report[tag] = element
            continue
        dropped.append(keyword)
        if keyword in TYPE_2:
            report[tag] = DataElement(tag, _vr(tag), "" if _vr(tag) in _TEXT_VRS else None)
        elif tag in report:
            del report[tag]
    if text_value(report, "PatientIdentityRemoved").upper() == "YES" and not (
        "DeidentificationMethod" in report or "DeidentificationMethodCodeSequence" in report
    ):
        report.DeidentificationMethod = DEIDENTIFIED_UNSTATED
    report.SpecificCharacterSet = character_set(source)
    if dropped:
        log.info(
            "report of study %s: invalid source value(s) left empty or out: %s",
            text_value(report, "StudyInstanceUID"),
            ", ".join(dropped),
        )
    return dropped


def _vr(tag: int) -> str:
    vr = dictionary_VR(tag)
    return vr.split(" or ")[0]


def checked_element(source: Dataset, tag: int) -> DataElement | None:
    """A copy of one element of ``source`` if its value is valid, else None.

    Valid means: pydicom can read it; its VR is the data dictionary's; it has no
    more values than the dictionary's VM allows; each value passes pydicom's
    validator for the VR (PS3.5 6.2) and, for dates and times, is a real date or
    time of day; an enumerated attribute (:data:`ENUMERATED`) holds one of its
    values; every element of every item of a sequence is valid in turn. Empty
    values are valid; private elements inside sequence items are left out. A date
    written ``yyyy.mm.dd`` or ``yyyy-mm-dd`` comes back fixed to ``yyyymmdd``.
    """
    try:
        element = source[tag]
        if element.VR not in dictionary_VR(tag).split(" or "):
            return None
        if element.VR == "SQ":
            return _checked_sequence(element)
        value = _checked_value(tag, element.VR, element.value)
    except Exception:  # unreadable, or a value pydicom refuses: invalid either way
        return None
    if value is _INVALID:
        return None
    return DataElement(tag, element.VR, value)


_INVALID: Any = object()


def _checked_sequence(element: DataElement) -> DataElement | None:
    items = element.value
    if not isinstance(items, DicomSequence):
        return None
    copied = []
    for item in items:
        clean = Dataset()
        for child in item:
            if child.tag.is_private:  # not ours to vouch for: left out of the copy
                continue
            checked = checked_element(item, child.tag)
            if checked is None:
                return None
            clean[child.tag] = checked
        copied.append(clean)
    return DataElement(element.tag, "SQ", copied)


def _checked_value(tag: int, vr: str, value: Any) -> Any:
    if value is None or value == "" or value == b"":
        return value
    values = list(value) if isinstance(value, MultiValue | list) else [value]
    if not _vm_allows(tag, len(values)):
        return _INVALID
    checked = [_checked_one(tag, vr, v) for v in values]
    if any(v is _INVALID for v in checked):
        return _INVALID
    return checked if isinstance(value, MultiValue | list) else checked[0]


def _vm_allows(tag: int, count: int) -> bool:
    vm = dictionary_VM(tag)
    if "-" not in vm:
        return vm.isdigit() and count <= int(vm)
    _, _, high = vm.partition("-")
    return high.endswith("n") or (high.isdigit() and count <= int(high))


def _checked_one(tag: int, vr: str, value: Any) -> Any:
    if isinstance(value, PersonName):
        value = str(value)
    if vr == "DA" and isinstance(value, str):
        value = _DATE_FIX.sub(r"\1\2\3", value.strip())
    validate_value(vr, value, RAISE)
    if isinstance(value, str):
        text = value.strip(" \x00")
        if vr == "DA" and text and not _is_date(text):
            return _INVALID
        if vr == "TM" and text and not _is_time(text):
            return _INVALID
        allowed = ENUMERATED.get(keyword_for_tag(tag))
        if allowed is not None and text and text not in allowed:
            return _INVALID
    return value


def _is_date(text: str) -> bool:
    try:
        dt.datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return False
    return True


def _is_time(text: str) -> bool:
    match = _TIME.fullmatch(text.replace(":", ""))
    if match is None:
        return False
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups()[:3])
    return hours <= 23 and minutes <= 59 and seconds <= 60


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
    """Describe an exception without quoting data (:func:`dicom_node.core.redact.reason_for`).

    Returns
    -------
    str
        ``"ValueError (PatientSex)"`` or just ``"ValueError"``.
    """
    return reason_for(exc, keyword)


class BuildSteps:
    """Names the step a report builder is at; turns a failure in it into a PHI-free ReportError.

    ``with BuildSteps("tid1500 SR", study_uid, "measurement groups") as steps:``,
    then ``steps.stage = "document"`` as the builder moves on. A ``ReportError``
    raised inside passes unchanged; any other exception becomes
    ``ReportError("cannot build <what> for study <uid>: <stage>: <class (keyword)>")``
    chained to it: the text names the stage, the exception class and at most a
    DICOM keyword, never a value (:func:`safe_reason`).

    Parameters
    ----------
    what : str
        The object, e.g. ``"tid1500 SR"`` or ``"key_image SC"``.
    study_uid : str
        Study Instance UID of the report.
    stage : str
        The first step's name.
    """

    def __init__(self, what: str, study_uid: str, stage: str) -> None:
        self.what = what
        self.study_uid = study_uid
        self.stage = stage

    def __enter__(self) -> BuildSteps:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if exc is None or isinstance(exc, ReportError) or not isinstance(exc, Exception):
            return
        raise ReportError(
            f"cannot build {self.what} for study {self.study_uid}: {self.stage}: {safe_reason(exc)}"
        ) from exc


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
