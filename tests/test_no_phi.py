"""No PHI in any log line, record or result (issue 6, "No PHI in any log line").

A study with a known patient name and ID goes through the whole node
(`dicom-node up`: embedded redis-server, Celery worker process, SCP; dcmtk's
storescu as the modality and storescp as the PACS). The same strings are
planted in other demographic attributes too, including an invalid Patient's
Sex that holds the patient ID and an invalid Patient's Birth Date, and in
study and image attributes that are copied into the SR or read by highdicom
(Accession Number, Patient Orientation, Image Laterality, Content Date …):
the values that pydicom and highdicom quote in their exceptions and warnings. A second
image of the study has pixel data cut short, so the worker has a skip reason
to record.

Once the SR is delivered (or the analysis has ended), these are searched for
the name, its components, the ID and the birth date, in any letter case:

- the combined stdout/stderr of `up` and its children (SCP, worker, redis);
- every file of the data directory except the spool and the reports (the
  data and the SR may hold them): the ledger database with its WAL, Redis's
  append-only file, any log file;
- `dicom-node status` and `dicom-node status --json`;
- every key in Redis, the Celery results (``celery-task-meta-*``) included,
  with the base64 bodies of queued messages decoded.

The SR at the PACS must carry the patient's name and ID (it is the data).
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from pydicom import dcmread
from pydicom.config import disable_value_validation
from pydicom.uid import generate_uid

from dicom_node.app.samples import sample_path
from tests.conftest import free_port, wait_for
from tests.test_e2e import push, start_node, start_pacs, stop_node

pytestmark = pytest.mark.e2e

CHEST = "xrv-densenet121-res224-all"
FAMILY, GIVEN, MIDDLE = "Xyloquent", "Brimwater", "Quillonde"
PATIENT_NAME = f"{FAMILY}^{GIVEN}^{MIDDLE}"
PATIENT_ID = "PHI-7731-QZX"
BIRTH_DATE = "19871345"  # month 13, day 45: invalid (PS3.5 Table 6.2-1, DA)
NEEDLES = {  # searched case-insensitively; each name component alone is PHI
    "patient name": [PATIENT_NAME, PATIENT_NAME.replace("^", " "), FAMILY, GIVEN, MIDDLE],
    "patient ID": [PATIENT_ID, PATIENT_ID.replace("-", "")],
    "birth date": [BIRTH_DATE, "1987-13-45"],
}
DATA = ("spool", "reports", "outbox")  # data directory folders that hold the data itself


def planted(source: Path, target: Path, study_uid: str, series_uid: str, **extra: object) -> str:
    """Copy a chest CR into the study with the PHI planted; return its SOP Instance UID."""
    ds = dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    with disable_value_validation():  # the invalid values are the point
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.PatientSex = PATIENT_ID  # invalid CS value: a patient ID where M/F/O belongs
        ds.PatientBirthDate = BIRTH_DATE
        ds.OtherPatientIDs = PATIENT_ID
        ds.OtherPatientNames = PATIENT_NAME
        ds.PatientBirthName = PATIENT_NAME
        ds.PatientMotherBirthName = PATIENT_NAME
        ds.PatientAddress = f"{GIVEN} Lane 7, {FAMILY}ville"
        ds.PatientComments = f"{PATIENT_NAME} {PATIENT_ID}"
        ds.ReferringPhysicianName = PATIENT_NAME
        ds.PatientAge = PATIENT_ID[:4]  # invalid AS value
        # Study, series and image attributes that are copied into the SR or read by
        # highdicom for its image library: valid or not, their values must not be quoted.
        ds.AccessionNumber = PATIENT_ID
        ds.StudyID = PATIENT_ID
        ds.StudyDescription = f"CHEST {PATIENT_NAME}"
        ds.OperatorsName = PATIENT_NAME
        ds.PerformingPhysicianName = PATIENT_NAME
        ds.InstitutionName = f"{FAMILY} Clinic"
        ds.PatientOrientation = [PATIENT_ID, PATIENT_ID]  # invalid CS values
        ds.ImageLaterality = PATIENT_ID  # invalid CS value
        ds.ContentDate = BIRTH_DATE  # invalid DA value
        ds.BodyPartExamined = "CHEST"
        for keyword, value in extra.items():
            setattr(ds, keyword, value)
        ds.save_as(target, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


def leaks_in(text: bytes) -> list[str]:
    """The needles found in ``text`` (case-insensitive), as 'kind: needle'."""
    low = text.lower()
    return [
        f"{kind}: {needle}"
        for kind, needles in NEEDLES.items()
        for needle in needles
        if needle.lower().encode() in low
    ]


def context_of(text: bytes, limit: int = 3) -> list[str]:
    """Up to ``limit`` excerpts around the first needles found (for the failure message)."""
    out: list[str] = []
    low = text.lower()
    for needles in NEEDLES.values():
        for needle in needles:
            at = low.find(needle.lower().encode())
            if at >= 0 and len(out) < limit:
                out.append(text[max(at - 120, 0) : at + 60].decode("utf-8", "replace"))
    return out


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def redis_values(client: redis.Redis) -> Iterator[tuple[str, bytes]]:
    """Every value in Redis as (key, bytes); queued Celery bodies are base64-decoded too."""
    for raw_key in client.scan_iter(count=1000):
        key, kind = _bytes(raw_key).decode(errors="replace"), _bytes(client.type(raw_key))
        values: list[object] = []
        if kind == b"string":
            values = [client.get(raw_key)]
        elif kind == b"list":
            values = list(client.lrange(raw_key, 0, -1))
        elif kind == b"hash":
            values = [_bytes(k) + b"=" + _bytes(v) for k, v in client.hgetall(raw_key).items()]
        elif kind == b"set":
            values = list(client.smembers(raw_key))
        elif kind == b"zset":
            values = list(client.zrange(raw_key, 0, -1))
        for value in map(_bytes, values):
            yield key, value
            try:
                message = json.loads(value)
                if isinstance(message, dict) and isinstance(message.get("body"), str):
                    yield f"{key} (decoded body)", base64.b64decode(message["body"])
            except (ValueError, TypeError):
                continue


@pytest.fixture()
def pacs(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port, out = free_port(), tmp_path / "pacs"
    proc = start_pacs(port, out)
    yield port, out
    proc.terminate()
    proc.wait(10)


def _status(env: dict[str, str], *args: str) -> tuple[bytes, bytes]:
    """`dicom-node status [args]`: (stdout, stderr)."""
    out = subprocess.run(
        [sys.executable, "-m", "dicom_node.app.cli", "status", *args],
        env=env,
        capture_output=True,
        timeout=60,
    )
    return out.stdout, out.stderr


def _finished(env: dict[str, str], study_uid: str) -> dict[str, object] | None:
    """The study's status once its analyses ended and every delivery did too; else None."""
    views = {s["study_uid"]: s for s in json.loads(_status(env, "--json")[0] or b"[]")}
    view = views.get(study_uid)
    if not view or view["state"] in ("receiving", "queued"):
        return None
    if view["state"] in ("failed", "not_applicable"):
        return dict(view)
    analyses = view["analyses"]
    if not analyses or any(a["state"] in ("queued", "running") for a in analyses):
        return None
    deliveries = [d for a in analyses for r in a["reports"] for d in r["deliveries"]]
    if any(d["state"] in ("pending", "retrying") for d in deliveries):
        return None
    return dict(view)


