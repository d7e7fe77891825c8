"""Batching across studies: the dynamic batcher with a FAKE slow backend (tests/fakes).

Real parts: :class:`workers.batching.DynamicBatcher`, :func:`workers.pipeline.run.run_analysis`
with its preprocessing thread pool, real DICOM files (pydicom-data's ``CT_small.dcm``
under new UIDs, a marker patch making each image distinct) and the shipped chest
model's manifest and preprocessing. FAKE: the backend runner, which sleeps a fixed
time per batch as a GPU roughly does (none here) and records what each batch held.
Timing appears only as ratios (a STAT study's latency under load over its latency
on an idle batcher).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicom_node.core.errors import InferenceError
from models.manifest import Manifest
from models.preprocessing import Preprocessor
from models.registry import ModelRegistry
from tests.fakes.slow_backend import FakeSlowRunner, fake_model, fingerprint
from workers.batching import DynamicBatcher
from workers.pipeline.run import Outcome, run_analysis

CHEST = "xrv-densenet121-res224-all"


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return ModelRegistry.load(None).get(CHEST)


Study = tuple[str, list[str]]  # study UID, paths


def make_study(directory: Path, images: int, mark: int) -> Study:
    """A one-series CT study of ``images`` distinct slices (a marker patch per image)."""
    directory.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    for k in range(images):
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        pixels = ds.pixel_array.copy()
        pixels[:12, :12] = 40 * mark + 3 * k
        ds.PixelData = pixels.tobytes()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        path = directory / f"{k}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(str(path))
    return study_uid, paths


def owners(manifest: Manifest, studies: list[Study]) -> dict[str, str]:
    """Fingerprint of each preprocessed image -> its study UID."""
    pre = Preprocessor.from_manifest(manifest)
    return {fingerprint(pre(dcmread(p))): uid for uid, paths in studies for p in paths}


@pytest.fixture()
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(2, thread_name_prefix="preprocess")
    yield executor
    executor.shutdown(wait=True)


def _same(outcome: Outcome, reference: Outcome) -> None:
    assert [i.sop_instance_uid for i in outcome.images] == [
        i.sop_instance_uid for i in reference.images
    ]
    assert len(outcome.aggregates) == len(reference.aggregates)
    for got, want in zip(outcome.aggregates, reference.aggregates, strict=True):
        assert got.scope_key == want.scope_key
        np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-6)


def test_batches_fill_across_studies_and_each_analysis_gets_exactly_its_own_results(
    manifest: Manifest, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    studies = [make_study(tmp_path / f"s{i}", 7, mark=i) for i in range(4)]
    runner = FakeSlowRunner(len(manifest.labels), seconds=0.03)
    model = fake_model(manifest, runner)
    batcher = DynamicBatcher(model, max_batch=6, max_delay=0.05).start()
    try:
        with ThreadPoolExecutor(4) as analyses:  # a worker's threads pool
            futures = [
                analyses.submit(run_analysis, model, paths, uid, batcher=batcher, pool=pool)
                for uid, paths in studies
            ]
            outcomes = [f.result(60) for f in futures]
    finally:
        batcher.stop()

    owner = owners(manifest, studies)
    batches = [[owner[p] for p in batch] for batch in runner.batches]
    ran = Counter(p for batch in runner.batches for p in batch)
    assert set(ran) == set(owner) and set(ran.values()) == {1}  # every image run exactly once
    assert runner.calls < 28  # fewer backend calls than images ...
    assert any(len(set(b)) > 1 for b in batches)  # ... with batches holding several studies
    assert max(len(b) for b in batches) <= 6
    stats = batcher.stats()
    assert (stats.batches, stats.images) == (runner.calls, 28)
    assert stats.mean_batch_size > 1 and sum(stats.histogram.values()) == stats.batches

    spans = Counter(uid for batch in batches for uid in set(batch))
    assert all(spans[uid] >= 2 for uid, _ in studies)  # 7 images never fit one batch of 6
    for (uid, paths), outcome in zip(studies, outcomes, strict=True):
        assert "wait" in outcome.timings and "infer" not in outcome.timings
        _same(outcome, run_analysis(model, paths, uid))  # as if the study had run alone


def test_stat_images_are_batched_before_routine_ones_fifo_within_a_priority(
    manifest: Manifest,
) -> None:
    gate = threading.Event()
    runner = FakeSlowRunner(len(manifest.labels), gate=gate)
    batcher = DynamicBatcher(fake_model(manifest, runner), max_batch=2, max_delay=0.0).start()
    shape = manifest.input.chw

    def image(value: float) -> np.ndarray:
        return np.full(shape, value, np.float32)

    try:
        batcher.submit(image(0.0))  # taken at once; the backend then waits at the gate
        assert runner.entered.wait(10)
        order = [("routine", 1.0), ("routine", 2.0), ("stat", 3.0), ("routine", 4.0)]
        order += [("stat", 5.0), ("routine", 5.5)]
        futures = [batcher.submit(image(v), p) for p, v in order]  # type: ignore[arg-type]
        gate.set()
        for future in futures:
            future.result(10)
    finally:
        gate.set()
        batcher.stop()
    names = {fingerprint(image(v)): v for _, v in [("", 0.0), *order]}
    assert [[names[p] for p in batch] for batch in runner.batches] == [
        [0.0],
        [3.0, 5.0],  # both STAT images first, in arrival order
        [1.0, 2.0],
        [4.0, 5.5],
    ]


def test_a_stat_study_overtakes_a_queue_of_routine_studies(
    manifest: Manifest, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    """Five routine studies (80 images) wait in the batcher behind a batch in flight (the
    FAKE backend held at a gate, as a saturated GPU); a STAT study sent then is run next.

    Latency is counted in backend calls, the time a saturated GPU takes, so the bound
    does not depend on this machine's load: on an idle batcher the STAT study takes
    its own calls; behind the queue, at most one more (the batch already in flight).
    """
    routine = [make_study(tmp_path / f"r{i}", 16, mark=i) for i in range(5)]
    stat_uid, stat_paths = make_study(tmp_path / "stat", 8, mark=9)
    stat_prints = set(owners(manifest, [(stat_uid, stat_paths)]))
    gate = threading.Event()
    gate.set()
    runner = FakeSlowRunner(len(manifest.labels), seconds=0.05, gate=gate)
    model = fake_model(manifest, runner)
    batcher = DynamicBatcher(model, max_batch=8, max_delay=0.005).start()

    def run_stat() -> tuple[float, int]:
        """Seconds and backend calls from submission to the STAT study's last result."""
        calls, started = runner.calls, time.perf_counter()
        run_analysis(model, stat_paths, stat_uid, batcher=batcher, pool=pool, priority="stat")
        seconds = time.perf_counter() - started
        last = max(i for i, b in enumerate(runner.batches) if stat_prints & set(b))
        return seconds, last + 1 - calls

    done: dict[str, float] = {}

    def routine_study(uid: str, paths: list[str]) -> None:
        run_analysis(model, paths, uid, batcher=batcher, pool=pool)
        done[uid] = time.perf_counter()

    try:
        idle_seconds, idle_calls = min(run_stat() for _ in range(2))
        gate.clear()  # the GPU is busy: routine images pile up behind the batch in flight
        with ThreadPoolExecutor(6) as analyses:
            futures = [analyses.submit(routine_study, uid, paths) for uid, paths in routine]
            wait_until(lambda: runner.entered.is_set() and batcher.pending() >= 72, "queue")
            stat = analyses.submit(run_stat)
            wait_until(lambda: batcher.pending() >= 80, "the STAT images queued")
            gate.set()
            loaded_seconds, loaded_calls = stat.result(60)
            stat_done = time.perf_counter()
            for future in futures:
                future.result(60)
    finally:
        gate.set()
        batcher.stop()
    assert all(at > stat_done for at in done.values())  # it overtook every routine study
    assert loaded_calls <= idle_calls + 1  # behind the queue: only the batch in flight
    print(
        f"STAT study: idle {idle_calls} backend call(s), {idle_seconds * 1000:.0f} ms; behind "
        f"80 routine images {loaded_calls} call(s), {loaded_seconds * 1000:.0f} ms from "
        "submission (the gate held it)"
    )


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def test_a_backend_failure_fails_its_batch_and_the_batcher_keeps_serving(
    manifest: Manifest, tmp_path: Path
) -> None:
    shape = manifest.input.chw
    poison = np.full(shape, 0.25, np.float32)
    runner = FakeSlowRunner(
        len(manifest.labels), fail_when=lambda prints: fingerprint(poison) in prints
    )
    batcher = DynamicBatcher(fake_model(manifest, runner), max_batch=8, max_delay=0.3).start()
    try:
        failed = [batcher.submit(np.full(shape, v, np.float32)) for v in (0.1, 0.2)]
        failed.append(batcher.submit(poison, "stat"))
        for future in failed:  # one batch (300 ms deadline): all three fail with it
            with pytest.raises(InferenceError, match="FAKE backend failure"):
                future.result(10)
        ok = [batcher.submit(np.full(shape, v, np.float32)) for v in (0.1, 0.2)]
        rows = [future.result(10) for future in ok]
        assert all(row.shape == (len(manifest.labels),) for row in rows)
        stats = batcher.stats()
        assert (stats.batches, stats.failed_batches, stats.images) == (2, 1, 5)

        # through run_analysis: the analysis fails with the backend's error, as it did before
        uid, paths = make_study(tmp_path / "s", 2, mark=1)
        runner.fail_when = lambda prints: True
        with pytest.raises(InferenceError):
            run_analysis(fake_model(manifest, runner), paths, uid, batcher=batcher)
        runner.fail_when = None
        assert run_analysis(fake_model(manifest, runner), paths, uid, batcher=batcher).images
    finally:
        batcher.stop()


