"""The TID 1500 report writer (workers.outputs) on real pydicom-data images.

Manifests and weights are small stand-ins (FAKE) with the fields INTERFACES.md
names, so these tests do not depend on the models package's schema.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from copy import deepcopy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.tag import Tag

from dicom_node.core.errors import ReportError
from dicom_node.core.ledger import SkippedImage
from dicom_node.core.uids import derived_uid
from tests.conftest import dciodvfy_errors
from workers.outputs import PROFILES, build, build_report, builder
from workers.outputs.findings import Finding, ReportInput
from workers.outputs.reader import read_not_analysed
from workers.outputs.tid1500 import build_tid1500, read_findings
from workers.outputs.warmup import warm_up_sr

SHA = "ab" * 32


@dataclass(frozen=True)
class FakeCode:
    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class FakeLabel:
    name: str
    code: FakeCode
    threshold: float = 0.5
    report: bool = True
    finding_site: FakeCode | None = None


@dataclass(frozen=True)
class FakeAggregation:
    scope: str = "study"
    reduce: str = "max"


@dataclass(frozen=True)
class FakeCard:
    intended_use: str = "Research triage of adult chest radiographs. " * 10
    training_data: str = "Public chest X-ray data sets."
    limitations: str = "Not validated."
    subgroup_caveats: str = "Children not represented."
    reference: str = "Cohen JP et al. MIDL 2022"
    url: str | None = "https://example.org/model-card"


@dataclass(frozen=True)
class FakeManifest:
    id: str
    name: str
    version: str
    labels: Sequence[FakeLabel]
    aggregation: FakeAggregation = field(default_factory=FakeAggregation)
    model_card: FakeCard | None = field(default_factory=FakeCard)
    finding_site: FakeCode | None = None


@dataclass(frozen=True)
class FakeWeights:
    model_id: str
    kind: str = "untrained-demo"
    sha256: str = SHA


CHEST_CODES = [
    ("Atelectasis", "XRV-ATELECT", "99DCMNODE", "Atelectasis"),
    ("Consolidation", "XRV-CONSOL", "99DCMNODE", "Consolidation"),
    ("Infiltration", "XRV-INFILTR", "99DCMNODE", "Infiltration"),
    ("Pneumothorax", "36118008", "SCT", "Pneumothorax"),
    ("Edema", "XRV-EDEMA", "99DCMNODE", "Edema"),
    ("Emphysema", "XRV-EMPHYS", "99DCMNODE", "Emphysema"),
    ("Fibrosis", "XRV-FIBROSIS", "99DCMNODE", "Fibrosis"),
    ("Effusion", "60046008", "SCT", "Pleural effusion"),
    ("Pneumonia", "XRV-PNEUMONIA", "99DCMNODE", "Pneumonia"),
    ("Pleural_Thickening", "XRV-PLTHICK", "99DCMNODE", "Pleural thickening"),
    ("Cardiomegaly", "287272002", "SCT", "Cardiomegaly"),
    ("Nodule", "XRV-NODULE", "99DCMNODE", "Nodule"),
    ("Mass", "XRV-MASS", "99DCMNODE", "Mass"),
    ("Hernia", "XRV-HERNIA", "99DCMNODE", "Hernia"),
    ("Lung Lesion", "XRV-LUNGLES", "99DCMNODE", "Lung lesion"),
    ("Fracture", "XRV-FRACTURE", "99DCMNODE", "Fracture"),
    ("Lung Opacity", "XRV-LUNGOPAC", "99DCMNODE", "Lung opacity"),
    ("Enlarged Cardiomediastinum", "XRV-ENLCM", "99DCMNODE", "Enlarged cardiomediastinum"),
]
LUNG = FakeCode("39607008", "SCT", "Lung")
HEART = FakeCode("80891009", "SCT", "Heart")
BRAIN = FakeCode("12738006", "SCT", "Brain")
FAKE = FakeManifest(
    id="fake-chest",
    name="Fake chest classifier",
    version="1.0",
    labels=[
        FakeLabel(
            n,
            FakeCode(v, s, m),
            threshold=0.05 * (i + 1),
            finding_site=HEART if n == "Cardiomegaly" else None,
        )
        for i, (n, v, s, m) in enumerate(CHEST_CODES)
    ],
    finding_site=LUNG,
)
HEAD = FakeManifest(
    id="fake-head-ct",
    name="Fake head CT hemorrhage classifier",
    version="2.1",
    labels=[
        FakeLabel("hemorrhage", FakeCode("50960005", "SCT", "Hemorrhage"), 0.4),
        FakeLabel("fracture", FakeCode("72704001", "SCT", "Fracture"), 0.3),
        FakeLabel("normal", FakeCode("17621005", "SCT", "Normal"), 0.5, report=False),
    ],
    aggregation=FakeAggregation(scope="series"),
    finding_site=BRAIN,
)
BONE = FakeManifest(
    id="fake-bone",
    name="Fake bone age",
    version="0.3",
    labels=[FakeLabel("lesion", FakeCode("52988006", "SCT", "Lesion"), 0.5)],
    aggregation=FakeAggregation(scope="study", reduce="mean"),
    model_card=None,
)


def header(name: str) -> Dataset:
    return dcmread(str(get_testdata_file(name)), stop_before_pixels=True)


def sr_of(inp: ReportInput) -> Dataset:
    """The one object of the tid1500 profile."""
    objects = build_tid1500(inp)
    assert isinstance(objects, list) and len(objects) == 1
    return objects[0]


def save(sr: Dataset, path: Path) -> Path:
    sr.save_as(path, enforce_file_format=True)
    return path


def items(node: Dataset) -> Iterator[Dataset]:
    """Every content item below ``node``, depth first."""
    for item in node.get("ContentSequence", []):
        yield item
        yield from items(item)


def concept(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


def library_images(sr: Dataset) -> list[str]:
    (library,) = [i for i in sr.ContentSequence if concept(i) == "111028"]
    return [
        str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for i in items(library)
        if i.ValueType == "IMAGE"
    ]


def algorithm_texts(sr: Dataset) -> dict[str, list[str]]:
    texts: dict[str, list[str]] = {}
    for item in items(sr):
        if item.ValueType == "TEXT" and concept(item) in ("111001", "111002", "111003"):
            texts.setdefault(concept(item), []).append(str(item.TextValue))
    return texts


def ct_series(count: int, series_uid: str, number: int) -> list[Dataset]:
    """``count`` slices made from the head CT slice: new SOP UIDs, z shifted 5 mm each."""
    base = header("693_UNCR.dcm")
    slices = []
    for k in range(count):
        ds = deepcopy(base)
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = number
        ds.SOPInstanceUID = derived_uid("test-ct", series_uid, str(k))
        ds.InstanceNumber = k + 1
        x, y, z = (float(v) for v in base.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 5 * k]
        ds.FrameOfReferenceUID = derived_uid("test-ct-for", series_uid)
        other = Dataset()
        other.PatientID = "OTHER-CT-1"
        other.TypeOfPatientID = "TEXT"
        ds.OtherPatientIDsSequence = [other]
        slices.append(ds)
    return slices


def chest_input(scope: str = "study", kind: str = "untrained-demo") -> ReportInput:
    source = header("RG1_UNCR.dcm")
    manifest = replace(FAKE, aggregation=FakeAggregation(scope=scope))
    key = source.SOPInstanceUID if scope == "image" else None
    findings = [
        Finding(label, 0.05 * (i + 1), (source,), key) for i, label in enumerate(manifest.labels)
    ]
    findings[0] = replace(findings[0], probability=0.01)  # Absent
    return ReportInput(
        study_uid=source.StudyInstanceUID,
        generation=1,
        manifest=manifest,
        weights=FakeWeights(manifest.id, kind),
        backend="onnxruntime",
        findings=findings,
        evidence=[source],
    )


@pytest.mark.parametrize("scope", ["study", "image"])
def test_chest_cr_max_gives_a_valid_sr(scope: str, tmp_path: Path) -> None:
    inp = chest_input(scope)
    source = inp.evidence[0]
    sr = sr_of(inp)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert (sr.StudyInstanceUID, sr.PatientID, sr.PatientName) == (
        source.StudyInstanceUID,
        source.PatientID,
        source.PatientName,
    )
    assert sr.OtherPatientIDs == source.OtherPatientIDs == "26210"
    assert sr.StudyDescription == "THORAX" and sr.AccessionNumber == source.AccessionNumber
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert library_images(sr) == [source.SOPInstanceUID]
    # The CR has no frame of reference and a zero Pixel Spacing: those descriptors are left out.
    descriptors = {concept(i) for i in items(sr) if i.RelationshipType == "HAS ACQ CONTEXT"}
    assert {"121139", "110910", "110911", "111044", "111043"} <= descriptors
    assert not {"112227", "111026", "111066"} & descriptors
    findings = read_findings(sr)
    assert [f.finding for f in findings] == [label.code.meaning for label in FAKE.labels]
    assert [f.code for f in findings] == [label.code.value for label in FAKE.labels]
    for reported, finding in zip(findings, inp.findings, strict=True):
        assert reported.probability == pytest.approx(finding.probability)
        assert reported.evaluation == ("Present" if finding.present else "Absent")
        assert reported.sources == (source.SOPInstanceUID,)
        assert reported.series == (source.SeriesInstanceUID,)
    assert findings[0].evaluation == "Absent" and findings[1].evaluation == "Present"  # p == t
    suffix = f" (image {source.InstanceNumber})" if scope == "image" else ""
    assert findings[3].identifier == "Pneumothorax" + suffix
    assert {s.CodingSchemeDesignator for s in sr.CodingSchemeIdentificationSequence} == {
        "99DCMNODE"
    }
    assert dciodvfy_errors(save(sr, tmp_path / "sr.dcm")) == []


def test_algorithm_identification_names_backend_weights_and_model_card() -> None:
    sr = sr_of(chest_input())
    texts = algorithm_texts(sr)
    parameters = texts["111002"]
    assert f"weights sha256 {SHA}" in parameters
    assert "backend onnxruntime" in parameters and "weights kind untrained-demo" in parameters
    assert "model card https://example.org/model-card" in parameters
    assert "reference Cohen JP et al. MIDL 2022" in parameters
    intended = [p for p in parameters if p.startswith("intended use ")]
    assert intended and len(intended[0]) <= len("intended use ") + 200
    assert set(texts["111003"]) == {"1.0"}  # version, in every group


def test_algorithm_identification_names_precision_device_and_engine(tmp_path: Path) -> None:
    engine = "NVIDIA-H100-80GB-HBM3_sm90_trt10.3.0_" + "cd" * 8
    inp = replace(chest_input(), backend="tensorrt", precision="fp16", engine_key=engine)
    sr = sr_of(replace(inp, device="cuda"))
    parameters = algorithm_texts(sr)["111002"]
    served = [
        p for p in parameters if p.split(" ")[0] in ("backend", "precision", "device", "engine")
    ]
    assert served[:4] == ["backend tensorrt", "precision fp16", "device cuda", f"engine {engine}"]
    assert parameters.count("precision fp16") == len(FAKE.labels)  # in every group
    assert dciodvfy_errors(save(sr, tmp_path / "trt.dcm")) == []
    # No engine (eager torch) and an unknown device: those lines are left out.
    eager = algorithm_texts(sr_of(replace(inp, backend="torch", engine_key="")))
    assert "precision fp16" in eager["111002"] and "backend torch" in eager["111002"]
    assert not [p for p in eager["111002"] if p.startswith(("engine ", "device "))]
    assert all("UNTRAINED" in name for name in eager["111001"])


def test_a_model_that_does_not_say_its_precision_is_reported_fp32() -> None:
    (ich,) = [m for m in shipped_manifests() if m.aggregation.scope == "series"]
    slices = ct_series(1, derived_uid("test-series", "fp32"), 2)
    images = [FakeImage(ds) for ds in slices]
    count = len(ich.labels)
    unit = FakeAggregate(
        slices[0].SeriesInstanceUID, np.full(count, 0.5, np.float32), [images] * count
    )
    model = FakeModel(ich, FakeWeights(ich.id))  # backend only, like a model of before issue 7
    (sr,) = build_report(
        "tid1500", FakeOutcome([unit], images), model, slices[0].StudyInstanceUID, 1
    )
    parameters = algorithm_texts(sr)["111002"]
    assert {"backend onnxruntime", "precision fp32"} <= set(parameters)
    assert not [p for p in parameters if p.startswith(("engine ", "device "))]


def test_a_loaded_model_reports_how_it_runs(
    manifest: Any, demo_weights: Any, models_dir: Path, cr_path: Path, tmp_path: Path
) -> None:
    from models.backends import load_model

    model = load_model(manifest, demo_weights, models_dir, "onnxruntime")
    source = dcmread(cr_path, stop_before_pixels=True)
    count = len(manifest.labels)
    image = FakeImage(source)
    key = None if manifest.aggregation.scope == "study" else source.SOPInstanceUID
    unit = FakeAggregate(key, np.full(count, 0.25, np.float32), [[image]] * count)
    (sr,) = build_report("tid1500", FakeOutcome([unit], [image]), model, source.StudyInstanceUID, 1)
    parameters = algorithm_texts(sr)["111002"]
    expected = [f"backend {model.backend}", f"precision {model.precision}"]
    expected += [f"device {model.device}"] + (
        [f"engine {model.engine_key}"] if model.engine_key else []
    )
    assert set(expected) <= set(parameters)
    assert model.backend == "onnxruntime" and model.device == "cpu"
    assert all("UNTRAINED" in name for name in algorithm_texts(sr)["111001"])
    assert "UNTRAINED" in sr.SeriesDescription
    assert dciodvfy_errors(save(sr, tmp_path / "loaded.dcm")) == []


def test_untrained_weights_are_labelled_and_real_ones_are_not() -> None:
    demo = sr_of(chest_input(kind="untrained-demo"))
    assert "UNTRAINED DEMO WEIGHTS - NOT FOR CLINICAL USE" in demo.SeriesDescription
    assert demo.SeriesDescription.startswith("AI Fake chest")
    assert len(demo.SeriesDescription) <= 64
    assert all("UNTRAINED" in name for name in algorithm_texts(demo)["111001"])
    observer = [i for i in demo.ContentSequence if concept(i) == "121013"]  # Device Observer Name
    assert observer and "UNTRAINED" in observer[0].TextValue
    real = sr_of(chest_input(kind="real"))
    assert real.SeriesDescription == "AI Fake chest classifier"
    assert "UNTRAINED" not in str(algorithm_texts(real)["111001"])


def test_same_input_gives_same_uids_and_generation_changes_them() -> None:
    inp = chest_input()
    one, two = sr_of(inp), sr_of(inp)
    assert one.SeriesInstanceUID == two.SeriesInstanceUID
    assert one.SOPInstanceUID == two.SOPInstanceUID
    assert [f.tracking_uid for f in read_findings(one)] == [
        f.tracking_uid for f in read_findings(two)
    ]
    assert len({f.tracking_uid for f in read_findings(one)}) == len(FAKE.labels)
    other = sr_of(replace(inp, generation=2))
    assert other.SOPInstanceUID != one.SOPInstanceUID
    assert other.SeriesInstanceUID == one.SeriesInstanceUID  # every generation: one series
    assert (one.InstanceNumber, other.InstanceNumber) == (1, 2)
    assert one.SeriesNumber == other.SeriesNumber == 9901
    resha = sr_of(replace(inp, weights=FakeWeights(FAKE.id, sha256="cd" * 32)))
    assert resha.SOPInstanceUID != one.SOPInstanceUID


def test_ct_series_scope_max_references_the_driving_slice(tmp_path: Path) -> None:
    first = ct_series(3, derived_uid("test-series", "a"), 2)
    second = ct_series(2, derived_uid("test-series", "b"), 3)
    study = first[0].StudyInstanceUID
    findings = []
    for series, best in ((first, 1), (second, 0)):
        for i, label in enumerate(HEAD.labels):
            findings.append(
                Finding(label, 0.2 + 0.3 * i, (series[best],), series[0].SeriesInstanceUID)
            )
    inp = ReportInput(
        study, 4, HEAD, FakeWeights(HEAD.id, "real"), "torch", findings, [*first, *second]
    )
    sr = sr_of(inp)
    reported = read_findings(sr)
    assert [f.identifier for f in reported] == [
        "hemorrhage (series 2)",
        "fracture (series 2)",
        "hemorrhage (series 3)",
        "fracture (series 3)",
    ]  # "normal" has report: false
    assert [f.sources for f in reported] == [(first[1].SOPInstanceUID,)] * 2 + [
        (second[0].SOPInstanceUID,)
    ] * 2
    assert [f.series[0] for f in reported] == [first[0].SeriesInstanceUID] * 2 + [
        second[0].SeriesInstanceUID
    ] * 2
    assert [f.evaluation for f in reported] == ["Absent", "Present"] * 2  # 0.2<0.4, 0.5>=0.3
    assert library_images(sr) == [first[1].SOPInstanceUID, second[0].SOPInstanceUID]
    referenced = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert sum(len(s.ReferencedSOPSequence) for s in referenced) == 5  # all evidence
    assert sr.OtherPatientIDsSequence[0].PatientID == "OTHER-CT-1"
    assert sr.PatientIdentityRemoved == "YES" and sr.DeidentificationMethod
    assert "CodingSchemeIdentificationSequence" not in sr
    descriptors = {concept(i) for i in items(sr) if i.RelationshipType == "HAS ACQ CONTEXT"}
    assert {"112227", "110910", "110911", "111026", "112225", "110903", "110909"} <= descriptors
    assert "intended use" in " ".join(algorithm_texts(sr)["111002"])
    assert dciodvfy_errors(save(sr, tmp_path / "ct-sr.dcm")) == []


def test_bone_study_scope_mean_lists_every_source(tmp_path: Path) -> None:
    first = header("RG3_UNCR.dcm")
    second = deepcopy(first)
    second.SOPInstanceUID = derived_uid("test-bone", "2")
    second.InstanceNumber = 2
    label = BONE.labels[0]
    inp = ReportInput(
        first.StudyInstanceUID,
        1,
        BONE,
        FakeWeights(BONE.id, "real"),
        "torch",
        [Finding(label, 0.625, (first, second), None)],
        [first, second],
    )
    sr = sr_of(inp)
    (finding,) = read_findings(sr)
    assert finding.sources == (first.SOPInstanceUID, second.SOPInstanceUID)
    assert (finding.identifier, finding.evaluation) == ("lesion", "Present")
    assert library_images(sr) == [first.SOPInstanceUID, second.SOPInstanceUID]
    assert "OtherPatientIDs" not in sr and "OtherPatientIDsSequence" not in sr
    assert not any(
        p.startswith(("model card", "intended use")) for p in algorithm_texts(sr)["111002"]
    )  # no model card
    assert dciodvfy_errors(save(sr, tmp_path / "bone-sr.dcm")) == []


def test_invalid_source_values_do_not_stop_the_report(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inp = chest_input()
    source = deepcopy(inp.evidence[0])
    raw(source, "PatientName", "Doe^Jane=x=y=z")
    for keyword, value in {
        "PatientSex": "Q",
        "PatientBirthDate": "19xx0101",
        "StudyDate": "2004-08-26",  # the pre-3.0 form: fixed
        "StudyTime": "25:99",
        "SpecificCharacterSet": "ISO_IR 999",
        "PixelSpacing": "abc\\",
        "Modality": "cr?",
        "Rows": "many",  # US given as text: unreadable
        "PatientAge": "4711 years",  # invalid AS: pydicom warns quoting it
        "OtherPatientIDs": "Doe-4711\\Jane-4711",
    }.items():
        raw(source, keyword, value)
    findings = [replace(f, sources=(source,)) for f in inp.findings]
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sr = sr_of(replace(inp, findings=findings, evidence=[source]))
    # Type 2: left empty; Type 3: left out; a date in the old form: fixed; valid: copied
    assert (sr.PatientName, sr.PatientSex, sr.PatientBirthDate, sr.StudyTime) == ("", "", "", "")
    assert sr.StudyDate == "20040826"
    assert "PatientAge" not in sr
    assert sr.OtherPatientIDs == ["Doe-4711", "Jane-4711"]
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    assert library_images(sr) == [source.SOPInstanceUID]
    assert dciodvfy_errors(save(sr, tmp_path / "odd.dcm")) == []
    said = " ".join([r.getMessage() for r in caplog.records] + [str(w.message) for w in caught])
    assert "PatientSex" in said and "PatientBirthDate" in said  # named, not quoted
    for phi in ("Doe", "Jane", "9RG1", "19xx", "26210", "4711"):
        assert phi not in said


def test_a_patient_id_in_patient_sex_and_a_missing_name(tmp_path: Path) -> None:
    inp = chest_input()
    source = deepcopy(inp.evidence[0])
    source.PatientID = "PID-4711"
    del source.PatientName
    raw(source, "PatientSex", "PID-4711")
    raw(source, "PatientBirthDate", "20230231")  # no such day
    raw(source, "PatientWeight", "heavy")  # DS that is not a number: Type 3, left out
    findings = [replace(f, sources=(source,)) for f in inp.findings]
    sr = sr_of(replace(inp, findings=findings, evidence=[source]))
    assert (sr.PatientID, sr.PatientSex, sr.PatientBirthDate) == ("PID-4711", "", "")
    assert sr.PatientName == "" and "PatientWeight" not in sr
    assert dciodvfy_errors(save(sr, tmp_path / "sex.dcm")) == []


def test_images_not_analysed_are_named_in_the_report(tmp_path: Path) -> None:
    inp = chest_input()
    skipped = [
        SkippedImage("1.2.826.0.1.3680043.8.498.1", "image is constant (blank)"),
        SkippedImage("1.2.826.0.1.3680043.8.498.2", "Rows (0028,0010) is missing"),
    ]
    sr = sr_of(replace(inp, skipped=skipped))
    assert read_not_analysed(sr) == [(s.sop_instance_uid, s.reason) for s in skipped]
    (container,) = [i for i in sr.ContentSequence[0:] if concept(i) == "C0034375"]
    assert [concept(i) for i in sr.ContentSequence][-2:] == ["126010", "C0034375"]  # TID 1500 order
    assert all(i.ValueType == "TEXT" for i in container.ContentSequence)
    schemes = [str(i.CodingSchemeDesignator) for i in sr.CodingSchemeIdentificationSequence]
    assert "99DCMNODE" in schemes
    assert dciodvfy_errors(save(sr, tmp_path / "skipped.dcm")) == []
    assert read_not_analysed(sr_of(inp)) == []


def raw(ds: Dataset, keyword: str, value: str) -> None:
    """Put a value into a header as read from a file, without pydicom's checks."""
    tag = Tag(keyword)
    data = value.encode()
    data += b" " * (len(data) % 2)
    ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(data), data, 0, True, True)