def test_no_phi_in_logs_ledger_status_or_results(
    tmp_path: Path,
    pacs: tuple[int, Path],
    models_dir: Path,
    record_property: Callable[[str, object], None],
) -> None:
    study_uid, series_uid = generate_uid(), generate_uid()
    (tmp_path / "study").mkdir()
    chest = sample_path("RG1_UNCR.dcm")
    good = planted(chest, tmp_path / "study" / "good.dcm", study_uid, series_uid)
    broken = tmp_path / "study" / "broken.dcm"
    planted(chest, broken, study_uid, series_uid, InstanceNumber=2)
    ds = dcmread(broken)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]  # cut short: cannot be decoded
    ds.save_as(broken, enforce_file_format=True)

    proc, env = start_node(tmp_path, pacs[0], models_dir, DICOM_NODE_MODELS=CHEST)
    found: dict[str, list[str]] = {}
    try:
        push(env["port"], tmp_path / "study" / "good.dcm", broken)
        view = wait_for(lambda: _finished(env, study_uid), 240, "the study's analysis to end")

        found["dicom-node status"] = leaks_in(b"\n".join(_status(env)))
        found["dicom-node status --json"] = leaks_in(b"\n".join(_status(env, "--json")))
        match = re.search(rb"embedded Redis at (redis://\S+)", Path(env["log"]).read_bytes())
        assert match, "the node log names no embedded Redis"
        client = redis.Redis.from_url(match.group(1).decode(), socket_timeout=10)
        keys = 0
        for key, value in redis_values(client):
            keys += 1
            if hit := leaks_in(value):
                found.setdefault(f"redis key {key}", []).extend(hit)
        results = {k for k, _ in redis_values(client) if k.startswith("celery-task-meta-")}
        client.close()
        assert results, "no Celery result in Redis to search"
    finally:
        log = stop_node(proc, env).encode()
    found["stdout/stderr of up, SCP, worker and redis"] = leaks_in(log)
    data_dir = Path(env["DICOM_NODE_DATA_DIR"])
    scanned = 0
    for path in sorted(data_dir.rglob("*")):
        rel = path.relative_to(data_dir)
        if path.is_dir() or rel.parts[0] in DATA:
            continue
        scanned += 1
        found[str(rel)] = leaks_in(path.read_bytes())
    leaks = {where: hits for where, hits in found.items() if hits}
    excerpts = context_of(log)
    # The search itself works: the node's log names the study, the spool holds the PHI.
    assert study_uid.encode() in log
    (stored,) = (data_dir / "spool").glob(f"*/{good}.dcm")
    assert {h.split(":")[0] for h in leaks_in(stored.read_bytes())} == set(NEEDLES)
    line = (
        f"PHI search: {len(log)} log bytes, {scanned} data files, {keys} Redis values "
        f"({len(results)} Celery results), status text and JSON: "
        f"{sum(map(len, leaks.values()))} hits"
    )
    print(line)
    record_property("phi_search", line)

    srs = sorted(pacs[1].iterdir()) if pacs[1].exists() else []
    assert not leaks, (
        f"PHI found (searched {scanned} data files, {keys} Redis keys): {leaks}; "
        f"log excerpts: {excerpts}; study ended as {view}"
    )
    assert len(srs) == 1, f"expected one SR at the PACS, got {len(srs)}; study: {view}"
    sr = dcmread(srs[0])
    assert str(sr.PatientID) == PATIENT_ID and str(sr.PatientName) == PATIENT_NAME
    assert good in {
        str(sop.ReferencedSOPInstanceUID)
        for series in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
