"""Output profile "tid1500": a TID 1500 Measurement Report in a Comprehensive 3D SR.

Content (PS3.16 TID 1500, 1501, 1204, 1001, 1600, 4019), one document per analysis:

- Title: DCM 126000 "Imaging Measurement Report" (CID 7021), stated explicitly.
- Language of content item and descendants (TID 1204): RFC5646 "en-US" English.
- Observation context (TID 1001): the device observer is the model (Device
  Observer UID derived from the model id and weights sha256, name, manufacturer,
  model name = manifest id; "UNTRAINED" in the name when the weights are
  untrained demo weights).
- Procedure reported: SCT 363679005 "Imaging procedure" (CID 100).
- Image Library (DCM 111028): one entry per source image (:mod:`workers.outputs.library`).
- Imaging Measurements: one measurement group per (scope unit, reported label),
  in input order, each with tracking identifier (UID derived from the SR's SOP
  Instance UID, the scope key and the label), finding type (the label's code),
  algorithm identification (TID 4019: model id, version; parameters: weights
  sha256, weights kind, backend, precision, device, engine key, model card URL /
  reference, intended use; TID 4019 has no URL item, so the model card's URL is
  the text parameter ``model card <url>``), finding site (SCT 363698007, TID 1501:
  the label's ``finding_site``, else the manifest's, when either names one),
  source images (the image(s) that drove the finding: for series scope with
  ``max`` the slice with the highest probability, so a viewer jumps to it), one measurement
  DCM 122157 "Probability" in UCUM "1", and a qualitative evaluation
  SCT 52101004 "Present" / SCT 272519000 "Absent" at the label's threshold
  (present when probability >= threshold).
- Qualitative Evaluations (UMLS C0034375, TID 1500 rows 10-12), only when images
  of the analysis were not analysed: one TEXT item "Image not analysed"
  (99DCMNODE IMGNOTANALYSED) per image, ``"<SOP Instance UID> - <reason>"``; the
  reasons name attribute keywords, never values.

Series and SOP Instance UIDs are derived (:func:`workers.outputs.findings.report_uids`),
so a task that runs twice produces the same instance; every generation stays in
one series (:func:`workers.outputs.findings.series_number`), Instance Number is
the generation (1 for the warm-up's generation 0: highdicom wants it
positive). When an earlier generation's report already went out
(``inp.predecessor("tid1500")``), the SR Document General module's Predecessor
Documents Sequence (0040,A360) references it (PS3.3 C.17.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes

from dicom_node.core.contract import MANUFACTURER
from dicom_node.core.errors import ReportError
from dicom_node.core.ledger import PriorReport, SkippedImage
from dicom_node.core.redact import captured_library_warnings
from dicom_node.core.uids import derived_uid
from models.weights import UNTRAINED_NOTICE
from workers.outputs.findings import (
    Finding,
    LabelLike,
    ManifestLike,
    ReportInput,
    finding_site_code,
    report_uids,
    series_number,
)
from workers.outputs.headers import (
    BuildSteps,
    copy_patient_and_study,
    first_of_study,
    stand_in,
    unique_headers,
)
from workers.outputs.library import image_library
from workers.outputs.reader import NOT_ANALYSED_CODE, ReportedFinding, read_findings
from workers.outputs.summary import scope_labels

__all__ = [
    "PROFILE",
    "Finding",
    "ReportInput",
    "ReportedFinding",
    "build_document",
    "build_tid1500",
    "read_findings",
]

PROFILE = "tid1500"
PROBABILITY = codes.DCM.Probability
UNIT_ONE = hd.sr.CodedConcept("1", "UCUM", "no units")
CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS
PRESENT = codes.SCT.Present
ABSENT = codes.SCT.Absent
IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")
TITLE = hd.sr.CodedConcept("126000", "DCM", "Imaging Measurement Report")
ENGLISH = hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")
"""CID 5000 "Language": the language every text of the report is in (TID 1204)."""
UNTRAINED_TAG = "UNTRAINED"
INTENDED_USE_CHARS = 200
LOOKUP_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"
"""Secondary Capture Image Storage: the class highdicom looks the first evidence item up under."""
LOCAL_SCHEME = "99DCMNODE"
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
NOT_ANALYSED = hd.sr.CodedConcept(NOT_ANALYSED_CODE, LOCAL_SCHEME, "Image not analysed")


def build_tid1500(inp: ReportInput) -> list[Dataset]:
    """Build the TID 1500 Comprehensive 3D SR of one analysis (the profile's builder).

    Returns
    -------
    list of pydicom.Dataset
        ``[sr]``: the one object of the profile (:func:`build_document`).

    Raises
    ------
    ReportError
        As :func:`build_document`.
    """
    return [build_document(inp)]


def build_document(inp: ReportInput) -> Dataset:
    """Build the TID 1500 Comprehensive 3D SR of one analysis.

    Parameters
    ----------
    inp : ReportInput
        Findings, evidence headers, manifest, weights, backend, study UID and generation.

    Returns
    -------
    pydicom.Dataset
        The SR instance (highdicom ``Comprehensive3DSR``), Explicit VR Little Endian,
        with file meta; patient and study modules copied from the first evidence image
        of the study, Other Patient IDs included; Series Number
        :func:`~workers.outputs.findings.series_number`, Instance Number the
        generation (at least 1); the Predecessor Documents Sequence when
        ``inp.predecessor("tid1500")``.

    Raises
    ------
    ReportError
        If the input is inconsistent (see :meth:`ReportInput.reported`), no finding is
        reportable, no evidence image is of the study, a header lacks a UID, or
        highdicom refuses the content. The message names the stage, the exception
        class and at most a DICOM keyword, never a value from a source header.
    """
    with captured_library_warnings():
        report = _build(inp)
    declare_local_schemes(report, inp.manifest, extra=[LOCAL_SCHEME] if inp.skipped else [])
    return report


def _build(inp: ReportInput) -> Dataset:
    findings = inp.reported()
    if not findings:
        raise ReportError(f"model {inp.manifest.id}: no reportable finding")
    series_uid, sop_uid = report_uids(inp, PROFILE)
    evidence = unique_headers([*inp.evidence, *(s for f in findings for s in f.sources)])
    primary = first_of_study(evidence, inp.study_uid)
    ordered = [primary, *(ds for ds in evidence if ds is not primary)]
    sources = unique_headers(s for f in findings for s in f.sources)
    with BuildSteps(f"{PROFILE} SR", inp.study_uid, "measurement groups") as steps:
        algorithm = algorithm_identification(inp)
        labels = scope_labels(inp, findings)
        groups = [_group(f, sop_uid, algorithm, labels, inp.manifest) for f in findings]
        content = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(
                observer_device_context=device_observer(inp)
            ),
            procedure_reported=IMAGING_PROCEDURE,
            imaging_measurements=groups,
            title=TITLE,
            language_of_content_item_and_descendants=hd.sr.LanguageOfContentItemAndDescendants(
                ENGLISH
            ),
        )
        steps.stage = "image library"
        _insert_before_measurements(content, image_library(sources))
        if inp.skipped:
            steps.stage = "images not analysed"
            content[0].ContentSequence.append(not_analysed(inp.skipped))
        steps.stage = "document"
        stand_ins = [stand_in(ds) for ds in ordered]
        prior = inp.predecessor(PROFILE)
        report = hd.sr.Comprehensive3DSR(
            evidence=_for_highdicom(stand_ins),
            content=content,
            series_instance_uid=series_uid,
            series_number=series_number(PROFILE),
            sop_instance_uid=sop_uid,
            instance_number=max(1, inp.generation),  # highdicom: > 0 (warm-up: 0)
            manufacturer=MANUFACTURER,
            is_complete=True,
            series_description=series_description(inp),
            previous_versions=[previous_version(prior)] if prior is not None else None,
        )
        _restore_evidence_classes(report, stand_ins)
        steps.stage = "patient and study"
        copy_patient_and_study(report, primary)
    return report


def previous_version(prior: PriorReport) -> Dataset:
    """The identity of a superseded report, as highdicom's ``previous_versions`` takes it.

    highdicom writes it into the Predecessor Documents Sequence (0040,A360) as a
    Hierarchical SOP Instance Reference (PS3.3 C.17.2.1): study, series, SOP.
    """
    ds = Dataset()
    ds.StudyInstanceUID = prior.study_uid
    ds.SeriesInstanceUID = prior.series_instance_uid
    ds.SOPClassUID = prior.sop_class_uid
    ds.SOPInstanceUID = prior.sop_instance_uid
    return ds


def _for_highdicom(stand_ins: list[Dataset]) -> list[Dataset]:
    """The evidence list for highdicom, its first item under a SOP class highdicom knows.

    highdicom looks up the IOD of the first evidence item's SOP class to copy its
    patient and study modules (from a stand-in that holds none; we copy them after)
    and fails on a class its tables lack: retired ones such as Ultrasound Image
    Storage (Retired) 1.2.840.10008.5.1.4.1.1.6, or a private one. The first item
    is therefore passed as Secondary Capture; :func:`_restore_evidence_classes`
    puts the true class back into the evidence references.
    """
    first = deepcopy(stand_ins[0])
    first.SOPClassUID = LOOKUP_SOP_CLASS
    return [first, *stand_ins[1:]]


def _restore_evidence_classes(report: Dataset, stand_ins: list[Dataset]) -> None:
    """Reference each evidence instance under its own SOP Class UID (see :func:`_for_highdicom`)."""
    classes = {str(ds.SOPInstanceUID): str(ds.SOPClassUID) for ds in stand_ins}
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in report.get(keyword, []):
            for series in study.get("ReferencedSeriesSequence", []):
                for item in series.get("ReferencedSOPSequence", []):
                    uid = str(item.ReferencedSOPInstanceUID)
                    item.ReferencedSOPClassUID = classes.get(uid, item.ReferencedSOPClassUID)


def series_description(inp: ReportInput, suffix: str = "") -> str:
    """Series description: "AI <model name><suffix>", plus the whole untrained notice if not real.

    Parameters
    ----------
    inp : ReportInput
        The analysis (model name, weights kind).
    suffix : str
        Names the profile, e.g. ``" (text)"``; "" for TID 1500.

    Returns
    -------
    str
        At most 64 characters (LO); the model name is cut at a word when the
        untrained notice needs the room, the suffix and notice never.
    """
    text = f"AI {inp.manifest.name}"
    if not inp.is_demo:
        return f"{text[: 64 - len(suffix)]}{suffix}"
    room = 64 - len(suffix) - len(UNTRAINED_NOTICE) - 3
    if len(text) > room:  # cut at a word: "AI Chest X-ray", not "AI Chest X-ray Tor"
        text = text[: room + 1].rsplit(" ", 1)[0] if " " in text[4 : room + 1] else text[:room]
    return f"{text}{suffix} - {UNTRAINED_NOTICE}"


def algorithm_identification(inp: ReportInput) -> hd.sr.AlgorithmIdentification:
    """TID 4019 for the model: id (+ UNTRAINED), version, weights, serving, model card.

    Parameters (DCM 111002, one TEXT each): ``weights sha256 <hex>``, ``weights kind
    <kind>``, then :func:`serving_lines`, then :func:`model_card_lines`.
    """
    name = inp.manifest.id + (f" ({UNTRAINED_TAG} DEMO WEIGHTS)" if inp.is_demo else "")
    parameters = [
        f"weights sha256 {inp.weights.sha256}",
        f"weights kind {inp.weights.kind}",
        *serving_lines(inp),
        *model_card_lines(inp.manifest),
    ]
    return hd.sr.AlgorithmIdentification(
        name=name, version=inp.manifest.version, parameters=parameters
    )


def serving_lines(inp: ReportInput) -> list[str]:
    """How the model ran: ``backend <key>``, ``precision <p>``, ``device <d>``, ``engine <key>``.

    The device line is left out when unknown, the engine line when there is no
    compiled artefact (eager PyTorch).
    """
    lines = [f"backend {inp.backend}", f"precision {inp.precision}"]
    if inp.device:
        lines.append(f"device {inp.device}")
    if inp.engine_key:
        lines.append(f"engine {inp.engine_key}")
    return lines


def model_card_lines(manifest: ManifestLike) -> list[str]:
    """Short pointers to the model card: URL, reference, first part of the intended use."""
    card = manifest.model_card
    if card is None:
        return []
    lines = []
    if card.url:
        lines.append(f"model card {card.url}")
    if card.reference:
        lines.append(f"reference {card.reference}")
    use = " ".join(card.intended_use.split())
    if use:
        if len(use) > INTENDED_USE_CHARS:
            use = use[: INTENDED_USE_CHARS - 3].rsplit(" ", 1)[0] + "..."
        lines.append(f"intended use {use}")
    return lines


def device_observer_uid(inp: ReportInput) -> str:
    """Device Observer UID (DCM 121012) of the model: derived from its id and weights sha256."""
    return derived_uid(inp.manifest.id, inp.weights.sha256)


def device_observer_name(inp: ReportInput) -> str:
    """Device Observer Name (DCM 121013): the model name, "UNTRAINED" added for demo weights."""
    suffix = f" {UNTRAINED_TAG}" if inp.is_demo else ""
    return inp.manifest.name[: 64 - len(suffix)] + suffix


def device_observer(inp: ReportInput) -> hd.sr.ObserverContext:
    """TID 1002 observer context: the model as device (UID, name, manufacturer, model id)."""
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_observer_uid(inp),
            name=device_observer_name(inp),
            manufacturer_name=MANUFACTURER,
            model_name=inp.manifest.id[:64],
        ),
    )


def _concept(label: LabelLike) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(label.code.value, label.code.scheme, label.code.meaning)


def finding_site(manifest: ManifestLike, label: LabelLike) -> hd.sr.FindingSite | None:
    """TID 1501 Finding Site (SCT 363698007) of a label (:func:`finding_site_code`)."""
    code = finding_site_code(manifest, label)
    if code is None:
        return None
    return hd.sr.FindingSite(hd.sr.CodedConcept(code.value, code.scheme, code.meaning))


def _group(
    finding: Finding,
    sop_uid: str,
    algorithm: hd.sr.AlgorithmIdentification,
    scope_labels: dict[str | None, str],
    manifest: ManifestLike,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    label = finding.label
    site = finding_site(manifest, label)
    scope = scope_labels[finding.scope_key]
    identifier = f"{label.name} ({scope})" if scope else label.name
    probability = min(1.0, max(0.0, float(finding.probability)))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(sop_uid, finding.scope_key or "study", label.name),
            identifier=identifier,
        ),
        finding_type=_concept(label),
        algorithm_id=algorithm,
        finding_sites=[site] if site is not None else None,
        source_images=[
            hd.sr.SourceImageForMeasurementGroup.from_source_image(stand_in(ds))
            for ds in unique_headers(finding.sources)
        ],
        measurements=[
            hd.sr.Measurement(name=PROBABILITY, value=round(probability, 6), unit=UNIT_ONE)
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=_concept(label), value=PRESENT if finding.present else ABSENT
            )
        ],
    )


def not_analysed(skipped: Sequence[SkippedImage]) -> hd.sr.ContainerContentItem:
    """TID 1500 Qualitative Evaluations: one TEXT "Image not analysed" per skipped image.

    Parameters
    ----------
    skipped : sequence of SkippedImage
        SOP Instance UID and reason (keywords, never values) of each image.

    Returns
    -------
    highdicom.sr.ContainerContentItem
        CONTAINER (C0034375, UMLS, "Qualitative Evaluations"), relationship
        CONTAINS, for the TID 1500 root; each TEXT value ``"<uid> - <reason>"``.
    """
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type=CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=NOT_ANALYSED,
                value=f"{item.sop_instance_uid} - {item.reason}",
                relationship_type=CONTAINS,
            )
            for item in skipped
        ]
    )
    return container


def _insert_before_measurements(content: hd.sr.MeasurementReport, item: Dataset) -> None:
    """Put the Image Library where TID 1500 wants it: before Imaging Measurements."""
    children = content[0].ContentSequence
    at = next(
        (i for i, child in enumerate(children) if child.name == codes.DCM.ImagingMeasurements),
        len(children),
    )
    children.insert(at, item)


def declare_local_schemes(
    report: Dataset, manifest: ManifestLike, extra: Sequence[str] = ()
) -> None:
    """Identify private coding schemes ("99...") used by the labels (PS3.3 C.12.1.1.2.1).

    Parameters
    ----------
    report : pydicom.Dataset
        Gets the Coding Scheme Identification Sequence when a local scheme is used.
    manifest : ManifestLike
        Its labels' code schemes.
    extra : sequence of str
        Further local schemes the report uses (:data:`LOCAL_SCHEME` for the
        "Image not analysed" items).
    """
    local = sorted(
        {lb.code.scheme for lb in manifest.labels if lb.code.scheme[:2] == "99"} | set(extra)
    )
    items = []
    for scheme in local:
        item = Dataset()
        item.CodingSchemeDesignator = scheme
        item.CodingSchemeName = f"{MANUFACTURER} local codes ({manifest.id})"[:64]
        item.CodingSchemeResponsibleOrganization = MANUFACTURER
        items.append(item)
    if items:
        report.CodingSchemeIdentificationSequence = items
