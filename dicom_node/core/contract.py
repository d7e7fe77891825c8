"""Names of Celery queues and tasks, and the worker command line that consumes them.

Shared by the SCP (which sends tasks by name), the CLI and ``dicom-node up``.
"""

from __future__ import annotations

import sys

ANALYZE_TASK = "workers.tasks.analyze.analyze_study"
DELIVER_TASK = "workers.tasks.analyze.deliver_report"
DELIVERY_QUEUE = "delivery"


def model_queue(model_id: str) -> str:
    """Queue of the inference tasks of one model (one queue per model)."""
    return f"infer.{model_id}"


def worker_argv(
    model_id: str, concurrency: int, log_level: str, hostname: str | None = None
) -> list[str]:
    """Command line of a Celery worker for ``model_id``'s queue and the delivery queue.

    Parameters
    ----------
    model_id : str
        Manifest id; the worker consumes ``infer.<model_id>``.
    concurrency : int
        Prefork processes (1 per GPU).
    log_level : str
        Celery log level.
    hostname : str, optional
        Celery node name (``--hostname``).
    """
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "worker",
        "-Q",
        f"{model_queue(model_id)},{DELIVERY_QUEUE}",
        "--concurrency",
        str(concurrency),
        "--loglevel",
        log_level,
    ]
    return [*argv, "--hostname", hostname] if hostname else argv
