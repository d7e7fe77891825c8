"""One bad image never fails a study, and nothing the worker leaves behind quotes a header value.

Real parts: the ``analyze`` task run in this process with Celery's ``Task.apply``
(as tests/test_tasks.py does), a real Redis as broker and result backend, the
real ledger, the shipped head CT model on its demo weights, and a 20-slice head
CT series made from a real CT slice of pydicom-data (``693_UNCR.dcm``, through
:func:`dicom_node.app.samples.mixed_study`). A few slices are broken the ways
modalities break them; every slice carries invalid demographics holding the
patient's name and ID. The fuzz at the end mutates headers of a small study and
runs :func:`workers.pipeline.run.run_analysis` with a FAKE backend runner (zero
logits), since it tests headers, not the network.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import redis
from celery import Celery
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.tag import Tag
from pydicom.uid import RLELossless

from dicom_node.app.samples import MixedStudy, mixed_study
from dicom_node.app.status_view import render_text, to_json
from dicom_node.core.contract import ANALYZE_TASK, Analyze
from dicom_node.core.ledger import (
    AnalysisSnapshot,
    AnalysisState,
    Ledger,
)
from models.backends.base import LoadedModel
from models.registry import ModelRegistry
from models.weights.info import WeightsInfo
from tests.test_tasks import queued_analysis, record_queued, task_chain
from workers.context import WorkerContext
from workers.outputs import build_report
from workers.outputs.reader import read_findings, read_not_analysed
from workers.pipeline.run import run_analysis

ICH = "ich-headct-densenet121-rsna2019"
PATIENT_NAME = "E2E^MIXED^PATIENT"  # mixed_study's patient
PATIENT_ID = "E2E-MIXED-0042"
SECRETS = (PATIENT_NAME, PATIENT_ID, "MIXED", "19xx")


def assert_no_phi(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} found in {where}"


def raw(ds: Dataset, keyword: str, vr: str, value: bytes) -> None:
    """Put bytes into a header as a careless modality writes them, without pydicom's checks."""
    tag = Tag(keyword)
    value += b" " * (len(value) % 2)
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)


def corrupt_rle(ds: Dataset) -> None:
    ds.compress(RLELossless, generate_instance_uid=False)
    data = bytearray(ds.PixelData)
    data[16:80] = b"\xff" * 64  # the first fragment's item header and RLE header
    ds.PixelData = bytes(data)


def constant(ds: Dataset) -> None:
    ds.PixelData = np.full((ds.Rows, ds.Columns), 7, np.int16).tobytes()


BREAKS: dict[str, tuple[Callable[[Dataset], None], str | None]] = {
    # slice file: (how it is broken, the reason it is skipped with; None: it is analysed)
    "ct3.dcm": (corrupt_rle, "cannot decode pixel data: ValueError (1.2.840.10008.1.2.5 RLE"),
    "ct5.dcm": (
        lambda ds: setattr(ds, "PixelData", ds.PixelData[:1000]),
        "pixel data is truncated: 1000 bytes, 524288 expected",
    ),
    "ct7.dcm": (constant, "image is constant (blank)"),
    "ct9.dcm": (lambda ds: delattr(ds, "Rows"), "Rows (0028,0010) is missing"),
    "ct11.dcm": (
        lambda ds: setattr(ds, "PhotometricInterpretation", "PALETTE COLOR"),
        "photometric interpretation PALETTE COLOR is not supported",
    ),
    "ct13.dcm": (
        lambda ds: setattr(ds, "Modality", "SR"),
        "Modality SR is not an image modality",
    ),
    # header flaws the head CT model does not read: the slice is analysed
    "ct15.dcm": (lambda ds: raw(ds, "WindowCenter", "DS", b"abc\\def"), None),
    "ct17.dcm": (lambda ds: raw(ds, "BodyPartExamined", "US", b"\x07\x00"), None),
}


def bad_demographics(ds: Dataset) -> None:
    """The patient's ID in Patient's Sex, the name in Patient's Age, a bad date, no name."""
    raw(ds, "PatientSex", "CS", PATIENT_ID.encode())
    raw(ds, "PatientAge", "AS", PATIENT_NAME.encode())
    raw(ds, "PatientBirthDate", "DA", b"19xx0101")
    del ds.PatientName


