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
from pydicom import Dataset, dcmread

from tests.conftest import (
    OLD_LEDGER_STUDIES,
    dciodvfy_errors,
    dcmtk_env,
    free_port,
    mixed_study,
    old_ledger,
    require_tool,
    wait_for,
)
from workers.outputs.tid1500 import read_findings

pytestmark = pytest.mark.e2e

CHEST, ICH, BONE = (
    "xrv-densenet121-res224-all",
    "ich-headct-densenet121-rsna2019",
    "mura-densenet169-abnormality",
)


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


def stop_node(proc: subprocess.Popen[bytes], env: dict[str, str]) -> str:
    """Ctrl-C the node; return its log."""
    proc.send_signal(signal.SIGINT)
    assert proc.wait(120) == 0
    text = Path(env["log"]).read_text(errors="replace")
    assert "celery-worker stopped" in text and "redis-server stopped" in text
    return text


def push(port: str, *files: Path, calling_ae: str = "MODALITY") -> None:
    """dcmtk's storescu as the modality: all ``files`` in one association."""
    out = subprocess.run(
        [
            require_tool("storescu"),
            "-aet",
            calling_ae,
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


def status(env: dict[str, str]) -> dict[str, dict[str, object]]:
    out = subprocess.run(
        [sys.executable, "-m", "dicom_node.app.cli", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return {s["study_uid"]: s for s in json.loads(out.stdout)}


def analyses(view: dict[str, object]) -> dict[str, dict[str, object]]:
    return {str(a["model_id"]): a for a in view["analyses"]}  # type: ignore[union-attr]


def all_delivered(view: dict[str, object], count: int) -> bool:
    found = list(analyses(view).values())
    return (
        len(found) == count
        and all(
            d["state"] == "delivered"
            for a in found
            for r in a["reports"]  # type: ignore[attr-defined]
            for d in r["deliveries"]
        )
        and all(a["reports"] for a in found)
    )


def referenced(sr: Dataset) -> set[str]:
    return {
        str(sop.ReferencedSOPInstanceUID)
        for series in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }


@pytest.fixture()
def node(tmp_path: Path, pacs: tuple[int, Path], models_dir: Path) -> Iterator[dict[str, str]]:
    proc, env = start_node(tmp_path, pacs[0], models_dir)
    yield env
    env["final_log"] = stop_node(proc, env)


def test_one_study_three_models_three_srs(
    node: dict[str, str], pacs: tuple[int, Path], tmp_path: Path, ct_path: Path
) -> None:
    """A chest CR, a head CT series and a tibia CR in one study: one SR per model."""
    study = mixed_study(tmp_path / "study", ct_slices=4)
    push(node["port"], *study.files, ct_path)  # CT_small: a CT of no head, no model applies
    ct_study = str(dcmread(ct_path, stop_before_pixels=True).StudyInstanceUID)

    srs = wait_for(lambda: (f := sorted(pacs[1].iterdir())) and len(f) >= 3 and f, 240, "3 SRs")
    view = wait_for(
        lambda: (
            (s := status(node))
            and s.get(ct_study, {}).get("state") == "not_applicable"
            and all_delivered(s.get(study.study_uid, {"analyses": []}), 3)
            and s[study.study_uid]
        ),
        90,
        "every analysis delivered",
    )
    assert len(list(pacs[1].iterdir())) == 3  # exactly one SR per model, none for CT_small
    by_model = analyses(view)
    assert set(by_model) == {CHEST, ICH, BONE}
    by_uid = {dcmread(p).SOPInstanceUID: p for p in srs}
    for model_id, expected in ((CHEST, study.chest), (ICH, study.ct), (BONE, study.bone)):
        analysis = by_model[model_id]
        assert analysis["state"] == "reported" and analysis["weights_kind"] == "untrained-demo"
        (report,) = analysis["reports"]  # type: ignore[misc]
        path = by_uid[report["sop_instance_uid"]]
        sr = dcmread(path)
        assert sr.StudyInstanceUID == study.study_uid
        assert referenced(sr) == set(expected), model_id  # each SR references its own images
        assert "UNTRAINED" in sr.SeriesDescription
        assert read_findings(sr)
        assert dciodvfy_errors(path) == [], model_id
    assert status(node)[ct_study]["reason"] == "no applicable model"
    log = Path(node["log"]).read_text(errors="replace")
    assert "UNTRAINED DEMO WEIGHTS" in log
    assert study.patient_name not in log and study.patient_id not in log  # no PHI in logs
    errors = [line for line in log.splitlines() if " ERROR " in line or "ERROR/" in line]
    assert errors == []  # a healthy start and run log no ERROR


def test_pacs_outage_delays_delivery_until_it_returns(
    tmp_path: Path, models_dir: Path, cr_path: Path
) -> None:
    pacs_port, received = free_port(), tmp_path / "pacs"
    old_ledger(tmp_path / "node")  # `up` upgrades a 0.1.0 ledger in place
    proc, env = start_node(
        tmp_path,
        pacs_port,
        models_dir,
        DICOM_NODE_MODELS=CHEST,
        DICOM_NODE_DELIVERY_RETRY_BASE_SECONDS="0.5",
        DICOM_NODE_DELIVERY_RETRY_MAX_SECONDS="2",
    )
    pacs = None
    try:
        assert set(OLD_LEDGER_STUDIES) <= set(status(env))  # upgraded, still listed
        push(env["port"], cr_path)
        study = dcmread(cr_path, stop_before_pixels=True).StudyInstanceUID

        def delivery() -> dict[str, object]:
            (analysis,) = analyses(status(env).get(study, {"analyses": []})).values() or [{}]
            reports = analysis.get("reports") or [{"deliveries": [{}]}]
            return reports[0]["deliveries"][0]  # type: ignore[index,no-any-return]

        wait_for(
            lambda: delivery().get("state") == "retrying" and int(delivery()["attempts"]) >= 2,
            120,
            "failed delivery attempts while the PACS is down",
            interval=0.5,
        )
        assert "not established" in str(delivery()["last_error"])
        pacs = start_pacs(pacs_port, received)
        wait_for(lambda: delivery()["state"] == "delivered", 60, "delivery", interval=0.5)
        (sr_file,) = list(received.iterdir())
        (analysis,) = analyses(status(env)[study]).values()
        assert dcmread(sr_file).SOPInstanceUID == analysis["reports"][0]["sop_instance_uid"]  # type: ignore[index]
    finally:
        stop_node(proc, env)
        if pacs is not None:
            pacs.terminate()
            pacs.wait(10)