def strip_pixel_description(ds: Dataset) -> None:
    for keyword in ("Rows", "Columns", "SamplesPerPixel", "PixelRepresentation"):
        delattr(ds, keyword)


def phi_header() -> Dataset:
    ds = header("RG1_UNCR.dcm")
    ds.PatientName = "Secret^Person"
    ds.PatientID = "PID-4711"
    return ds


@pytest.mark.parametrize(
    "spoil",
    [
        lambda ds: setattr(ds, "Modality", "SR"),  # not a valid source image
        lambda ds: strip_pixel_description(ds),
        lambda ds: setattr(ds, "SOPClassUID", "not a uid Secret^Person PID-4711"),
        lambda ds: delattr(ds, "SOPInstanceUID"),
        lambda ds: setattr(ds, "StudyInstanceUID", "1.2.3.4"),  # not the analysed study
    ],
)
def test_report_errors_do_not_quote_patient_data(spoil) -> None:  # type: ignore[no-untyped-def]
    inp = chest_input()
    source = phi_header()
    study = source.StudyInstanceUID
    with warnings.catch_warnings():  # the test's own setting of a bad value
        warnings.simplefilter("ignore")
        spoil(source)
    findings = [replace(f, sources=(source,)) for f in inp.findings]
    with pytest.raises(ReportError) as caught:
        sr_of(replace(inp, study_uid=study, findings=findings, evidence=[source]))
    text = str(caught.value)
    assert "Secret" not in text and "PID-4711" not in text and "Person" not in text


