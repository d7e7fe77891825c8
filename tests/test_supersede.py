"""Exactly once across generations: a superseded report is never sent; a sent one is superseded
explicitly (Predecessor Documents Sequence, same series); report UIDs are deterministic.

The four cases measured on the old main (issue 8), each now fixed:

1. an image that arrives while the analysis runs: the running generation's report
   is recorded, never sent; the PACS gets one SR;
2. a late image after delivery: the new SR is in the same series and references
   the first one;
3. an SCP stopped mid-study and the whole study re-sent (duplicates included): the
   second SR supersedes the first;
4. a re-send of a SOP Instance UID with other pixels reopens the study; one with
   the same bytes does not.

Real parts: Redis, the node's Celery app with its ``analyze`` and ``deliver`` tasks,
the shipped chest model on demo weights (ONNX Runtime, CPU), real chest CR images
(pydicom-data), a Celery worker on the threads pool in this process, the node's
own C-STORE SCP (:class:`dicom_node.ingest.scp.StoreSCP`, real publisher) for
cases 3 and 4, and a pynetdicom storage SCP as the PACS
(:class:`tests.test_delivery.Pacs`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from dicom_node.core import dimse
from dicom_node.core.contract import ANALYZE_TASK, DELIVERY_QUEUE, Analyze
from dicom_node.core.ledger import (
    AnalysisSpec,
    AnalysisState,
    AnalysisView,
    DeliveryState,
    InstanceRecord,
    StudyState,
)
from dicom_node.ingest.scp import StoreSCP
from tests.conftest import free_port, queued_messages, wait_for
from tests.test_delivery import CHEST, Pacs, chain, delivery_worker, own_redis, pacs_factory
from workers.app import worker_queues
from workers.context import WorkerContext
from workers.tasks import analyze as analyze_module

__all__ = ["chain", "own_redis", "pacs_factory"]  # fixtures shared with tests/test_delivery.py

CR_CLASS = "1.2.840.10008.5.1.4.1.1.1"
Chain = Callable[..., tuple[Celery, WorkerContext]]


def study_files(source: Path, folder: Path, count: int) -> list[Path]:
    """``count`` images of one new study and series, each a copy of ``source`` (own SOP UID)."""
    folder.mkdir(parents=True)
    ds = dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    files = []
    for k in range(count):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.save_as(folder / f"{k}.dcm", enforce_file_format=True)
        files.append(folder / f"{k}.dcm")
    return files


def uid_of(path: Path, keyword: str = "SOPInstanceUID") -> str:
    return str(dcmread(path, stop_before_pixels=True).get(keyword))


def record(ctx: WorkerContext, path: Path) -> bool:
    """Record one image in the ledger as the C-STORE handler does."""
    ds = dcmread(path, stop_before_pixels=True)
    return ctx.ledger.record_instance(
        InstanceRecord(
            str(ds.StudyInstanceUID),
            str(ds.SeriesInstanceUID),
            str(ds.SOPInstanceUID),
            str(ds.SOPClassUID),
            ExplicitVRLittleEndian,
            str(path),
            "MODALITY",
        )
    )


def queue_analysis(
    ctx: WorkerContext, study_uid: str, generation: int, paths: list[Path]
) -> Analyze:
    """Queue a generation of a study and create its chest analysis (as ``route_study`` does)."""
    assert ctx.ledger.transition_study(study_uid, generation, StudyState.QUEUED)
    manifest = ctx.registry.get(CHEST)
    (row,) = ctx.ledger.create_analyses(
        study_uid, generation, [AnalysisSpec(manifest.id, manifest.version, len(paths))]
    )
    return Analyze(
        analysis_id=row.id,
        study_uid=study_uid,
        generation=generation,
        model_id=CHEST,
        model_version=manifest.version,
        paths=[str(p) for p in paths],
    )


def analyze(app: Celery, payload: Analyze) -> dict[str, Any]:
    """Run ``analyze`` in this process; its outcome (its ``deliver`` tasks go to Redis)."""
    result = app.tasks[ANALYZE_TASK].apply(kwargs={"request": payload.model_dump()})
    assert result.successful(), result.traceback
    outcome: dict[str, Any] = result.result
    return outcome


def analysis_view(ctx: WorkerContext, study_uid: str, analysis_id: int) -> AnalysisView:
    view = ctx.ledger.get(study_uid)
    assert view is not None
    (found,) = [a for a in view.analyses if a.analysis.id == analysis_id]
    return found


def delivered(ctx: WorkerContext, study_uid: str, analysis_id: int) -> bool:
    """Whether the analysis has reports and every one of their deliveries is delivered."""
    found = analysis_view(ctx, study_uid, analysis_id)
    states = [d.state for r in found.reports for d in r.deliveries]
    return bool(states) and all(s is DeliveryState.DELIVERED for s in states)


def report_sop(ctx: WorkerContext, study_uid: str, analysis_id: int) -> str:
    (report,) = analysis_view(ctx, study_uid, analysis_id).reports  # tid1500 only
    return report.report.sop_instance_uid


def evidence(sr: Dataset) -> set[str]:
    """SOP Instance UIDs in the SR's Current Requested Procedure Evidence Sequence."""
    return {
        str(sop.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }


def assert_supersedes(new: Dataset, old: Dataset) -> None:
    """``new`` is in ``old``'s series and names it in its Predecessor Documents Sequence."""
    assert new.SeriesInstanceUID == old.SeriesInstanceUID
    assert new.SOPInstanceUID != old.SOPInstanceUID
    assert new.SeriesNumber == old.SeriesNumber
    (study,) = new.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == old.StudyInstanceUID
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == old.SeriesInstanceUID
    (sop,) = series.ReferencedSOPSequence
    assert sop.ReferencedSOPClassUID == old.SOPClassUID
    assert sop.ReferencedSOPInstanceUID == old.SOPInstanceUID


def send(scp: StoreSCP, files: Sequence[Path | Dataset]) -> list[int]:
    """A modality: C-STORE ``files`` to the node over one association; the statuses."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CR_CLASS, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=scp.settings.ae_title)
    assert assoc.is_established
    try:
        return [
            int(assoc.send_c_store(f if isinstance(f, Dataset) else dcmread(f)).Status)
            for f in files
        ]
    finally:
        assoc.release()


def full_worker(app: Celery) -> AbstractContextManager[Any]:
    """A real Celery worker on every queue of the chest model's worker, in this process."""
    return start_worker(
        app,
        pool="threads",
        concurrency=2,
        perform_ping_check=False,
        queues=worker_queues([CHEST]),
        shutdown_timeout=60,
    )


@pytest.fixture
def scp_factory() -> Iterator[Callable[..., StoreSCP]]:
    started: list[StoreSCP] = []

    def start(ctx: WorkerContext) -> StoreSCP:
        scp = StoreSCP(ctx.settings)  # the real Celery publisher, to this test's Redis
        scp.start()
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()


def test_an_image_arriving_during_inference_supersedes_the_running_report_unsent(
    chain: Chain,
    pacs_factory: Callable[..., Pacs],
    tmp_path: Path,
    cr_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pacs = pacs_factory().start()
    app, ctx = chain(destinations=[pacs.destination()])
    first, late = study_files(cr_path, tmp_path / "study", 2)
    study_uid = uid_of(first, "StudyInstanceUID")
    record(ctx, first)
    running = queue_analysis(ctx, study_uid, 1, [first])
    real = analyze_module.run_analysis

    def late_image_arrives(*args: Any, **kwargs: Any) -> Any:
        outcome = real(*args, **kwargs)
        assert record(ctx, late)  # stored by the SCP while the model ran
        return outcome

    with monkeypatch.context() as m:
        m.setattr(analyze_module, "run_analysis", late_image_arrives)
        outcome = analyze(app, running)
    assert outcome["state"] == AnalysisState.SUPERSEDED and outcome["outcome"] == "skipped"
    old = analysis_view(ctx, study_uid, running.analysis_id)
    assert old.analysis.state is AnalysisState.SUPERSEDED
    (old_report,) = old.reports  # recorded ...
    assert Path(old_report.report.path).is_file()
    assert [d.state for d in old_report.deliveries] == [DeliveryState.SUPERSEDED]  # ... not sent
    client = ctx_client(ctx)
    assert not queued_messages(client, DELIVERY_QUEUE)  # no deliver task was published

    current = queue_analysis(ctx, study_uid, 2, [first, late])
    assert analyze(app, current)["state"] == AnalysisState.REPORTED
    with delivery_worker(app):
        wait_for(lambda: delivered(ctx, study_uid, current.analysis_id), 30, "the new report")
    (sr,) = pacs.received  # exactly one SR at the PACS: the current generation's
    assert sr.SOPInstanceUID == report_sop(ctx, study_uid, current.analysis_id)
    assert sr.SOPInstanceUID != old_report.report.sop_instance_uid
    assert evidence(sr) == {uid_of(first), uid_of(late)}
    assert "PredecessorDocumentsSequence" not in sr  # the superseded one never went out
    assert [d.state for d in old_report.deliveries] == [DeliveryState.SUPERSEDED]


def ctx_client(ctx: WorkerContext) -> Any:
    import redis

    return redis.Redis.from_url(ctx.settings.broker_url or "")


def test_a_late_image_after_delivery_supersedes_in_the_same_series(
    chain: Chain, pacs_factory: Callable[..., Pacs], tmp_path: Path, cr_path: Path
) -> None:
    pacs = pacs_factory().start()
    app, ctx = chain(destinations=[pacs.destination()])
    first, late = study_files(cr_path, tmp_path / "study", 2)
    study_uid = uid_of(first, "StudyInstanceUID")
    record(ctx, first)
    one = queue_analysis(ctx, study_uid, 1, [first])
    with delivery_worker(app):
        assert analyze(app, one)["state"] == AnalysisState.REPORTED
        wait_for(lambda: delivered(ctx, study_uid, one.analysis_id), 30, "the first report")
        assert record(ctx, late)  # the late image reopens the study as generation 2
        two = queue_analysis(ctx, study_uid, 2, [first, late])
        assert analyze(app, two)["state"] == AnalysisState.REPORTED
        wait_for(lambda: delivered(ctx, study_uid, two.analysis_id), 30, "the second report")
    old, new = pacs.received
    assert old.SOPInstanceUID == report_sop(ctx, study_uid, one.analysis_id)
    assert new.SOPInstanceUID == report_sop(ctx, study_uid, two.analysis_id)
    assert "PredecessorDocumentsSequence" not in old
    assert_supersedes(new, old)
    assert (old.InstanceNumber, new.InstanceNumber) == (1, 2)
    assert evidence(old) == {uid_of(first)} and evidence(new) == {uid_of(first), uid_of(late)}


def test_a_study_resent_whole_after_the_scp_stopped_mid_study_supersedes_the_first_report(
    chain: Chain,
    pacs_factory: Callable[..., Pacs],
    scp_factory: Callable[..., StoreSCP],
    tmp_path: Path,
    cr_path: Path,
) -> None:
    pacs = pacs_factory().start()
    app, ctx = chain(
        destinations=[pacs.destination()],
        host="127.0.0.1",
        port=free_port(),
        study_quiet_seconds=1.0,
    )
    files = study_files(cr_path, tmp_path / "study", 4)
    study_uid = uid_of(files[0], "StudyInstanceUID")
    with full_worker(app):
        scp = scp_factory(ctx)
        assert send(scp, files[:2]) == [dimse.SUCCESS] * 2  # half the study ...
        scp.stop()  # ... then the SCP goes away
        scp = scp_factory(ctx)  # and comes back
        wait_for(lambda: len(pacs.received) == 1, 60, "the report of the first half")
        assert send(scp, files) == [dimse.SUCCESS] * 4  # the whole study again
        wait_for(lambda: len(pacs.received) == 2, 60, "the report of the whole study")
    view = ctx.ledger.get(study_uid)
    assert view is not None
    assert view.study.generation == 2 and view.study.instance_count == 4
    old, new = pacs.received
    assert evidence(old) == {uid_of(f) for f in files[:2]}
    assert evidence(new) == {uid_of(f) for f in files}
    assert_supersedes(new, old)
    states = sorted((a.analysis.generation, a.analysis.state) for a in view.analyses)
    assert states == [(1, AnalysisState.REPORTED), (2, AnalysisState.REPORTED)]


def test_a_resend_with_changed_pixels_reopens_the_study_and_identical_bytes_do_not(
    chain: Chain,
    pacs_factory: Callable[..., Pacs],
    scp_factory: Callable[..., StoreSCP],
    tmp_path: Path,
    cr_path: Path,
) -> None:
    pacs = pacs_factory().start()
    app, ctx = chain(
        destinations=[pacs.destination()],
        host="127.0.0.1",
        port=free_port(),
        study_quiet_seconds=0.5,
    )
    (image,) = study_files(cr_path, tmp_path / "study", 1)
    study_uid = uid_of(image, "StudyInstanceUID")
    original = dcmread(image)
    with full_worker(app):
        scp = scp_factory(ctx)
        assert send(scp, [original]) == [dimse.SUCCESS]
        wait_for(lambda: len(pacs.received) == 1, 60, "the first report")
        before = ctx.ledger.get(study_uid)
        assert before is not None and before.study.state is StudyState.ROUTED

        assert send(scp, [original]) == [dimse.SUCCESS]  # the same bytes again
        same = ctx.ledger.get(study_uid)  # recorded before the C-STORE answer
        assert same is not None and same.study.generation == 1
        assert same.study.state is StudyState.ROUTED and len(same.analyses) == 1

        changed = dcmread(image)
        pixels = bytearray(changed.PixelData)
        pixels[: len(pixels) // 2] = bytes(len(pixels) // 2)  # the PACS changed the pixels
        changed.PixelData = bytes(pixels)
        assert send(scp, [changed]) == [dimse.SUCCESS]
        reopened = ctx.ledger.get(study_uid)
        assert reopened is not None and reopened.study.generation == 2
        wait_for(lambda: len(pacs.received) == 2, 60, "the report of the changed image")
    view = ctx.ledger.get(study_uid)
    assert view is not None and view.study.generation == 2 and view.study.instance_count == 1
    (path,) = ctx.ledger.instance_paths(study_uid)
    assert dcmread(path).PixelData == changed.PixelData  # the stored file is the new one
    old, new = pacs.received
    assert evidence(old) == evidence(new) == {str(original.SOPInstanceUID)}
    assert_supersedes(new, old)
    assert sorted(a.analysis.generation for a in view.analyses) == [1, 2]


def test_report_uids_are_the_same_for_the_same_input_and_differ_for_other_instances(
    chain: Chain, tmp_path: Path, cr_path: Path
) -> None:
    first, second = study_files(cr_path, tmp_path / "study", 2)
    study_uid = uid_of(first, "StudyInstanceUID")

    def report_of(node: str, images: list[Path]) -> tuple[str, str]:
        """A node of its own analyses ``images`` (generation 1); its report's UIDs."""
        app, ctx = chain(data_dir=tmp_path / node)
        for path in images:
            record(ctx, path)
        payload = queue_analysis(ctx, study_uid, 1, images)
        assert analyze(app, payload)["state"] == AnalysisState.REPORTED
        (report,) = analysis_view(ctx, study_uid, payload.analysis_id).reports
        sr = dcmread(report.report.path)
        assert sr.SOPInstanceUID == report.report.sop_instance_uid
        assert sr.SeriesInstanceUID == report.report.series_instance_uid
        return str(sr.SeriesInstanceUID), str(sr.SOPInstanceUID)

    once = report_of("a", [first])
    again = report_of("b", [first])  # the same analysis run again
    other = report_of("c", [first, second])  # another instance set
    assert again == once
    assert other[1] != once[1]
    assert other[0] == once[0]  # every report of (study, model, profile) in one series


class WorkerKilledError(Exception):
    """Stands in for the worker being killed at a chosen point (not a DicomNodeError)."""


def test_a_worker_killed_before_superseding_leaves_no_pending_delivery(
    chain: Chain, tmp_path: Path, cr_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image arrives during inference and the worker dies after recording the
    reports, before marking their deliveries superseded: ``analyze`` delivered again
    marks them, publishes nothing, and they never go out."""
    app, ctx = chain()
    first, late = study_files(cr_path, tmp_path / "study", 2)
    study_uid = uid_of(first, "StudyInstanceUID")
    record(ctx, first)
    payload = queue_analysis(ctx, study_uid, 1, [first])
    real = analyze_module.run_analysis

    def late_image_arrives(*args: Any, **kwargs: Any) -> Any:
        outcome = real(*args, **kwargs)
        assert record(ctx, late)
        return outcome

    def killed(self: Any, analysis_id: int) -> int:
        raise WorkerKilledError("worker killed before superseding")

    with monkeypatch.context() as m:
        m.setattr(analyze_module, "run_analysis", late_image_arrives)
        m.setattr(type(ctx.ledger), "supersede_deliveries", killed)
        result = app.tasks[ANALYZE_TASK].apply(kwargs={"request": payload.model_dump()})
    assert not result.successful()
    (report,) = analysis_view(ctx, study_uid, payload.analysis_id).reports
    assert [d.state for d in report.deliveries] == [DeliveryState.PENDING]

    assert analyze(app, payload)["outcome"] == "skipped"  # acks_late: delivered again
    view = analysis_view(ctx, study_uid, payload.analysis_id)
    assert view.analysis.state is AnalysisState.SUPERSEDED
    (report,) = view.reports
    assert [d.state for d in report.deliveries] == [DeliveryState.SUPERSEDED]
    assert not queued_messages(ctx_client(ctx), DELIVERY_QUEUE)
