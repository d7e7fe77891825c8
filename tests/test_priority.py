"""STAT rules: which studies jump the queue, and how route_study publishes them.

Real parts: the shipped manifests, pydicom headers, the routing-rule checks, and
for the last test the ``route_study`` task with a real Redis broker and ledger
(as tests/test_tasks.py runs it).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from pydicom import Dataset, dcmread

from dicom_node.core.contract import CELERY_PRIORITY, ROUTE_TASK, Analyze, RouteStudy, model_queue
from dicom_node.core.errors import ConfigError
from dicom_node.core.ledger import AnalysisState
from dicom_node.core.settings import Settings
from models.manifest import Manifest, Serving
from models.priority import parse_stat_rules, study_priority
from models.registry import ModelRegistry
from tests.conftest import queue_keys, queued_messages
from tests.test_tasks import CHEST, _study, chain  # noqa: F401 (fixture)
from workers.context import WorkerContext

DEFAULT_RULES = parse_stat_rules(Settings().stat_rules)


@pytest.fixture(scope="module")
def chest() -> Manifest:
    return ModelRegistry.load(None).get(CHEST)


def _header(**attributes: Any) -> Dataset:
    ds = Dataset()
    ds.Modality = "CR"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def test_requested_procedure_priority_or_study_priority_stat_is_stat(chest: Manifest) -> None:
    assert len(DEFAULT_RULES) == 2
    stat = _header(RequestedProcedurePriority="STAT")
    routine = _header(RequestedProcedurePriority="ROUTINE")
    assert study_priority(chest, [routine, stat], None, DEFAULT_RULES) == "stat"  # any instance
    assert study_priority(chest, [routine], None, DEFAULT_RULES) == "routine"
    assert study_priority(chest, [_header(StudyPriorityID="STAT")], None, DEFAULT_RULES) == "stat"
    assert study_priority(chest, [_header(StudyPriorityID="STATUS")], None, DEFAULT_RULES) == (
        "routine"  # ^STAT$, not a prefix
    )
    assert study_priority(chest, [_header()], None, DEFAULT_RULES) == "routine"
    assert study_priority(chest, [], None, DEFAULT_RULES) == "routine"
    assert study_priority(chest, [None], None, DEFAULT_RULES) == "routine"  # type: ignore[list-item]


def test_a_calling_ae_rule_makes_a_sender_stat(chest: Manifest) -> None:
    rules = parse_stat_rules([{"calling_aes": ["ER_CT", "TRAUMA"]}, {"modalities": ["DX"]}])
    assert study_priority(chest, [_header()], "er_ct", rules) == "stat"  # AE titles: any case
    assert study_priority(chest, [_header()], "WARD_CR", rules) == "routine"
    assert study_priority(chest, [_header()], None, rules) == "routine"
    assert study_priority(chest, [_header(Modality="DX")], "WARD_CR", rules) == "stat"
    both = parse_stat_rules([{"calling_aes": ["ER_CT"], "modalities": ["CT"]}])  # AND within
    assert study_priority(chest, [_header()], "ER_CT", both) == "routine"


def test_a_manifest_with_serving_priority_stat_makes_every_study_stat(chest: Manifest) -> None:
    urgent = chest.model_copy(update={"serving": Serving(priority="stat")})
    assert study_priority(urgent, [_header()], None, []) == "stat"
    assert study_priority(chest, [_header()], None, []) == "routine"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([{"modalitys": ["CT"]}], r"stat_rules\[0\] is invalid: modalitys"),
        (
            [{"calling_aes": ["ER"]}, {"attributes": {"NotAKeyword": "^STAT$"}}],
            r"stat_rules\[1\] is invalid: attributes: .*'NotAKeyword' is not a DICOM keyword",
        ),
        ([{"study_description": "("}], r"stat_rules\[0\] is invalid: study_description"),
        ([{}], r"stat_rules\[0\] has no condition"),
        (["STAT"], r"stat_rules\[0\] must be a mapping"),
        ({"calling_aes": ["ER"]}, "must be a list of rules"),
    ],
)
def test_an_invalid_stat_rule_is_a_config_error_naming_it(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_stat_rules(raw)


def test_a_worker_refuses_invalid_stat_rules_at_start(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, stat_rules=[{"modalities": "CT", "bogus": 1}])
    with pytest.raises(ConfigError, match=r"stat_rules\[0\] is invalid: .*bogus"):
        WorkerContext(settings)


def _payload(message: dict[str, Any]) -> Analyze:
    _args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    return Analyze.model_validate(kwargs["request"])


def test_route_publishes_a_stat_study_with_the_stat_celery_priority(
    chain: tuple[Celery, WorkerContext, redis.Redis],  # noqa: F811
    tmp_path: Path,
) -> None:
    app, ctx, client = chain
    study_uid, paths = _study(ctx, tmp_path)
    chest_file = next(p for p in paths if p.endswith("chest.dcm"))
    ds = dcmread(chest_file)
    ds.RequestedProcedurePriority = "STAT"
    ds.save_as(chest_file, enforce_file_format=True)

    request = RouteStudy(study_uid=study_uid, generation=1, paths=paths, calling_ae="MODALITY")
    result = app.tasks[ROUTE_TASK].apply(kwargs={"request": request.model_dump()})
    assert result.successful(), result.traceback

    stat_list, *routine_lists = queue_keys(model_queue(CHEST))
    assert client.llen(stat_list) == 1 and not any(client.llen(k) for k in routine_lists)
    (message,) = queued_messages(client, model_queue(CHEST))
    assert message["properties"]["priority"] == CELERY_PRIORITY["stat"]
    payload = _payload(message)
    assert payload.priority == "stat"
    # a worker claims it and dies: the stall sweeper re-publishes the stored message, STAT kept
    assert ctx.ledger.transition_analysis(payload.analysis_id, AnalysisState.RUNNING)
    (stalled,) = ctx.ledger.stalled_analyses(float("inf"))
    assert stalled.payload is not None
    assert Analyze.model_validate_json(stalled.payload).priority == "stat"


def test_route_publishes_a_routine_study_with_the_routine_celery_priority(
    chain: tuple[Celery, WorkerContext, redis.Redis],  # noqa: F811
    tmp_path: Path,
) -> None:
    app, ctx, client = chain
    study_uid, paths = _study(ctx, tmp_path)
    request = RouteStudy(study_uid=study_uid, generation=1, paths=paths, calling_ae="MODALITY")
    assert app.tasks[ROUTE_TASK].apply(kwargs={"request": request.model_dump()}).successful()
    (message,) = queued_messages(client, model_queue(CHEST))
    assert message["properties"]["priority"] == CELERY_PRIORITY["routine"]
    assert _payload(message).priority == "routine"
