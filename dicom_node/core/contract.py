"""The task contract: task names, queues and typed payloads, in one place.

Every message that crosses Redis is named here. The SCP publishes by name
(it never imports model or worker code); workers register their functions
under the same names. Payloads are pydantic models sent as JSON
(Celery's ``pydantic=True``), never pickle, and carry UIDs and spool paths,
never pixel data.

::

    SCP (completion monitor) ──▶ route_study     queue "route"
        reads headers, asks the model registry which models apply,
        creates one analysis per model in the ledger
                              ──▶ analyze         queue "infer.<model_id>"  (one per analysis)
        decode → preprocess → infer → aggregate → one SR per output profile
                              ──▶ deliver         queue "delivery"          (one per destination)

Task ids are deterministic, so a message published twice is one task in
Celery's result backend and in the logs.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

MANUFACTURER: Final = "dicom-node"
"""Manufacturer (0008,0070) of every object this node produces; the SCP's loop guard
recognises such objects when a PACS forwards them back."""

VISIBILITY_TIMEOUT_SECONDS: Final = 4 * 3600
"""Redis transport visibility timeout, seconds, for every Celery app of the node (workers,
the SCP's publisher). Longer than the longest delivery back-off: a delivery retry waits
unacknowledged for its countdown. Every kombu Redis consumer, ``inspect``'s reply consumer
included, restores unacknowledged messages older than its own timeout, so all must agree."""

Priority = Literal["stat", "routine"]
"""How urgent a study's analyses are: ``stat`` jumps every routine analysis of its model."""

PRIORITY_STEPS: Final = (0, 3, 6, 9)
"""Redis transport priority steps (kombu): one Redis list per step; 0 is served first."""

CELERY_PRIORITY: Final[dict[str, int]] = {"stat": 0, "routine": 6}
"""Celery message priority of an ``analyze`` message, by :data:`Priority` (Redis: 0 first).
Every app's ``task_default_priority`` is the routine one: kombu's Redis transport would
otherwise file an unprioritised message under 0, ahead of STAT work."""



def transport_options() -> dict[str, object]:
    """Redis transport options every Celery app of the node shares (workers, the SCP's publisher).

    Producers file a message under its priority step and consumers list the steps
    in that order, so both must agree on :data:`PRIORITY_STEPS`, as on
    :data:`VISIBILITY_TIMEOUT_SECONDS`.
    """
    return {
        "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
        "priority_steps": list(PRIORITY_STEPS),
    }


ROUTE_TASK: Final = "dicom_node.route_study"
ANALYZE_TASK: Final = "dicom_node.analyze"
DELIVER_TASK: Final = "dicom_node.deliver"

ROUTE_QUEUE: Final = "route"
DELIVERY_QUEUE: Final = "delivery"
MODEL_QUEUE_PREFIX: Final = "infer."


def model_queue(model_id: str) -> str:
    """Queue of one model's inference tasks: ``infer.<model_id>``."""
    return f"{MODEL_QUEUE_PREFIX}{model_id}"


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RouteStudy(_Payload):
    """A study is complete: decide which models run on it.

    Attributes
    ----------
    study_uid : str
        Study Instance UID.
    generation : int
        Ledger generation the task acts on; a newer generation supersedes it.
    paths : list of str
        Spool files of the study's instances, in arrival order.
    calling_ae : str or None
        AE title of the modality that sent the study (routing may use it).
    """

    study_uid: str
    generation: int = Field(ge=1)
    paths: list[str]
    calling_ae: str | None = None

    @property
    def task_id(self) -> str:
        """Deterministic Celery task id."""
        return f"route:{self.study_uid}:{self.generation}"


class Analyze(_Payload):
    """Run one model on the instances of a study that it applies to.

    Attributes
    ----------
    analysis_id : int
        Ledger id of the analysis (study, generation, model id, model version).
    study_uid : str
        Study Instance UID.
    generation : int
        Study generation.
    model_id, model_version : str
        Manifest id and version.
    paths : list of str
        Spool files the model applies to.
    priority : {"routine", "stat"}
        Sent with Celery priority :data:`CELERY_PRIORITY` ``[priority]``; a worker's
        batcher also puts a STAT analysis's images ahead of routine ones.
    """

    analysis_id: int
    study_uid: str
    generation: int = Field(ge=1)
    model_id: str
    model_version: str
    paths: list[str]
    priority: Priority = "routine"

    @property
    def celery_priority(self) -> int:
        """The Celery message priority to publish it with."""
        return CELERY_PRIORITY[self.priority]

    @property
    def task_id(self) -> str:
        """Deterministic Celery task id."""
        return f"analyze:{self.analysis_id}"


class Deliver(_Payload):
    """Send an analysis's report objects to one destination, over one association.

    Attributes
    ----------
    analysis_id : int
        Ledger id of the analysis whose reports are sent.
    destination : str
        Name of the destination (:class:`dicom_node.core.destinations.Destination`).
    """

    analysis_id: int
    destination: str

    @property
    def task_id(self) -> str:
        """Deterministic Celery task id."""
        return f"deliver:{self.analysis_id}:{self.destination}"


class TaskOutcome(_Payload):
    """What a task returns to the result backend (JSON, no PHI)."""

    state: str
    detail: str = ""
    outcome: Literal["done", "skipped", "failed", "retry"] = "done"