@dataclass
class BrokenStudy:
    study: MixedStudy
    paths: list[str]
    skipped: dict[str, str]  # SOP Instance UID -> expected start of its reason
    analysed: list[str]


def broken_study(directory: Path) -> BrokenStudy:
    study = mixed_study(directory, ct_slices=20)
    paths, skipped, analysed = [], {}, []
    for path in sorted(p for p in study.files if p.name.startswith("ct")):
        ds = dcmread(path)
        bad_demographics(ds)
        uid = str(ds.SOPInstanceUID)
        brk, reason = BREAKS.get(path.name, (lambda ds: None, None))
        brk(ds)
        ds.save_as(path, enforce_file_format=False)
        paths.append(str(path))
        (analysed.append(uid) if reason is None else skipped.__setitem__(uid, reason))
    return BrokenStudy(study, paths, skipped, analysed)


pytestmark = pytest.mark.filterwarnings(
    "ignore:Call to deprecated setex:DeprecationWarning"  # Celery's Redis result backend
)


@pytest.fixture()
def node(
    tmp_path: Path, redis_url: str, models_dir: Path
) -> Iterator[tuple[Celery, WorkerContext, redis.Redis]]:
    app, ctx, client = task_chain(tmp_path, redis_url, models_dir, ICH, with_results=True)
    app.conf.task_store_eager_result = True  # apply() stores its result in Redis
    yield app, ctx, client
    ctx.ledger.dispose()
    client.flushdb()


def _analysis(ctx: WorkerContext, study_uid: str, paths: list[str]) -> Analyze:
    record_queued(ctx, study_uid, paths, sop_class="1.2.840.10008.5.1.4.1.1.2")  # CT Image
    return queued_analysis(ctx, study_uid, paths, ICH)


def _stored_result(client: redis.Redis, task_id: str) -> str:
    value = client.get(f"celery-task-meta-{task_id}")
    assert value is not None, "the result backend holds no result"
    return value.decode()


