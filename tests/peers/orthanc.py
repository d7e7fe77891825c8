"""A real Orthanc PACS on loopback, started by a test with its own configuration.

Debian's ``orthanc`` and ``orthanc-dicomweb`` packages (``make sysdeps``); the
Debian service is not used. Each start gets free DICOM and HTTP ports, its own
storage and index directories, the DICOMweb plugin (STOW-RS at ``/dicom-web/``,
PS3.18 10.5), no remote access and no authentication, and its own log file.

Orthanc accepts C-STORE from any calling AE (``DicomAlwaysAllowStore``) for the
storage SOP classes dcmtk knows (SR, Secondary Capture, Key Object Selection and
Encapsulated PDF among them); ``UnknownSopClassAccepted`` stays false, so a report
of a class Orthanc does not know is refused, as a real PACS would.

Usage::

    server = start_orthanc(tmp_dir)
    try:
        server.lookup(sop_instance_uid)
    finally:
        server.stop()
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, wait_for

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
AE_TITLE = "ORTHANC"
CALLING_AE = "DICOMNODE"
"""The AE title the tests' SCU (and the node, by default) calls Orthanc with."""


def orthanc_binary() -> str:
    """Path of the Orthanc server; fails the test when it is not installed."""
    path = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")
    if not path or not DICOMWEB_PLUGIN.exists():
        pytest.fail("Orthanc or its DICOMweb plugin is missing; run `make sysdeps`")
    return path


@dataclass
class Orthanc:
    """A running Orthanc: its ports, AE title, log, and REST helpers."""

    process: subprocess.Popen[bytes]
    directory: Path
    dicom_port: int
    http_port: int
    ae_title: str = AE_TITLE
    log_file: Path = field(default_factory=Path)

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """DICOMweb root (STOW-RS: ``POST {dicomweb_url}/studies``)."""
        return f"{self.url}/dicom-web"

    def get(self, path: str) -> Any:
        """GET a REST resource, decoded from JSON.

        Raises
        ------
        urllib.error.HTTPError
            On an HTTP error status (404 for an unknown resource).
        """
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as answer:
            return json.loads(answer.read())

    def post(self, path: str, body: str) -> Any:
        """POST a text body to a REST resource, decoded from JSON."""
        request = urllib.request.Request(f"{self.url}{path}", data=body.encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def lookup(self, uid: str) -> list[dict[str, str]]:
        """``/tools/lookup``: the resources (``ID``, ``Type``, ``Path``) with this DICOM UID."""
        return list(self.post("/tools/lookup", uid))

    def instance_id(self, sop_instance_uid: str) -> str | None:
        """Orthanc's ID of the instance with this SOP Instance UID, None when not stored."""
        found = [r for r in self.lookup(sop_instance_uid) if r["Type"] == "Instance"]
        return found[0]["ID"] if found else None

    def instance(self, orthanc_id: str) -> dict[str, Any]:
        """``/instances/<id>``: ``ParentSeries``, ``MainDicomTags``, ``FileSize``..."""
        return dict(self.get(f"/instances/{orthanc_id}"))

    def tags(self, orthanc_id: str) -> dict[str, Any]:
        """``/instances/<id>/tags?simplify``: the stored header, keyed by keyword."""
        return dict(self.get(f"/instances/{orthanc_id}/tags?simplify"))

    def study_of(self, orthanc_id: str) -> dict[str, Any]:
        """``/instances/<id>/study``: the study record the instance is filed under."""
        return dict(self.get(f"/instances/{orthanc_id}/study"))

    def patient_of(self, orthanc_id: str) -> dict[str, Any]:
        """``/instances/<id>/patient``: the patient record the instance is filed under."""
        return dict(self.get(f"/instances/{orthanc_id}/patient"))

    def studies(self) -> list[str]:
        """``/studies``: Orthanc IDs of every stored study."""
        return list(self.get("/studies"))

    def log_lines(self, *levels: str) -> list[str]:
        """Lines of Orthanc's log at the given levels (``"W"``, ``"E"``; all when none)."""
        if not self.log_file.exists():
            return []
        lines = self.log_file.read_text(errors="replace").splitlines()
        return [line for line in lines if not levels or line[:1] in levels]

    def alive(self) -> bool:
        """Whether the REST API answers ``/system``."""
        if self.process.poll() is not None:
            return False
        try:
            return bool(self.get("/system").get("DicomAet") == self.ae_title)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def stop(self) -> None:
        """Stop Orthanc: terminate, then kill after 10 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def configuration(directory: Path, dicom_port: int, http_port: int) -> dict[str, Any]:
    """The Orthanc configuration of one test instance (Orthanc 1.10 option names)."""
    return {
        "Name": "dicom-node-test",
        "StorageDirectory": str(directory / "storage"),
        "IndexDirectory": str(directory / "index"),
        "StorageCompression": False,
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "DicomServerEnabled": True,
        "DicomPort": dicom_port,
        "DicomAet": AE_TITLE,
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "UnknownSopClassAccepted": False,
        "DicomModalities": {"dicomnode": [CALLING_AE, "127.0.0.1", 104]},
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        "ConcurrentJobs": 1,
        "HttpThreadsCount": 4,
        "SaveJobs": False,
        "StableAge": 3600,
        "OverwriteInstances": False,
        "LogExportedResources": False,
    }


def start_orthanc(directory: Path, timeout: float = 30, attempts: int = 3) -> Orthanc:
    """Start Orthanc with its own configuration in ``directory``; wait until ``/system`` answers.

    Parameters
    ----------
    directory : Path
        Directory for the configuration, storage, index and log (one subdirectory
        per attempt).
    timeout : float
        Seconds to wait for the REST API, per attempt (s).
    attempts : int
        Starts to try: a free port can be taken by another process (another xdist
        worker) between our probe and Orthanc's bind, and Orthanc then exits.

    Returns
    -------
    Orthanc
        The running server; call :meth:`Orthanc.stop` at teardown.
    """
    binary = orthanc_binary()
    failures = []
    for attempt in range(attempts):
        server = _start(binary, directory / f"run{attempt}", timeout)
        if server.process.poll() is None:
            break
        failures.append("\n".join(server.log_lines("E")[-5:]))
    else:
        pytest.fail(f"Orthanc did not start in {attempts} attempts: {failures}")
    plugins = server.get("/plugins")
    if "dicom-web" not in plugins:
        server.stop()
        pytest.fail(f"Orthanc did not load the DICOMweb plugin: {plugins}")
    return server


def _start(binary: str, directory: Path, timeout: float) -> Orthanc:
    """One start: write the configuration, run Orthanc, wait until it answers or exits."""
    directory.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    while http_port == dicom_port:
        http_port = free_port()
    config = directory / "orthanc.json"
    config.write_text(json.dumps(configuration(directory, dicom_port, http_port), indent=2))
    log_file = directory / "orthanc.log"
    process = subprocess.Popen(
        [binary, f"--logfile={log_file}", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=directory,
    )
    server = Orthanc(process, directory, dicom_port, http_port, log_file=log_file)
    try:
        wait_for(lambda: server.alive() or process.poll() is not None, timeout, "Orthanc /system")
    except BaseException:
        server.stop()
        raise
    return server