def test_inconsistent_findings_are_refused() -> None:
    inp = chest_input()
    with pytest.raises(ReportError, match="not in"):
        sr_of(replace(inp, findings=[replace(inp.findings[0], probability=1.5)]))
    with pytest.raises(ReportError, match="twice"):
        sr_of(replace(inp, findings=[inp.findings[0]] * 2))
    with pytest.raises(ReportError, match="scope"):
        sr_of(replace(inp, findings=[replace(inp.findings[0], scope_key="1.2")]))
    hidden = replace(FAKE, labels=[replace(label, report=False) for label in FAKE.labels])
    with pytest.raises(ReportError, match="no reportable"):
        sr_of(replace(inp, manifest=hidden, findings=[]))


def test_warm_up_builds_an_sr_and_logs_nothing_above_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sr = warm_up_sr()
    assert read_findings(sr)[0].finding == "Warm-up finding"
    for manifest in (FAKE, HEAD):
        assert len(read_findings(warm_up_sr(manifest, backend="torch"))) == sum(
            label.report for label in manifest.labels
        )
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_profiles_are_looked_up_by_name() -> None:
    assert set(PROFILES) == {"tid1500", "text_sr", "key_image", "pdf"}
    assert builder("tid1500") is build_tid1500
    (sr,) = build("tid1500", chest_input())
    assert sr.Modality == "SR"
    with pytest.raises(ReportError, match="unknown report profile"):
        builder("text-sr")


