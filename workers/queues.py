"""Names of Celery queues and tasks, shared by the SCP (which sends by name) and workers."""

from __future__ import annotations

ANALYZE_TASK = "workers.tasks.analyze_study"
DELIVER_TASK = "workers.tasks.deliver_report"
DELIVERY_QUEUE = "delivery"


def model_queue(model_id: str) -> str:
    """Queue of the inference tasks of one model (one queue per model)."""
    return f"infer.{model_id}"
