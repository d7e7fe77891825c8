"""Routing real sample files (pydicom-data), AE and description rules, and malformed headers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from models.manifest import MANIFEST_DIR
from models.registry import ModelRegistry
from models.routing import NO_SERIES, header_text, read_headers, route

CHEST = "xrv-densenet121-res224-all"
ICH = "ich-headct-densenet121-rsna2019"
MURA = "mura-densenet169-abnormality"


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry.load(None)


def header(name: str) -> tuple[str, Dataset]:
    path = get_testdata_file(name)
    assert isinstance(path, str), name
    return path, dcmread(path, stop_before_pixels=True)


def test_chest_cr_goes_to_the_chest_model_only(registry: ModelRegistry) -> None:
    path, ds = header("RG1_UNCR.dcm")  # CR, CHEST, PA, "THORAX"
    plan = route(registry, [(path, ds)], "ANY_AE")
    assert plan.model_ids == [CHEST]
    assert plan.matches[0].paths == [path] and plan.matches[0].series_uids == [ds.SeriesInstanceUID]
    reasons = {r.model_id: r.reason for r in plan.rejections}
    assert reasons[ICH] == "Modality CR not in [CT]"
    assert reasons[MURA].startswith("BodyPartExamined CHEST not in [EXTREMITY")


def test_tibia_cr_goes_to_the_bone_model_not_the_chest_model(registry: ModelRegistry) -> None:
    path, ds = header("RG3_UNCR.dcm")  # CR, EXTREMITY, AP, "Non-ossifying fibroma of distal tibia"
    plan = route(registry, [(path, ds)], None)
    assert plan.model_ids == [MURA]
    reasons = {r.model_id: r.reason for r in plan.rejections}
    assert reasons[CHEST] == "BodyPartExamined EXTREMITY not in [CHEST]"


def test_head_ct_slice_goes_to_the_hemorrhage_model_only(registry: ModelRegistry) -> None:
    # 693_UNCR.dcm has no BodyPartExamined and a "5/5mm Plain" series description;
    # its head reconstruction filter ("HEAD FILTER") is what routes it.
    path, ds = header("693_UNCR.dcm")
    assert "BodyPartExamined" not in ds and ds.FilterType == "HEAD FILTER"
    plan = route(registry, [(path, ds)], None)
    assert plan.model_ids == [ICH]
    assert {r.model_id: r.reason for r in plan.rejections} == {
        CHEST: "Modality CT not in [CR, DX]",
        MURA: "Modality CT not in [CR, DX]",
    }


def test_a_body_ct_is_not_a_head_ct(registry: ModelRegistry) -> None:
    path, ds = header("CT_small.dcm")
    plan = route(registry, [(path, ds)], None)
    assert plan.matches == []
    (reason,) = [r.reason for r in plan.rejections if r.model_id == ICH]
    assert "BodyPartExamined (none) not in [HEAD, BRAIN, SKULL]" in reason
    assert "StudyDescription does not match" in reason and "e+1" not in reason
    assert "FilterType" in reason


def test_a_mixed_study_fans_out_one_match_per_model(registry: ModelRegistry) -> None:
    instances = [
        header(n) for n in ("RG1_UNCR.dcm", "693_UNCR.dcm", "RG3_UNCR.dcm", "CT_small.dcm")
    ]
    plan = route(registry, instances, "MODALITY")
    assert plan.model_ids == [ICH, MURA, CHEST]
    by_model = {m.model_id: m for m in plan.matches}
    assert by_model[ICH].paths == [instances[1][0]]
    assert by_model[MURA].paths == [instances[2][0]]
    # every (series, model) pair that does not run says why: 4 series x 3 models - 3 matches
    assert len(plan.rejections) == 9
    plan = route(registry, instances, "MODALITY", enabled=[CHEST, "retired-model"])
    assert plan.model_ids == [CHEST] and {r.model_id for r in plan.rejections} == {CHEST}


def _ct(**attrs: object) -> Dataset:
    _, ds = header("693_UNCR.dcm")
    del ds.FilterType
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # lower-case 'brain', as sent
@pytest.mark.parametrize(
    "attrs",
    [
        {"BodyPartExamined": "HEAD"},
        {"BodyPartExamined": "brain"},
        {"StudyDescription": "CT Schädel nativ"},
        {"StudyDescription": "CT KOPF"},
        {"SeriesDescription": "Crâne 5mm"},
        {"SeriesDescription": "HEAD 5.0 J40s"},
    ],
)
def test_head_ct_by_body_part_or_description(
    registry: ModelRegistry, attrs: dict[str, str]
) -> None:
    assert route(registry, [("x.dcm", _ct(**attrs))], None).model_ids == [ICH]


def test_localizers_of_a_head_ct_are_left_out(registry: ModelRegistry) -> None:
    axial = _ct(BodyPartExamined="HEAD")
    scout = _ct(BodyPartExamined="HEAD", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    scout.SOPInstanceUID = generate_uid()
    plan = route(registry, [("axial.dcm", axial), ("scout.dcm", scout)], None)
    assert plan.matches[0].paths == ["axial.dcm"]
    (partial,) = [r for r in plan.rejections if r.model_id == ICH]
    assert partial.reason.startswith("1 of 2 instances: ImageType does not match")


def test_a_site_rule_on_the_calling_ae(tmp_path: Path) -> None:
    data = yaml.safe_load((MANIFEST_DIR / f"{CHEST}.yaml").read_text())
    data |= {
        "id": "site-msk",
        "routing": {"rules": [{"modalities": ["CR"], "calling_aes": ["SITE_CR"]}]},
    }
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "site-msk.yaml").write_text(yaml.safe_dump(data))
    registry = ModelRegistry.load(tmp_path / "manifests")
    instance = header("RG3_UNCR.dcm")
    assert route(registry, [instance], "site_cr").model_ids == [MURA, "site-msk"]
    plan = route(registry, [instance], "OTHER")
    assert plan.model_ids == [MURA]
    assert ("site-msk", "calling AE OTHER not in [SITE_CR]") in [
        (r.model_id, r.reason) for r in plan.rejections
    ]
    assert "calling AE (none)" in str(route(registry, [instance], None).rejections)


def test_pattern_rejections_never_quote_the_value(tmp_path: Path) -> None:
    """Free text may hold PHI: a rule on any keyword says which, never what the header held."""
    data = yaml.safe_load((MANIFEST_DIR / f"{CHEST}.yaml").read_text())
    data |= {
        "id": "site-odd",
        "routing": {"rules": [{"attributes": {"PatientName": "^ZZZ"}, "study_description": "x"}]},
    }
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "site-odd.yaml").write_text(yaml.safe_dump(data))
    path, ds = header("RG3_UNCR.dcm")
    plan = route(ModelRegistry.load(tmp_path / "manifests"), [(path, ds)], None)
    (reason,) = [r.reason for r in plan.rejections if r.model_id == "site-odd"]
    assert "does not match" in reason
    assert str(ds.PatientName) not in reason and str(ds.StudyDescription) not in reason


def test_malformed_headers_are_rejections_not_errors(registry: ModelRegistry) -> None:
    empty = Dataset()
    multi = Dataset()
    multi.Modality = ["CR", "DX"]  # VM 1 attribute sent with two values
    multi.BodyPartExamined = "CHEST"
    multi.ViewPosition = "PA"
    multi.PhotometricInterpretation = "MONOCHROME1"
    multi.SeriesInstanceUID = "1.2.3"
    broken = Dataset()
    broken.SeriesInstanceUID = "1.2.4"
    # Undecodable raw elements, as a careless modality writes them.
    broken[Tag(0x0008, 0x0060)] = RawDataElement(
        Tag(0x0008, 0x0060), "CS", 4, b"\xff\xfe\x00\x01", 0, False, True
    )
    broken[Tag(0x0018, 0x0015)] = RawDataElement(
        Tag(0x0018, 0x0015), "US", 3, b"\x01\x02\x03", 0, False, True
    )
    wrong_type = Dataset()
    wrong_type.SeriesInstanceUID = "1.2.5"
    with pytest.warns(UserWarning, match="type 'int'"):
        wrong_type.add_new(0x00080060, "CS", 42)  # not text at all
    instances: list[tuple[str, Any]] = [
        ("empty", empty),
        ("multi", multi),
        ("broken", broken),
        ("typed", wrong_type),
        ("none", None),
    ]
    plan = route(registry, instances, None)  # must not raise
    assert plan.model_ids == [CHEST]  # the multi-valued Modality matches CR
    series = {r.series_uid for r in plan.rejections}
    assert NO_SERIES in series and {"1.2.4", "1.2.5"} <= series
    reasons = {(r.series_uid, r.model_id): r.reason for r in plan.rejections}
    assert reasons[(NO_SERIES, CHEST)] == "Modality (none) not in [CR, DX]"
    assert reasons[("1.2.4", CHEST)] == "Modality (value withheld) not in [CR, DX]"  # not a code
    assert reasons[("1.2.5", CHEST)] == "Modality (value withheld) not in [CR, DX]"
    assert header_text(broken, "BodyPartExamined") == ""  # undecodable US value
    assert header_text(None, "Modality") == ""


def raw(ds: Dataset, keyword: str, vr: str, value: bytes) -> Dataset:
    tag = Tag(keyword)
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    return ds


@pytest.mark.parametrize(
    ("keyword", "vr", "value"),
    [
        ("BodyPartExamined", "US", b"\x07\x00"),  # a number where a code belongs
        ("BodyPartExamined", "CS", b"E2E-MIXED-0042"),  # a patient ID
        ("BodyPartExamined", "PN", b"Doe^Jane"),  # a name
        ("BodyPartExamined", "SQ", b""),  # a sequence
        ("BodyPartExamined", "CS", b"CHEST\\ABDOMEN\\PID4711999"),  # multi-valued, one an ID
        ("ViewPosition", "DS", b"1e999"),
        ("Modality", "CS", b"\xff\xfe\x00\x01"),
        ("PhotometricInterpretation", "CS", b"MONOCHROME2\\smith"),
        ("SOPClassUID", "UI", b"not a uid Doe^Jane"),
    ],
)
def test_malformed_routing_attributes_never_raise_nor_quote(
    registry: ModelRegistry, keyword: str, vr: str, value: bytes
) -> None:
    path, source = header("RG1_UNCR.dcm")
    ds = raw(source.copy(), keyword, vr, value)
    ds.ViewPosition = ds.get("ViewPosition") or "PA"
    if keyword != "BodyPartExamined":
        ds.BodyPartExamined = "CHEST"
    plan = route(registry, [(path, ds)], None)  # must not raise
    said = " ".join(r.reason for r in plan.rejections)
    for secret in ("E2E-MIXED", "0042", "Doe", "Jane", "4711", "smith", "SMITH", "1e999"):
        assert secret not in said
    if keyword in ("BodyPartExamined", "ViewPosition") and CHEST not in plan.model_ids:
        assert f"{keyword} (value withheld) not in" in said or f"{keyword} (none) not in" in said


def test_coded_values_are_quoted_in_rejections(registry: ModelRegistry) -> None:
    path, ds = header("RG1_UNCR.dcm")
    ds = ds.copy()
    ds.BodyPartExamined = "KNEE"
    ds.ViewPosition = "PA"
    plan = route(registry, [(path, ds)], None)
    reasons = {r.model_id: r.reason for r in plan.rejections}
    assert reasons[CHEST] == "BodyPartExamined KNEE not in [CHEST]"


def test_read_headers_skips_what_is_not_dicom(tmp_path: Path) -> None:
    src, _ = header("RG1_UNCR.dcm")
    (tmp_path / "study" / "sub").mkdir(parents=True)
    (tmp_path / "study" / "sub" / "a.dcm").write_bytes(Path(src).read_bytes())
    (tmp_path / "study" / "notes.txt").write_text("not an image")
    instances, skipped = read_headers([tmp_path / "study", tmp_path / "gone.dcm"])
    assert [Path(p).name for p, _ in instances] == ["a.dcm"]
    assert "PixelData" not in instances[0][1]
    assert any("notes.txt: not DICOM" in line for line in skipped)
    assert any("gone.dcm: no such file" in line for line in skipped)