def test_read_findings_reads_a_saved_file(tmp_path: Path) -> None:
    sr = sr_of(chest_input())
    path = save(sr, tmp_path / "sr.dcm")
    assert read_findings(dcmread(path)) == read_findings(sr)
    empty = Dataset()
    empty.file_meta = FileMetaDataset()
    assert read_findings(empty) == []


@dataclass(frozen=True)
class FakeImage:
    header: Dataset


@dataclass(frozen=True)
class FakeAggregate:
    scope_key: str | None
    probabilities: npt.NDArray[np.float32]
    sources: list[list[FakeImage]]


@dataclass(frozen=True)
class FakeOutcome:
    aggregates: list[FakeAggregate]
    images: list[FakeImage]
    skipped: list[SkippedImage] = field(default_factory=list)


@dataclass(frozen=True)
class FakeModel:
    manifest: Any
    weights: FakeWeights
    backend: str = "onnxruntime"


def shipped_manifests() -> list[Any]:
    from models.registry import ModelRegistry

    return ModelRegistry.load(None).manifests()


def test_build_report_turns_a_head_ct_outcome_into_a_series_sr(tmp_path: Path) -> None:
    (ich,) = [m for m in shipped_manifests() if m.aggregation.scope == "series"]
    slices = ct_series(3, derived_uid("test-series", "ich"), 5)
    images = [FakeImage(ds) for ds in slices]
    count = len(ich.labels)
    probabilities = np.linspace(0.1, 0.9, count).astype(np.float32)
    unit = FakeAggregate(slices[0].SeriesInstanceUID, probabilities, [[images[2]]] * count)
    model = FakeModel(ich, FakeWeights(ich.id, "real"))
    (sr,) = build_report(
        "tid1500", FakeOutcome([unit], images), model, slices[0].StudyInstanceUID, 3
    )
    reported = read_findings(sr)
    assert len(reported) == sum(label.report for label in ich.labels)
    assert {f.sources for f in reported} == {(slices[2].SOPInstanceUID,)}
    assert reported[0].identifier == f"{ich.labels[0].name} (series 5)"
    assert sr.SeriesDescription == f"AI {ich.name}"[:64]
    assert dciodvfy_errors(save(sr, tmp_path / "ich.dcm")) == []
    with pytest.raises(ReportError, match="outputs"):
        short = FakeAggregate(None, probabilities[:1], [[images[0]]])
        build_report("tid1500", FakeOutcome([short], images), model, "1.2", 1)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_shipped_manifests_warm_up_to_valid_srs(index: int, tmp_path: Path) -> None:
    manifest = sorted(shipped_manifests(), key=lambda m: m.id)[index]
    sr = warm_up_sr(manifest, backend="torch", precision="bf16", device="cuda")
    assert len(read_findings(sr)) == sum(label.report for label in manifest.labels)
    parameters = algorithm_texts(sr)["111002"]
    assert {"backend torch", "precision bf16", "device cuda"} <= set(parameters)
    assert not [p for p in parameters if p.startswith("engine ")]
    assert all("UNTRAINED" in name for name in algorithm_texts(sr)["111001"])
    assert dciodvfy_errors(save(sr, tmp_path / f"{manifest.id}.dcm")) == []


