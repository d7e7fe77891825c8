"""Every report profile, built from real pydicom-data headers, checked by real tools.

For each profile of :data:`workers.outputs.PROFILES` (``tid1500``, ``text_sr``,
``key_image`` -> [Secondary Capture, KOS], ``pdf``) and two real sources (the
RG1 chest CR and the 693 head CT), the builder's objects are written as Part 10
files and must pass:

- ``dciodvfy`` with no error (warnings are printed);
- dcmtk's ``dsrdump``, for every SR;
- dcmjs (OHIF's parser, ``tests/js/ohif_check.mjs``) for every object, and for
  TID 1500 the structure OHIF's SR viewer reads (root 126000, Image Library
  111028 with an Image Library Group 126200, Imaging Measurements 126010 with
  Measurement Groups 125007, each with Tracking Identifier 112039 and Tracking
  Unique Identifier 112040), and dcmjs' own ``MeasurementReport.generateToolState``.

A profile whose builder module does not exist yet is skipped, so the test checks
it as soon as it lands.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file

from tests.test_sr import HEAD, FakeWeights, chest_input, header
from tests.validators import dciodvfy, dcmjs_check, dsrdump
from workers.outputs import PROFILES, builder
from workers.outputs.findings import Finding, ReportInput

PROFILE_NAMES = ["tid1500", "text_sr", "key_image", "pdf"]
EXPECTED_BUILDERS = {
    "tid1500": "workers.outputs.tid1500:build_tid1500",
    "text_sr": "workers.outputs.text_sr:build_text_sr",
    "key_image": "workers.outputs.key_image:build_key_image",
    "pdf": "workers.outputs.pdf:build_pdf",
}
"""Where each profile's builder lives (the brief), used until PROFILES names it."""

SR_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR",
    "1.2.840.10008.5.1.4.1.1.88.59": "Key Object Selection Document",
}
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
KOS = "1.2.840.10008.5.1.4.1.1.88.59"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
SECONDARY_CAPTURE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
}


@dataclass(frozen=True)
class Case:
    """A real source image and the report input built from its header."""

    name: str
    source_file: str
    make_input: Callable[[], ReportInput]

    @property
    def source_path(self) -> Path:
        """The pydicom-data file, with pixel data (what a PACS would hold)."""
        return Path(str(get_testdata_file(self.source_file)))


def head_ct_input() -> ReportInput:
    """A series-scope head CT analysis (real weights) of the 693 head CT slice."""
    source = header("693_UNCR.dcm")
    probabilities = {"hemorrhage": 0.62, "fracture": 0.12, "normal": 0.3}
    findings = [
        Finding(label, probabilities[label.name], (source,), source.SeriesInstanceUID)
        for label in HEAD.labels
    ]
    return ReportInput(
        study_uid=source.StudyInstanceUID,
        generation=1,
        manifest=HEAD,
        weights=FakeWeights(HEAD.id, "real"),
        backend="onnxruntime",
        findings=findings,
        evidence=[source],
    )


CASES = {
    "chest-cr": Case("chest-cr", "RG1_UNCR.dcm", chest_input),
    "head-ct": Case("head-ct", "693_UNCR.dcm", head_ct_input),
}


class PixelExplainer:
    """Test stand-in for ``workers.pipeline.explain.explainer_for``: real source pixels.

    The display image is the pydicom-data source's pixels, windowed to its full
    range and shown as MONOCHROME2 (inverted for MONOCHROME1), ``(Rows, Columns)
    uint8``; the heat map is a centred Gaussian, ``(Rows, Columns) float32`` in
    [0, 1]. The saliency method itself is tested with the key image profile; here
    only the objects' validity matters.
    """

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def explain(self, header: Dataset, label_name: str) -> Any:
        from workers.outputs.findings import Saliency  # type: ignore[attr-defined]

        ds = dcmread(self.files[str(header.SOPInstanceUID)])
        pixels = ds.pixel_array.astype(np.float32)
        low, high = float(pixels.min()), float(pixels.max())
        image = (pixels - low) / max(high - low, 1.0)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            image = 1.0 - image
        rows, columns = pixels.shape
        y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
        heat: npt.NDArray[np.float32] = np.exp(
            -(((y - rows / 2) / (rows / 4)) ** 2 + ((x - columns / 2) / (columns / 4)) ** 2)
        ).astype(np.float32)
        return Saliency(image=(image * 255).astype(np.uint8), heat=heat, method="test Gaussian")