@pytest.mark.timeout(30)
def test_stop_never_hangs(manifest: Manifest) -> None:
    shape = manifest.input.chw

    def image(value: float) -> np.ndarray:
        return np.full(shape, value, np.float32)

    # queued images run first (drain), without waiting for their deadline
    runner = FakeSlowRunner(len(manifest.labels))
    batcher = DynamicBatcher(fake_model(manifest, runner), max_batch=8, max_delay=5.0).start()
    queued = [batcher.submit(image(v)) for v in (0.1, 0.2, 0.3)]
    started = time.monotonic()
    batcher.stop(timeout=10)
    assert time.monotonic() - started < 4.0 and not batcher.running
    assert all(f.result(0).shape == (len(manifest.labels),) for f in queued)
    with pytest.raises(InferenceError):
        batcher.submit(image(0.4))

    # a backend call that never returns: stop gives up after its timeout and fails
    # the images in flight and those queued behind them
    gate = threading.Event()
    runner = FakeSlowRunner(len(manifest.labels), gate=gate)
    batcher = DynamicBatcher(fake_model(manifest, runner), max_batch=1, max_delay=0.0).start()
    futures: list[Future[np.ndarray]] = [batcher.submit(image(v)) for v in (0.1, 0.2, 0.3)]
    assert runner.entered.wait(10)
    started = time.monotonic()
    batcher.stop(timeout=0.3, drain=False)
    assert time.monotonic() - started < 4.0
    for future in futures:
        with pytest.raises(InferenceError, match="stopped"):
            future.result(0)
    gate.set()  # the backend returns late: nothing breaks, the thread ends
    deadline = time.monotonic() + 10
    while batcher.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not batcher.running
    assert all(isinstance(f.exception(0), InferenceError) for f in futures)

    # never started: stop returns at once
    DynamicBatcher(fake_model(manifest, runner), max_batch=1, max_delay=0.0).stop(timeout=1)