def test_one_bad_image_never_fails_the_study(
    node: tuple[Celery, WorkerContext, redis.Redis],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    app, ctx, client = node
    broken = broken_study(tmp_path / "study")
    request = _analysis(ctx, broken.study.study_uid, broken.paths)
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        result = app.tasks[ANALYZE_TASK].apply(
            kwargs={"request": request.model_dump()}, task_id=request.task_id
        )
    assert result.successful(), result.traceback
    outcome = result.result
    assert outcome["state"] == "reported", outcome
    assert (
        outcome["detail"].startswith("14 image(s)")
        and "6 image(s) not analysed" in outcome["detail"]
    )

    # the ledger: each bad slice with its own reason, the good ones reported on
    view = ctx.ledger.get(broken.study.study_uid)
    assert view is not None
    (done,) = view.analyses
    analysis: AnalysisSnapshot = done.analysis
    assert analysis.state is AnalysisState.REPORTED
    assert analysis.reason == "6 of 20 image(s) not analysed"
    recorded = {s.sop_instance_uid: s.reason for s in analysis.skipped}
    assert recorded.keys() == broken.skipped.keys()
    for uid, reason in recorded.items():
        assert reason.startswith(broken.skipped[uid]), (reason, broken.skipped[uid])

    # dicom-node status, text and JSON
    text = render_text([view])
    assert "not analysed: 6 images" in text
    for uid, reason in recorded.items():
        assert f"{uid}  {reason}" in text
    (study_json,) = to_json([view])
    skipped_json = study_json["analyses"][0]["skipped"]
    assert {(s["sop_instance_uid"], s["reason"]) for s in skipped_json} == set(recorded.items())

    # the report: the good slices analysed, the bad ones named, demographics made valid
    (report,) = done.reports
    sr = dcmread(report.report.path)
    assert sorted(read_not_analysed(sr)) == sorted(recorded.items())
    evidence = {
        str(i.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for i in series.ReferencedSOPSequence
    }
    assert evidence == set(broken.analysed)
    assert read_findings(sr)
    assert (sr.PatientID, sr.PatientName, sr.PatientSex, sr.PatientBirthDate) == (
        PATIENT_ID,
        "",
        "",
        "",
    )
    assert "PatientAge" not in sr

    # no patient name or ID anywhere the worker wrote to, but the report itself
    out, err = capfd.readouterr()
    assert_no_phi(out + err, "stdout/stderr")
    assert_no_phi("\n".join(r.getMessage() for r in caplog.records), "log records")
    assert_no_phi("\n".join(str(w.message) for w in shown), "warnings")
    assert_no_phi(json.dumps(outcome), "the task's return value")
    assert_no_phi(_stored_result(client, request.task_id), "the Redis result backend")
    assert_no_phi(render_text([view]) + json.dumps(to_json([view])), "dicom-node status")
    assert any("PatientSex" in r.getMessage() for r in caplog.records)  # named, not quoted


def test_an_analysis_with_no_usable_image_fails_with_a_reason_and_no_report(
    node: tuple[Celery, WorkerContext, redis.Redis], tmp_path: Path
) -> None:
    app, ctx, _ = node
    study = mixed_study(tmp_path / "study", ct_slices=2)
    paths = sorted(str(p) for p in study.files if p.name.startswith("ct"))
    for path, brk in zip(paths, (constant, lambda ds: delattr(ds, "BitsAllocated")), strict=True):
        ds = dcmread(path)
        brk(ds)
        ds.save_as(path, enforce_file_format=False)
    request = _analysis(ctx, study.study_uid, paths)
    result = app.tasks[ANALYZE_TASK].apply(kwargs={"request": request.model_dump()})
    assert result.successful(), result.traceback
    assert result.result["state"] == "failed"
    analysis = ctx.ledger.get_analysis(request.analysis_id)
    assert analysis is not None and analysis.state is AnalysisState.FAILED
    assert analysis.reason is not None
    assert analysis.reason.startswith("none of the 2 images could be analysed: ")
    assert sorted(s.reason for s in analysis.skipped) == [
        "BitsAllocated (0028,0100) is missing",
        "image is constant (blank)",
    ]
    view = ctx.ledger.get(study.study_uid)
    assert view is not None and not view.analyses[0].reports
    assert not (ctx.settings.data_dir / "reports").exists()


def test_an_exception_out_of_the_task_reaches_redis_without_values(
    node: tuple[Celery, WorkerContext, redis.Redis],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, ctx, client = node
    study = mixed_study(tmp_path / "study", ct_slices=1)
    paths = [str(p) for p in study.files if p.name.startswith("ct")]
    request = _analysis(ctx, study.study_uid, paths)

    def quoting(self: Ledger, *args: Any, **kwargs: Any) -> None:
        try:
            raise KeyError(PATIENT_NAME)
        except KeyError:  # chained, as a library's errors are
            raise ValueError(f"Invalid value for VR LO: '{PATIENT_ID}' (PatientID)") from None

    monkeypatch.setattr(Ledger, "add_report", quoting)
    caplog.set_level(logging.DEBUG)
    result = app.tasks[ANALYZE_TASK].apply(
        kwargs={"request": request.model_dump()}, task_id=request.task_id
    )
    assert isinstance(result.result, ValueError)
    stored = _stored_result(client, request.task_id)
    assert json.loads(stored)["status"] == "FAILURE"
    assert_no_phi(stored, "the Redis result backend")
    assert_no_phi(str(result.traceback), "the task's traceback")
    assert_no_phi("\n".join(r.getMessage() for r in caplog.records), "log records")
    assert "ValueError (PatientID)" in stored


# --- fuzz -------------------------------------------------------------------------------------


class FakeRunner:
    """FAKE backend: zero logits for every image (the fuzz tests headers, not the model)."""

    name = "FAKE"
    device = "cpu"

    def __init__(self, labels: int) -> None:
        self.labels = labels

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return np.zeros((batch.shape[0], self.labels), np.float32)


def _fake_models() -> list[LoadedModel]:
    models = []
    for manifest in ModelRegistry.load(None).manifests():
        weights = WeightsInfo(manifest.id, "untrained-demo", "FAKE", "ab" * 32, None, "FAKE", 0.0)
        models.append(LoadedModel(manifest, weights, FakeRunner(len(manifest.labels))))
    return models


MODELS = _fake_models()
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
SERIES_UID = "1.2.826.0.1.3680043.8.498.2"
KEYWORDS = (
    "Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel",
    "PhotometricInterpretation", "NumberOfFrames", "WindowCenter", "WindowWidth",
    "VOILUTFunction", "RescaleSlope", "RescaleIntercept", "ImagePositionPatient",
    "ImageOrientationPatient", "InstanceNumber", "SOPInstanceUID", "SeriesInstanceUID",
    "StudyInstanceUID", "SOPClassUID", "Modality", "BodyPartExamined", "PatientSex",
    "PatientBirthDate", "PatientName", "PatientID", "PatientAge", "StudyDate", "StudyTime",
    "SpecificCharacterSet", "FrameOfReferenceUID", "PixelSpacing", "SeriesNumber",
    "ReferringPhysicianName", "PixelData",
)  # fmt: skip
VRS = ("US", "SS", "DS", "IS", "CS", "LO", "PN", "UI", "OB", "DA", "TM", "FD", "SH")
TEXTS = (
    "", "abc", "abc\\def", "40\\50", "-5", "0", "1", "3", "8", "16", "65535", "1e999", "nan",
    PATIENT_ID, PATIENT_NAME, "MONOCHROME1", "PALETTE COLOR", "RGB", "SR", "19xx0101",
    "20230231", "1.2.3", "LINEAR", "SIGMOID", "FOO",
)  # fmt: skip
MUTATION = st.tuples(
    st.sampled_from(KEYWORDS),
    st.one_of(st.none(), st.sampled_from(VRS)),  # None: the dictionary's VR
    st.one_of(st.none(), st.sampled_from(TEXTS).map(str.encode), st.binary(max_size=12)),
)  # value None: the attribute is removed


def _mutated(path: Path, k: int, mutations: list[tuple[str, str | None, bytes | None]]) -> None:
    ds = dcmread(str(get_testdata_file("CT_small.dcm")))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY_UID, SERIES_UID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{SERIES_UID}.{k}"
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    for keyword, vr, value in mutations:
        tag = Tag(keyword)
        if value is None:
            if tag in ds:
                del ds[tag]
        elif keyword == "PixelData":  # garbage or cut pixel data
            ds.PixelData = (value or b"\x00") * (len(ds.PixelData) // max(len(value), 1) // 2)
        else:
            raw(ds, keyword, vr or dictionary_VR(tag).split(" or ")[0], value)
    ds.save_as(path, enforce_file_format=False)


@settings(
    max_examples=30,
    deadline=None,
    phases=[Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    model=st.sampled_from(MODELS),
    study=st.lists(st.lists(MUTATION, max_size=4), min_size=1, max_size=3),
)
def test_fuzzed_headers_never_raise_and_every_image_is_accounted_for(
    model: LoadedModel, study: list[list[tuple[str, str | None, bytes | None]]], tmp_path: Path
) -> None:
    directory = tmp_path / "fuzz"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    paths = []
    for k, mutations in enumerate(study):
        path = directory / f"{SERIES_UID}.{k}.dcm"
        try:
            with warnings.catch_warnings():  # the test's own writing, not the node's
                warnings.simplefilter("ignore")
                _mutated(path, k, mutations)
        except Exception:  # pydicom refused to write it: no file, nothing to analyse
            continue
        paths.append(str(path))

    outcome = run_analysis(model, paths, STUDY_UID)  # never raises

    assert len(outcome.images) + len(outcome.skipped) == len(paths)
    for item in outcome.skipped:
        assert item.reason and item.sop_instance_uid
        assert_no_phi(item.reason, "a skip reason")
    if outcome.images and model.manifest.aggregation.scope != "image":
        # image-scope reports (one group per image and label) are slow to build: the
        # shipped image-scope manifest is fuzzed through run_analysis only
        (report,) = build_report("tid1500", outcome, model, STUDY_UID, 1)
        buffer = DicomBytesIO()
        report.save_as(buffer, enforce_file_format=True)
        assert dcmread(DicomBytesIO(buffer.getvalue())).SOPInstanceUID == report.SOPInstanceUID
