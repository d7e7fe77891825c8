"""The task chain of a study, registered on an app by :func:`register_tasks`.

::

    route_study  (queue route)           which models apply → one analysis each
      └─ analyze (queue infer.<model>)   one model on its images → one SR per profile
           └─ deliver (queue delivery)   one report to one destination, retried

Each task's name, queue and payload are declared in
:mod:`dicom_node.core.contract`. Every task claims its ledger row through the
transition table before it acts, so a task delivered twice (``acks_late``
after a worker died) does its work once.
"""

from __future__ import annotations

from celery import Celery

from dicom_node.core.contract import ANALYZE_TASK, DELIVER_TASK, ROUTE_TASK


def register_tasks(app: Celery) -> None:
    """Register the three tasks on ``app`` under their contract names (JSON, pydantic)."""
    from workers.tasks.analyze import analyze
    from workers.tasks.deliver import deliver
    from workers.tasks.route import route_study

    common = {"bind": True, "pydantic": True, "acks_late": True}
    app.task(name=ROUTE_TASK, **common)(route_study)
    app.task(name=ANALYZE_TASK, **common)(analyze)
    app.task(name=DELIVER_TASK, max_retries=None, **common)(deliver)
