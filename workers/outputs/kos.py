"""The key image profile's Key Object Selection Document (PS3.3 A.35.4, TID 2010).

One KOS per key image: document title DCM 113000 "Of Interest" (CID 7010), the
model as the device observer (TID 1004: the same Device Observer UID and name
as the TID 1500 SR), a TEXT Key Object Description (DCM 113012) naming the
finding whose heat map the key image shows, with "AI-generated, not a
diagnosis." and the untrained notice for demo weights, and two IMAGE
references: the key image (the Secondary Capture) first, then the source image
it was made from. The Current Requested Procedure Evidence Sequence lists both.

Built with highdicom's ``KeyObjectSelectionDocument`` from PHI-free stand-ins
(:func:`workers.outputs.headers.stand_in`); patient and study are copied from
the source afterwards. Series (ordinal 1) and SOP Instance UIDs are derived
(:func:`workers.outputs.findings.report_uids`).
"""

from __future__ import annotations

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.core.contract import MANUFACTURER
from models.weights import UNTRAINED_NOTICE
from workers.outputs.findings import Finding, ReportInput, report_uids, series_number
from workers.outputs.headers import BuildSteps, copy_patient_and_study, stand_in
from workers.outputs.summary import finding_line, statements
from workers.outputs.tid1500 import device_observer

__all__ = ["DOCUMENT_TITLE", "build_kos", "description"]

PROFILE = "key_image"
ORDINAL = 1
DOCUMENT_TITLE = codes.DCM.OfInterest
"""DCM 113000 "Of Interest" (CID 7010 Key Object Selection Document Title)."""


def description(inp: ReportInput, finding: Finding, source_uid: str, method: str) -> str:
    """The Key Object Description: what the key image shows, the finding, the statements."""
    shown = finding.label.code.meaning
    notice = [UNTRAINED_NOTICE] if inp.is_demo else []
    return " ".join(
        [
            f"Key image: AI heat map of {shown} on image {source_uid} ({method.split(',')[0]}).",
            f"{finding_line(finding)}.",
            *statements(inp),
            *notice,
        ]
    )


def build_kos(
    inp: ReportInput, sc: Dataset, source: Dataset, finding: Finding, method: str
) -> Dataset:
    """The KOS that selects the key image (and its source) as "Of Interest".

    Parameters
    ----------
    inp : ReportInput
        The analysis.
    sc : Dataset
        The key image (Secondary Capture) built for it.
    source : Dataset
        Header of the image the key image was made from.
    finding : Finding
        The finding whose heat map the key image shows.
    method : str
        The saliency method (its first clause is quoted).

    Returns
    -------
    pydicom.Dataset
        Key Object Selection Document Storage (1.2.840.10008.5.1.4.1.1.88.59),
        Explicit VR Little Endian, with file meta.

    Raises
    ------
    ReportError
        If highdicom refuses the document (stage and exception class only).
    """
    series_uid, sop_uid = report_uids(inp, PROFILE, ORDINAL)
    with BuildSteps(f"{PROFILE} KOS", inp.study_uid, "content") as steps:
        references = [stand_in(sc), stand_in(source)]
        observer = device_observer(inp)
        text = description(inp, finding, str(source.SOPInstanceUID), method)
        content = hd.ko.KeyObjectSelection(
            document_title=DOCUMENT_TITLE,
            referenced_objects=references,
            observer_device_context=observer,
            description=text,
        )
        steps.stage = "document"
        kos = hd.ko.KeyObjectSelectionDocument(
            evidence=references,
            content=content,
            series_instance_uid=series_uid,
            series_number=series_number(PROFILE, ORDINAL),
            sop_instance_uid=sop_uid,
            instance_number=inp.generation,
            manufacturer=MANUFACTURER,
            transfer_syntax_uid=ExplicitVRLittleEndian,
        )
        suffix = " UNTRAINED" if inp.is_demo else ""
        kos.SeriesDescription = f"AI key objects {inp.manifest.id}"[: 64 - len(suffix)] + suffix
        steps.stage = "patient and study"
        copy_patient_and_study(kos, source)
        kos.StudyInstanceUID = inp.study_uid
    return kos