def test_skipped_images_are_the_same_with_parallel_preprocessing_and_the_batcher(
    manifest: Manifest, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    uid, paths = make_study(tmp_path / "s", 6, mark=2)
    truncated, blank, foreign = paths[1], paths[3], paths[4]
    ds = dcmread(truncated)
    ds.PixelData = ds.PixelData[:100]
    ds.save_as(truncated, enforce_file_format=True)
    ds = dcmread(blank)
    ds.PixelData = np.full((ds.Rows, ds.Columns), 7, np.int16).tobytes()
    ds.save_as(blank, enforce_file_format=True)
    ds = dcmread(foreign)
    ds.StudyInstanceUID = generate_uid()
    ds.save_as(foreign, enforce_file_format=True)
    runner = FakeSlowRunner(len(manifest.labels))
    model = fake_model(manifest, runner)
    batcher = DynamicBatcher(model, max_batch=2, max_delay=0.01).start()
    try:
        outcome = run_analysis(
            model, [*paths, str(tmp_path / "gone.dcm")], uid, batcher=batcher, pool=pool
        )
    finally:
        batcher.stop()
    reference = run_analysis(model, [*paths, str(tmp_path / "gone.dcm")], uid)
    assert [(s.sop_instance_uid, s.reason) for s in outcome.skipped] == [
        (s.sop_instance_uid, s.reason) for s in reference.skipped
    ]
    reasons = [s.reason for s in outcome.skipped]
    assert len(reasons) == 4 and "image belongs to another study (StudyInstanceUID)" in reasons
    assert any(r.startswith("pixel data is truncated") for r in reasons)
    assert "image is constant (blank)" in reasons
    _same(outcome, reference)
    assert len(outcome.images) == 3