def test_warm_up_sr_names_the_engine(tmp_path: Path) -> None:
    sr = warm_up_sr(backend="tensorrt", precision="int8", engine_key="k" * 40, device="cuda")
    parameters = algorithm_texts(sr)["111002"]
    assert {"backend tensorrt", "precision int8", "device cuda", f"engine {'k' * 40}"} <= set(
        parameters
    )
    assert "precision fp32" in algorithm_texts(warm_up_sr())["111002"]
    assert dciodvfy_errors(save(sr, tmp_path / "warm-trt.dcm")) == []


@pytest.mark.parametrize(
    "sop_class",
    ["1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.5", "1.2.826.0.1.3680043.8.498.77"],
)
def test_retired_and_private_sop_classes_are_referenced_as_they_are(
    sop_class: str, tmp_path: Path
) -> None:
    """highdicom's tables lack retired (US, NM) and private classes; the report still builds."""
    inp = chest_input()
    source = deepcopy(inp.evidence[0])
    source.SOPClassUID = sop_class
    findings = [replace(f, sources=(source,)) for f in inp.findings]
    sr = sr_of(replace(inp, findings=findings, evidence=[source]))
    (study,) = sr.CurrentRequestedProcedureEvidenceSequence
    (reference,) = study.ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert reference.ReferencedSOPClassUID == sop_class
    assert library_images(sr) == [source.SOPInstanceUID]
    save(sr, tmp_path / "retired.dcm")


