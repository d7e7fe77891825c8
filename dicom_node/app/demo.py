"""``dicom-node demo``: push one study of three real images through a running node, show its SRs.

Starts the node (embedded Redis, worker, SCP) on a free port with a temporary
data directory, starts a small C-STORE SCP standing in for the PACS, pushes
one study holding a real chest CR, a head CT series and a real tibia CR
(:func:`dicom_node.app.samples.mixed_study`), waits for one SR per model that
applies, prints their findings and stops everything.
"""

from __future__ import annotations

import logging
import queue
import socket
import tempfile
import threading
import time
from pathlib import Path

from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage  # type: ignore[attr-defined]

from dicom_node.app.echo_scu import echo
from dicom_node.app.samples import mixed_study
from dicom_node.app.supervisor import free_port, run_up
from dicom_node.core import dimse
from dicom_node.core.errors import ServiceError
from dicom_node.core.settings import Peer, Settings

log = logging.getLogger(__name__)


def _expected_reports(settings: Settings, files: list[Path]) -> list[str]:
    from models.registry import ModelRegistry
    from models.routing import read_headers, route

    registry = ModelRegistry.load(settings.resolved_models_dir / "manifests")
    instances, _ = read_headers([str(f) for f in files])
    plan = route(registry, instances, "DEMO_MODALITY", enabled=settings.enabled_models)
    return [m.model_id for m in plan.matches]


def _listening(peer: Peer) -> bool:
    try:
        with socket.create_connection((peer.host, peer.port), timeout=1):
            return True
    except OSError:
        return False


def run_demo(settings: Settings, timeout: float = 600.0) -> int:
    """Run the demo; return 0 when every expected SR came back."""
    from workers.destinations.c_store import c_store
    from workers.outputs.tid1500 import read_findings

    received: queue.Queue[Dataset] = queue.Queue()

    def on_store(event: evt.Event) -> int:
        received.put(event.dataset)
        return dimse.SUCCESS

    pacs_ae = AE(ae_title="DEMO_PACS")
    pacs_ae.add_supported_context(Comprehensive3DSRStorage)
    pacs_port = free_port()
    pacs = pacs_ae.start_server(
        ("127.0.0.1", pacs_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert pacs is not None
    stop = threading.Event()
    reports: list[tuple[Dataset, float]] = []
    with tempfile.TemporaryDirectory(prefix="dicom-node-demo-") as tmp:
        node_settings = settings.model_copy(
            update={
                "data_dir": Path(tmp),
                "models_dir": settings.resolved_models_dir.resolve(),
                "host": "127.0.0.1",
                "port": free_port(),
                "pacs": f"DEMO_PACS@127.0.0.1:{pacs_port}",
                "destinations": [],  # the demo PACS alone, whatever the site configured
                "study_quiet_seconds": 2.0,
            }
        )
        study = mixed_study(Path(tmp) / "study")
        expected = _expected_reports(node_settings, study.files)
        node = threading.Thread(target=run_up, args=(node_settings, stop), daemon=True)
        node.start()
        try:
            me = Peer(node_settings.ae_title, "127.0.0.1", node_settings.port)
            deadline = time.monotonic() + timeout
            while not _listening(me):  # a plain TCP probe: pynetdicom logs refusals as ERROR
                if time.monotonic() > deadline or not node.is_alive():
                    raise ServiceError("node did not start")
                time.sleep(0.2)
            if echo(me, "DEMO_MODALITY", timeout=10) != dimse.SUCCESS:
                raise ServiceError("the node did not answer C-ECHO with Success")
            print(
                f"node up; pushing one study as DEMO_MODALITY: chest CR, "
                f"{len(study.ct)}-slice head CT, tibia CR; expecting SRs from "
                f"{', '.join(expected)}"
            )
            for path in study.files:
                c_store(path, me, "DEMO_MODALITY")
            sent = time.monotonic()
            while len(reports) < len(expected):
                report = received.get(timeout=max(1.0, deadline - time.monotonic()))
                reports.append((report, time.monotonic() - sent))
        except queue.Empty:
            print(f"{len(reports)} of {len(expected)} SRs arrived in time; see the log above")
            return 1
        finally:
            stop.set()
            node.join(timeout=120)
            pacs.shutdown()
    for report, elapsed in reports:
        print(
            f"\nSR {report.SOPInstanceUID} arrived {elapsed:.1f} s after the last image "
            f"(quiet period {node_settings.study_quiet_seconds:.0f} s)"
        )
        print(f"Series: {report.get('SeriesDescription', '')}")
        print(f"{'Finding':<34} {'Probability':>11}  Evaluation")
        for finding in read_findings(report):
            print(f"{finding.finding:<34} {finding.probability:>11.3f}  {finding.evaluation}")
    return 0
