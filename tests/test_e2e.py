"""The main job end to end, all real: `dicom-node up` (embedded redis-server, Celery worker
process, SCP), dcmtk's storescu as the modality and dcmtk's storescp as the PACS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.conftest import (
    dciodvfy_errors,
    dcmtk_env,
    free_port,
    require_tool,
    wait_for,
    with_new_uids,
)
from workers.outputs.tid1500 import read_findings

pytestmark = pytest.mark.e2e


def start_pacs(port: int, out: Path) -> subprocess.Popen[bytes]:
    """dcmtk's storescp as the PACS, writing what it receives to ``out``."""
    out.mkdir(exist_ok=True)
    return subprocess.Popen(
        [require_tool("storescp"), "-aet", "PACS", "-od", str(out), "+xa", str(port)],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture()
def pacs(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port, out = free_port(), tmp_path / "pacs"
    proc = start_pacs(port, out)
    yield port, out
    proc.terminate()
    proc.wait(10)


def start_node(
    tmp_path: Path, pacs_port: int, models_dir: Path, **extra: str
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """`dicom-node up` in a subprocess, ready when echoscu gets an answer."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
    env.update(
        {
            "DICOM_NODE_DATA_DIR": str(tmp_path / "node"),
            "DICOM_NODE_MODELS_DIR": str(models_dir),
            "DICOM_NODE_HOST": "127.0.0.1",
            "DICOM_NODE_PORT": str(port),
            "DICOM_NODE_PACS": f"PACS@127.0.0.1:{pacs_port}",
            "DICOM_NODE_STUDY_QUIET_SECONDS": "1",
            "DICOM_NODE_ALLOW_DEMO_WEIGHTS": "1",
            **extra,
        }
    )
    log = tmp_path / "node.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_node.app.cli", "up"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    echo = [require_tool("echoscu"), "-aec", "DICOM_NODE", "127.0.0.1", str(port)]
    wait_for(
        lambda: (
            proc.poll() is None
            and subprocess.run(echo, env=dcmtk_env(), capture_output=True).returncode == 0
        ),
        120,
        "the node's SCP",
        interval=0.5,
    )
    return proc, {**env, "port": str(port), "log": str(log)}


def stop_node(proc: subprocess.Popen[bytes], env: dict[str, str]) -> None:
    proc.send_signal(signal.SIGINT)  # as Ctrl-C
    assert proc.wait(120) == 0
    text = Path(env["log"]).read_text(errors="replace")
    assert "celery-worker stopped" in text and "redis-server stopped" in text


@pytest.fixture()
def node(
    tmp_path: Path, pacs: tuple[int, Path], models_dir: Path, demo_weights: object
) -> Iterator[dict[str, str]]:
    proc, env = start_node(tmp_path, pacs[0], models_dir)
    yield env
    stop_node(proc, env)


def _push(port: str, *files: Path) -> None:
    out = subprocess.run(
        [
            require_tool("storescu"),
            "-aet",
            "MODALITY",
            "-aec",
            "DICOM_NODE",
            "-xv",  # propose JPEG 2000 lossless and uncompressed
            "127.0.0.1",
            port,
            *map(str, files),
        ],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr


def _status(env: dict[str, str]) -> dict[str, dict[str, object]]:
    out = subprocess.run(
        [sys.executable, "-m", "dicom_node.app.cli", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return {s["study_uid"]: s for s in json.loads(out.stdout)}


def test_chest_xrays_come_back_as_srs_and_ct_does_not(
    node: dict[str, str],
    pacs: tuple[int, Path],
    tmp_path: Path,
    cr_path: Path,
    cr_j2k_path: Path,
    ct_path: Path,
) -> None:
    j2k = with_new_uids(cr_j2k_path, tmp_path / "j2k.dcm")  # a second, compressed study
    _push(node["port"], cr_path, j2k, ct_path)
    sources = {
        dcmread(p, stop_before_pixels=True).StudyInstanceUID: dcmread(p, stop_before_pixels=True)
        for p in (cr_path, j2k)
    }
    ct_study = dcmread(ct_path, stop_before_pixels=True).StudyInstanceUID

    srs = wait_for(lambda: (f := sorted(pacs[1].iterdir())) and len(f) >= 2 and f, 180, "two SRs")
    states = wait_for(
        lambda: (
            (s := _status(node))
            and s.get(ct_study, {}).get("state") == "not_applicable"
            and all(s.get(u, {}).get("state") == "delivered" for u in sources)
            and s
        ),
        60,
        "final states",
    )
    assert len(list(pacs[1].iterdir())) == 2  # exactly one SR per chest study, none for CT
    for path in srs:
        sr = dcmread(path)
        source = sources[sr.StudyInstanceUID]
        ref = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert len(read_findings(sr)) == 18
        assert dciodvfy_errors(path) == []
        assert states[sr.StudyInstanceUID]["report_uid"] == sr.SOPInstanceUID
        assert states[sr.StudyInstanceUID]["weights_kind"] == "untrained-demo"
    assert states[ct_study]["reason"] == "no applicable model"
    log = Path(node["log"]).read_text(errors="replace")
    assert "UNTRAINED DEMO WEIGHTS" in log
    for source in sources.values():  # no PHI in logs
        assert str(source.PatientName) not in log and str(source.PatientID) not in log


def test_pacs_outage_delays_delivery_until_it_returns(
    tmp_path: Path, models_dir: Path, demo_weights: object, cr_path: Path
) -> None:
    pacs_port, received = free_port(), tmp_path / "pacs"
    proc, env = start_node(
        tmp_path,
        pacs_port,
        models_dir,
        DICOM_NODE_DELIVERY_RETRY_BASE_SECONDS="0.5",
        DICOM_NODE_DELIVERY_RETRY_MAX_SECONDS="2",
    )
    pacs = None
    try:
        _push(env["port"], cr_path)
        study = dcmread(cr_path, stop_before_pixels=True).StudyInstanceUID

        def pending() -> bool:
            s = _status(env).get(study, {})
            return s.get("state") == "reported" and int(s.get("delivery_attempts") or 0) >= 2

        wait_for(pending, 120, "failed delivery attempts while the PACS is down", interval=0.5)
        assert "delivery pending" in str(_status(env)[study]["reason"])
        pacs = start_pacs(pacs_port, received)
        wait_for(lambda: _status(env)[study]["state"] == "delivered", 60, "delivery", interval=0.5)
        (sr_file,) = list(received.iterdir())
        assert dcmread(sr_file).SOPInstanceUID == _status(env)[study]["report_uid"]
    finally:
        stop_node(proc, env)
        if pacs is not None:
            pacs.terminate()
            pacs.wait(10)