def profile_builder(profile: str) -> Callable[[ReportInput], Any]:
    """The profile's builder through :func:`workers.outputs.builder`; skip if not written yet."""
    target = PROFILES.get(profile, EXPECTED_BUILDERS[profile])
    module, _, function = target.partition(":")
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name == module:
            pytest.skip(f"profile {profile}: {module} is not written yet")
        raise
    if profile in PROFILES:
        return builder(profile)
    return getattr(importlib.import_module(module), function)


def report_input(profile: str, case: Case, generation: int = 1, variant: str = "") -> ReportInput:
    """The case's report input; the key image profile gets an explainer when it takes one.

    ``variant`` is appended to the model version: a different model version gives
    different report UIDs (whatever else the UIDs are derived from), so a test can
    send two sets of objects of one case to the same PACS.
    """
    inp = replace(case.make_input(), generation=generation)
    if variant:
        manifest = replace(inp.manifest, version=f"{inp.manifest.version}{variant}")  # type: ignore[type-var]
        inp = replace(inp, manifest=manifest)
    names = {f.name for f in dataclasses.fields(inp)}
    if profile == "key_image" and "explainer" in names:
        uid = str(inp.evidence[0].SOPInstanceUID)
        explainer = PixelExplainer({uid: case.source_path})
        extra: dict[str, Any] = {"explainer": explainer}  # a field the lead is adding
        inp = replace(inp, **extra)
    return inp


def build_objects(
    profile: str, case: Case, generation: int = 1, variant: str = ""
) -> list[Dataset]:
    """Build one profile's objects for a case (a single Dataset is wrapped in a list)."""
    built = profile_builder(profile)(report_input(profile, case, generation, variant))
    objects = [built] if isinstance(built, Dataset) else list(built)
    assert objects and all(isinstance(ds, Dataset) for ds in objects)
    return objects