def test_title_language_and_finding_sites(tmp_path: Path) -> None:
    sr = sr_of(chest_input())
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"
    assert sr.ConceptNameCodeSequence[0].CodingSchemeDesignator == "DCM"
    (language,) = [i for i in sr.ContentSequence if concept(i) == "121049"]
    assert language.RelationshipType == "HAS CONCEPT MOD"
    assert (
        language.ConceptCodeSequence[0].CodeValue,
        language.ConceptCodeSequence[0].CodingSchemeDesignator,
    ) == ("en-US", "RFC5646")
    sites = {}
    for group in child(sr, "126010").ContentSequence:
        name = next(str(i.TextValue) for i in group.ContentSequence if concept(i) == "112039")
        (site,) = [i for i in group.ContentSequence if concept(i) == "363698007"]
        assert site.RelationshipType == "HAS CONCEPT MOD" and site.ValueType == "CODE"
        sites[name] = (
            site.ConceptCodeSequence[0].CodeValue,
            site.ConceptCodeSequence[0].CodingSchemeDesignator,
        )
    assert sites["Cardiomegaly"] == ("80891009", "SCT")  # the label's own site
    assert sites["Atelectasis"] == sites["Pneumothorax"] == ("39607008", "SCT")  # the manifest's
    assert len(sites) == len(FAKE.labels)
    assert dciodvfy_errors(save(sr, tmp_path / "sites.dcm")) == []
    # No site in the manifest or label: no Finding Site item.
    bone = ReportInput(
        header("RG3_UNCR.dcm").StudyInstanceUID, 1, BONE, FakeWeights(BONE.id, "real"), "torch",
        [Finding(BONE.labels[0], 0.5, (header("RG3_UNCR.dcm"),), None)], [header("RG3_UNCR.dcm")],
    )  # fmt: skip
    assert not [i for i in items(sr_of(bone)) if concept(i) == "363698007"]


