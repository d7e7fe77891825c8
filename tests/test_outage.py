"""A Redis outage delays work and never drops it: real SCP, real Celery publisher, real Redis."""

from __future__ import annotations

from pathlib import Path

import redis
from pydicom import dcmread

from dicom_node.core import dimse
from dicom_node.core.contract import ROUTE_QUEUE
from dicom_node.core.ledger import StudyState
from dicom_node.core.settings import Settings
from dicom_node.ingest.scp import StoreSCP
from tests.conftest import free_port, queued_messages, start_redis, wait_for
from tests.test_scp import _scu_store


def test_study_waits_for_redis_then_is_enqueued_once(tmp_path: Path, cr_path: Path) -> None:
    redis_port = free_port()
    settings = Settings(
        data_dir=tmp_path / "node",
        host="127.0.0.1",
        port=free_port(),
        study_quiet_seconds=0.3,
        broker_url=f"redis://127.0.0.1:{redis_port}/0",
    )
    scp = StoreSCP(settings)  # the real Celery publisher; no Redis yet
    scp.start()
    server = None
    try:
        assert _scu_store(scp.port, dcmread(cr_path)) == dimse.SUCCESS  # durable, so Success
        study_uid = dcmread(cr_path, stop_before_pixels=True).StudyInstanceUID

        def waiting() -> bool:
            view = scp.ledger.get(study_uid)
            return bool(view and view.study.reason and "waiting for broker" in view.study.reason)

        wait_for(waiting, 30, "the enqueue to fail while Redis is down")
        view = scp.ledger.get(study_uid)
        assert view is not None and view.study.state is StudyState.RECEIVING

        server = start_redis(redis_port, tmp_path)
        wait_for(
            lambda: (
                (v := scp.ledger.get(study_uid))
                and v.study.state is StudyState.QUEUED
                and v.study.task_id
            ),
            60,
            "the study to be enqueued after Redis came back",
        )
        queued = len(queued_messages(redis.Redis(port=redis_port), ROUTE_QUEUE))
        assert queued == 1
    finally:
        scp.stop()
        if server is not None:
            server.terminate()
            server.wait(10)