def write_objects(objects: Sequence[Dataset], directory: Path, stem: str) -> list[Path]:
    """Write Part 10 files (``save_as(enforce_file_format=True)``), in sending order."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in enumerate(objects):
        path = directory / f"{stem}-{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def code(concept: dict[str, str] | None) -> tuple[str, str] | None:
    return (concept["value"], concept["scheme"]) if concept else None


def check_tid1500(sr: Dataset, seen: dict[str, Any], inp: ReportInput) -> None:
    """The OHIF structure of a TID 1500 SR, as dcmjs read it."""
    structure = seen["sr"]
    assert code(structure["root_concept"]) == ("126000", "DCM")
    assert structure["template"] == "1500"
    assert structure["image_library"] and structure["image_library_group"]
    assert structure["library_images"] == [str(h.SOPInstanceUID) for h in inp.evidence]
    assert structure["imaging_measurements"]
    groups = structure["groups"]
    reported = inp.reported()
    assert len(groups) == len(reported)
    for group, finding in zip(groups, reported, strict=True):
        assert group["tracking_identifier_value_type"] == "TEXT"
        assert group["tracking_identifier"].startswith(finding.label.name)
        assert group["tracking_uid_value_type"] == "UIDREF" and group["tracking_uid"]
        assert code(group["finding"]) == (finding.label.code.value, finding.label.code.scheme)
    uids = [g["tracking_uid"] for g in groups]
    assert len(set(uids)) == len(uids), "tracking unique identifiers repeat"
    assert structure["ohif_fatal"] == []
    for name, read in structure["adapters"].items():
        assert read["ok"], f"dcmjs {name} MeasurementReport.generateToolState: {read}"


@pytest.mark.parametrize("case_name", sorted(CASES))
@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_every_object_passes_dciodvfy_dsrdump_and_dcmjs(
    profile: str, case_name: str, tmp_path: Path
) -> None:
    case = CASES[case_name]
    inp = report_input(profile, case)
    objects = build_objects(profile, case)
    paths = write_objects(objects, tmp_path, f"{profile}-{case_name}")
    source = inp.evidence[0]
    said: list[str] = []
    for ds, path in zip(objects, paths, strict=True):
        errors, warnings = dciodvfy(path)
        said.append(f"{profile}/{case_name} {ds.SOPClassUID} dciodvfy: {len(warnings)} warnings")
        said += [f"  {w}" for w in sorted(set(warnings))]
        assert errors == [], f"dciodvfy errors in {profile} object {path.name}: {errors}"
        if ds.SOPClassUID in SR_CLASSES:
            tree = dsrdump(path)
            said.append(f"  dsrdump: {len(tree.splitlines())} lines")
            assert SR_CLASSES[ds.SOPClassUID] in tree.splitlines()[0]
    seen = dcmjs_check(paths)
    for ds, read in zip(objects, seen, strict=True):
        assert read["parsed"], read
        assert read["sop_class_uid"] == ds.SOPClassUID
        assert read["sop_instance_uid"] == ds.SOPInstanceUID
        assert (read["study_uid"], read["patient_id"]) == (
            source.StudyInstanceUID,
            source.PatientID,
        )
        said.append(f"  dcmjs: parsed {read['sop_class_uid']} modality {read['modality']}")
        if read["is_sr"] and "sr" in read:
            ohif = read["sr"]
            said.append(f"  dcmjs OHIF: fatal {ohif['ohif_fatal']}")
            said.append(f"  dcmjs OHIF legacy: {len(ohif['ohif_legacy'])} notes")
    print("\n".join(said))
    classes = [str(ds.SOPClassUID) for ds in objects]
    if profile == "tid1500":
        assert classes == [COMPREHENSIVE_3D_SR]
        check_tid1500(objects[0], seen[0], inp)
    elif profile == "text_sr":
        assert classes == [BASIC_TEXT_SR]
    elif profile == "key_image":
        assert len(classes) == 2 and classes[0] in SECONDARY_CAPTURE_CLASSES
        assert classes[1] == KOS
        (kos,) = [ds for ds in objects if ds.SOPClassUID == KOS]
        referenced = {
            str(sop.ReferencedSOPInstanceUID)
            for study in kos.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence
            for sop in series.ReferencedSOPSequence
        }
        assert str(objects[0].SOPInstanceUID) in referenced
    elif profile == "pdf":
        assert classes == [ENCAPSULATED_PDF]
        assert objects[0].Modality == "DOC"
    for ds in objects:
        assert (ds.StudyInstanceUID, ds.PatientID) == (source.StudyInstanceUID, source.PatientID)


def child(node: Dataset, concept: str) -> Dataset:
    """The first content item of ``node`` with this concept name code value."""
    return next(
        i for i in node.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == concept
    )


def test_the_checks_catch_a_broken_report(tmp_path: Path) -> None:
    """dciodvfy, dsrdump and the dcmjs OHIF check each fail on a report broken for them."""
    case = CASES["chest-cr"]
    (sr,) = build_objects("tid1500", case)
    (good,) = write_objects([sr], tmp_path, "good")
    # OHIF: a group without its Tracking Unique Identifier, an Image Library without a group
    broken = dcmread(good)
    group = child(broken, "126010").ContentSequence[0]
    group.ContentSequence = [
        i for i in group.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue != "112040"
    ]
    del child(broken, "111028").ContentSequence
    (ohif_broken,) = write_objects([broken], tmp_path, "ohif")
    good_seen, bad_seen = dcmjs_check([good, ohif_broken])
    assert good_seen["sr"]["ohif_fatal"] == []
    assert bad_seen["sr"]["ohif_fatal"] == [
        "Image Library has no Image Library Group 126200",
        "measurement group 0: no Tracking Unique Identifier 112040",
    ]
    assert bad_seen["sr"]["library_images"] == []
    # dciodvfy: a Type 1 attribute missing; dsrdump: a content item without its value
    spoilt = dcmread(good)
    del spoilt.CompletionFlag
    (no_flag,) = write_objects([spoilt], tmp_path, "no-flag")
    errors, _ = dciodvfy(no_flag)
    assert any("<CompletionFlag>" in e for e in errors), errors
    unreadable = dcmread(good)
    for item in child(unreadable, "126010").ContentSequence[0].ContentSequence:
        if item.ValueType == "UIDREF":
            del item.UID
    (no_uid,) = write_objects([unreadable], tmp_path, "no-uid")
    with pytest.raises(AssertionError, match="dsrdump failed"):
        dsrdump(no_uid)