def test_shipped_manifests_name_their_finding_sites() -> None:
    sites = {
        m.id: {m.finding_site_of(label).value for label in m.labels} for m in shipped_manifests()
    }
    assert sites["ich-headct-densenet121-rsna2019"] == {"12738006"}  # Brain
    assert sites["mura-densenet169-abnormality"] == {"272673000"}  # Bone structure
    assert "39607008" in sites["xrv-densenet121-res224-all"]  # Lung
    sr = warm_up_sr(next(m for m in shipped_manifests() if m.id.startswith("ich-")))
    found = {
        str(i.ConceptCodeSequence[0].CodeValue) for i in items(sr) if concept(i) == "363698007"
    }
    assert found == {"12738006"}


def test_a_manifest_finding_site_must_be_a_code() -> None:
    import yaml

    from dicom_node.core.errors import ManifestError
    from models.manifest import MANIFEST_DIR, load_manifest, parse_manifest

    data = yaml.safe_load((MANIFEST_DIR / "mura-densenet169-abnormality.yaml").read_text())
    data["finding_site"] = {"value": "272673000", "scheme": "SCT"}  # no meaning
    with pytest.raises(ManifestError, match=r"finding_site\.meaning"):
        parse_manifest(data, "bad.yaml")
    data["finding_site"] = None
    data["labels"][0]["finding_site"] = {"value": "71341001", "scheme": "SCT", "meaning": "Femur"}
    manifest = parse_manifest(data, "ok.yaml")
    assert manifest.finding_site_of(manifest.labels[0]).meaning == "Femur"  # type: ignore[union-attr]
    assert (
        load_manifest(MANIFEST_DIR / "mura-densenet169-abnormality.yaml").finding_site is not None
    )


