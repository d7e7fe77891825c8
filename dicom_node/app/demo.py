"""``dicom-node demo``: push the sample chest X-ray through a running node and show its SR.

Starts the node (embedded Redis, worker, SCP) on a free port with a temporary
data directory, starts a small C-STORE SCP standing in for the PACS, pushes
pydicom-data's ``RG1_UNCR.dcm`` (a real adult chest CR), waits for the SR,
prints the findings and stops everything.
"""

from __future__ import annotations

import logging
import queue
import tempfile
import threading
import time
from pathlib import Path

from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage  # type: ignore[attr-defined]

from dicom_node.core import dimse
from dicom_node.core.settings import Peer, Settings
from dicom_node.app.echo_scu import echo
from dicom_node.app.supervisor import free_port, run_up
from dicom_node.core.errors import DeliveryError, ServiceError

log = logging.getLogger(__name__)


def sample_path() -> Path:
    """The sample chest CR from pydicom-data.

    Raises
    ------
    ServiceError
        If pydicom-data is not installed.
    """
    try:
        from pydicom.data import get_testdata_file

        path = get_testdata_file("RG1_UNCR.dcm")
    except Exception as exc:  # pydicom-data missing or offline
        raise ServiceError(f"sample image unavailable: {exc}") from exc
    if not path:
        raise ServiceError("sample image RG1_UNCR.dcm not found: pip install pydicom-data")
    return Path(str(path))


def run_demo(settings: Settings, timeout: float = 300.0) -> int:
    """Run the demo; return 0 when an SR came back."""
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
    with tempfile.TemporaryDirectory(prefix="dicom-node-demo-") as tmp:
        node_settings = settings.model_copy(
            update={
                "data_dir": Path(tmp),
                "models_dir": settings.resolved_models_dir.resolve(),
                "host": "127.0.0.1",
                "port": free_port(),
                "pacs": f"DEMO_PACS@127.0.0.1:{pacs_port}",
                "study_quiet_seconds": 2.0,
            }
        )
        node = threading.Thread(target=run_up, args=(node_settings, stop), daemon=True)
        node.start()
        try:
            me = Peer(node_settings.ae_title, "127.0.0.1", node_settings.port)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    echo(me, "DEMO_MODALITY", timeout=2)
                    break
                except DeliveryError:
                    if time.monotonic() > deadline or not node.is_alive():
                        raise ServiceError("node did not start") from None
                    time.sleep(0.2)
            print(f"node up; pushing {sample_path().name} as DEMO_MODALITY")
            c_store(sample_path(), me, "DEMO_MODALITY")
            sent = time.monotonic()
            report = received.get(timeout=max(1.0, deadline - time.monotonic()))
            elapsed = time.monotonic() - sent
        except queue.Empty:
            print("no SR arrived in time; see the log above")
            return 1
        finally:
            stop.set()
            node.join(timeout=120)
            pacs.shutdown()
    print(
        f"\nSR {report.SOPInstanceUID} arrived {elapsed:.1f} s after the image "
        f"(quiet period {node_settings.study_quiet_seconds:.0f} s)"
    )
    print(f"Series: {report.get('SeriesDescription', '')}\n")
    print(f"{'Finding':<28} {'Probability':>11}  Evaluation")
    for finding in read_findings(report):
        print(f"{finding.finding:<28} {finding.probability:>11.3f}  {finding.evaluation}")
    return 0
