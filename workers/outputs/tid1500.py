"""The report: a TID 1500 Measurement Report in a Comprehensive 3D SR, built with highdicom.

Content (PS3.16 TID 1500, TID 1501, TID 4019):

- Observation context: the device observer is the model (name, manifest id).
- Procedure reported: SCT 363679005 "Imaging procedure" (CID 100).
- One measurement group per label, in manifest order, each with
  tracking identifier, finding type (the label's code), algorithm identification
  (model name, version, weights sha256), the source image, one measurement
  DCM 122157 "Probability" in UCUM "1", and a qualitative evaluation of the
  finding: SCT 52101004 "Present" or SCT 272519000 "Absent" at the label's
  operating threshold.

UIDs are derived from the study, its generation, the model and the weights,
so a task that runs twice yields the same SOP Instance UID.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes

from dicom_node.core.errors import ReportError
from dicom_node.core.uids import derived_uid
from models.manifest import Label, Manifest
from models.weights.store.store import UNTRAINED_NOTICE, WeightsInfo

PROBABILITY = codes.DCM.Probability
UNIT_ONE = hd.sr.CodedConcept("1", "UCUM", "no units")
PRESENT = codes.SCT.Present
ABSENT = codes.SCT.Absent
IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")
SERIES_NUMBER = 9901
MANUFACTURER = "dicom-node"


@dataclass(frozen=True)
class Finding:
    """One label's result for a study.

    Attributes
    ----------
    label : Label
        The manifest label (code and threshold).
    probability : float
        Model output in [0, 1] (sigmoid), the maximum over the study's images.
    source : Dataset
        Header of the image that gave ``probability``.
    """

    label: Label
    probability: float
    source: Dataset

    @property
    def present(self) -> bool:
        """Whether the probability reaches the label's operating threshold."""
        return self.probability >= self.label.threshold


def report_uids(
    study_uid: str, generation: int, manifest: Manifest, weights: WeightsInfo
) -> tuple[str, str]:
    """Deterministic (Series Instance UID, SOP Instance UID) of a study's report."""
    sources = [study_uid, str(generation), manifest.id, manifest.version, weights.sha256]
    return derived_uid(*sources, "series"), derived_uid(*sources, "instance")


def _concept(label: Label) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(label.code.value, label.code.scheme, label.code.meaning)


def build_report(
    findings: Sequence[Finding],
    evidence: Sequence[Dataset],
    manifest: Manifest,
    weights: WeightsInfo,
    study_uid: str,
    generation: int,
) -> Dataset:
    """Build the SR for a study.

    Parameters
    ----------
    findings : sequence of Finding
        One per manifest label, in order.
    evidence : sequence of Dataset
        Headers of the images the model ran on (same study); the SR copies
        patient and study from the first and references all of them.
    manifest, weights
        The model and its weights; untrained weights are named so in the
        algorithm name, the series description and the observer name.
    study_uid : str
        Study Instance UID.
    generation : int
        Ledger generation of the study, part of the deterministic UIDs.

    Returns
    -------
    pydicom.Dataset
        The Comprehensive 3D SR instance.

    Raises
    ------
    ReportError
        If highdicom rejects the content.
    """
    demo = not weights.is_real
    algorithm_name = manifest.id + (" (UNTRAINED DEMO)" if demo else "")
    algorithm = hd.sr.AlgorithmIdentification(
        name=algorithm_name,
        version=manifest.version,
        parameters=[f"weights sha256 {weights.sha256}", f"weights {weights.kind}"],
    )
    series_uid, sop_uid = report_uids(study_uid, generation, manifest, weights)
    try:
        groups = [
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=derived_uid(sop_uid, finding.label.name),
                    identifier=finding.label.name,
                ),
                finding_type=_concept(finding.label),
                algorithm_id=algorithm,
                source_images=[
                    hd.sr.SourceImageForMeasurementGroup.from_source_image(finding.source)
                ],
                measurements=[
                    hd.sr.Measurement(
                        name=PROBABILITY, value=round(float(finding.probability), 6), unit=UNIT_ONE
                    )
                ],
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(
                        name=_concept(finding.label), value=PRESENT if finding.present else ABSENT
                    )
                ],
            )
            for finding in findings
        ]
        observer = hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=derived_uid(manifest.id, weights.sha256),
                name=(manifest.name + (" UNTRAINED" if demo else ""))[:64],
                manufacturer_name=MANUFACTURER,
                model_name=manifest.id,
            ),
        )
        content = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=IMAGING_PROCEDURE,
            imaging_measurements=groups,
        )
        report = hd.sr.Comprehensive3DSR(
            evidence=list(evidence),
            content=content,
            series_instance_uid=series_uid,
            series_number=SERIES_NUMBER,
            sop_instance_uid=sop_uid,
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,
            series_description=(
                f"AI CXR - {UNTRAINED_NOTICE}" if demo else f"AI CXR findings {manifest.id}"
            )[:64],
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ReportError(f"cannot build SR for study {study_uid}: {exc}") from exc
    _declare_local_schemes(report, manifest)
    return report


def _declare_local_schemes(report: Dataset, manifest: Manifest) -> None:
    """Identify private coding schemes ("99...") used by the labels (PS3.3 C.12.1.1.2.1)."""
    local = sorted(
        {label.code.scheme for label in manifest.labels if label.code.scheme[:2] == "99"}
    )
    items = []
    for scheme in local:
        item = Dataset()
        item.CodingSchemeDesignator = scheme
        item.CodingSchemeName = f"{MANUFACTURER} local finding codes ({manifest.id})"[:64]
        item.CodingSchemeResponsibleOrganization = MANUFACTURER
        items.append(item)
    if items:
        report.CodingSchemeIdentificationSequence = items


@dataclass(frozen=True)
class ReportedFinding:
    """A finding read back from an SR (for display and tests)."""

    finding: str
    probability: float
    evaluation: str


def read_findings(report: Dataset) -> list[ReportedFinding]:
    """Read the measurement groups of a TID 1500 SR built by :func:`build_report`.

    Returns
    -------
    list of ReportedFinding
        In document order.
    """

    def concept(item: Dataset) -> str:
        return str(item.ConceptNameCodeSequence[0].CodeValue)

    found: list[ReportedFinding] = []
    for container in report.get("ContentSequence", []):
        if concept(container) != "126010":  # Imaging Measurements
            continue
        for group in container.get("ContentSequence", []):
            probability, name, evaluation = float("nan"), "", ""
            for item in group.get("ContentSequence", []):
                if item.ValueType == "NUM" and concept(item) == PROBABILITY.value:
                    probability = float(item.MeasuredValueSequence[0].NumericValue)
                elif item.ValueType == "CODE" and item.ConceptCodeSequence[0].CodeValue in (
                    PRESENT.value,
                    ABSENT.value,
                ):
                    name = str(item.ConceptNameCodeSequence[0].CodeMeaning)
                    evaluation = str(item.ConceptCodeSequence[0].CodeMeaning)
            found.append(ReportedFinding(name, probability, evaluation))
    return found