def test_a_superseding_sr_references_its_predecessor_and_keeps_the_series(tmp_path: Path) -> None:
    from dicom_node.core.ledger import PriorReport
    from workers.outputs.findings import predecessor_key

    first = sr_of(chest_input())
    assert "PredecessorDocumentsSequence" not in first
    prior = PriorReport(
        sop_class_uid=str(first.SOPClassUID),
        sop_instance_uid=str(first.SOPInstanceUID),
        series_instance_uid=str(first.SeriesInstanceUID),
        study_uid=str(first.StudyInstanceUID),
    )
    later = replace(chest_input(), generation=2, predecessors={predecessor_key("tid1500"): prior})
    second = sr_of(later)
    assert second.SeriesInstanceUID == first.SeriesInstanceUID
    assert second.SOPInstanceUID != first.SOPInstanceUID and second.InstanceNumber == 2
    (study,) = second.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == first.StudyInstanceUID
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    (sop,) = series.ReferencedSOPSequence
    assert (sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID) == (
        first.SOPClassUID,
        first.SOPInstanceUID,
    )
    assert dciodvfy_errors(save(second, tmp_path / "second.dcm")) == []
    # Another profile's predecessor is not this one's.
    other = replace(chest_input(), predecessors={predecessor_key("text_sr"): prior})
    assert "PredecessorDocumentsSequence" not in sr_of(other)


def child(node: Dataset, code_value: str) -> Dataset:
    """The first content item of ``node`` with this concept name code value."""
    return next(i for i in node.ContentSequence if concept(i) == code_value)
