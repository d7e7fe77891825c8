"""STAT or routine: how urgent a study's analysis is, from the site's rules and the manifest.

A study is STAT for a model when the model's manifest says every study is
(``serving.priority: stat``), or when any of the instances the model runs on
matches any of the site's STAT rules (``DICOM_NODE_STAT_RULES``, default: a
top-level Requested Procedure Priority (0040,1003) or Study Priority ID
(0032,000C) of ``STAT``, PS3.3 C.4.11 / C.4.10). A STAT rule has the form of
a routing rule (:class:`models.manifest.RoutingRule`: calling AE titles,
modalities, descriptions, any attribute by keyword with a regular
expression) and is checked by the same code (:func:`models.routing.rule_reason`).

STAT analyses are published with a higher Celery priority
(:data:`dicom_node.core.contract.CELERY_PRIORITY`) and their images are
batched first by the worker's :class:`~workers.batching.DynamicBatcher`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import ValidationError
from pydicom import Dataset

from dicom_node.core.contract import Priority
from dicom_node.core.errors import ConfigError
from models.manifest import Manifest, RoutingRule, validation_problems
from models.routing import rule_reason


def parse_stat_rules(raw: Any) -> list[RoutingRule]:
    """Validate the STAT rules of the settings.

    Parameters
    ----------
    raw : list of dict
        ``settings.stat_rules``: each a routing rule's fields.

    Returns
    -------
    list of RoutingRule

    Raises
    ------
    ConfigError
        If ``raw`` is not a list, or a rule is not a valid routing rule or has
        no condition at all (it would make every study STAT); the text names
        the rule (``stat_rules[1]``) and the field.
    """
    if not isinstance(raw, list | tuple):
        kind = type(raw).__name__
        raise ConfigError(f"DICOM_NODE_STAT_RULES must be a list of rules, not {kind}")
    rules: list[RoutingRule] = []
    for index, item in enumerate(raw):
        where = f"DICOM_NODE_STAT_RULES: stat_rules[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} must be a mapping, not {type(item).__name__}")
        try:
            rule = RoutingRule.model_validate(item)
        except ValidationError as exc:
            problems = validation_problems(exc, "(rule)")
            raise ConfigError(f"{where} is invalid: {problems}") from exc
        if rule == RoutingRule():
            raise ConfigError(f"{where} has no condition: it would make every study STAT")
        rules.append(rule)
    return rules


def stat_reason(
    instances: Iterable[Dataset], calling_ae: str | None, rules: Sequence[RoutingRule]
) -> int | None:
    """Index of the first STAT rule an instance matches, or None when none does.

    Parameters
    ----------
    instances : iterable of pydicom.Dataset
        Headers (no pixel data needed). An unreadable one matches nothing.
    calling_ae : str or None
        Calling AE title of the association that sent the study.
    rules : sequence of RoutingRule
        From :func:`parse_stat_rules`.
    """
    headers = [ds for ds in instances if isinstance(ds, Dataset)]
    for index, rule in enumerate(rules):
        if any(rule_reason(rule, ds, calling_ae) is None for ds in headers):
            return index
    return None


def study_priority(
    manifest: Manifest,
    instances: Iterable[Dataset],
    calling_ae: str | None,
    rules: Sequence[RoutingRule],
) -> Priority:
    """The priority of one analysis: ``stat`` or ``routine``.

    Parameters
    ----------
    manifest : Manifest
        The analysis's model; ``serving.priority: stat`` makes it STAT.
    instances : iterable of pydicom.Dataset
        Headers of the instances the model runs on.
    calling_ae : str or None
        Calling AE title (for ``calling_aes`` rules).
    rules : sequence of RoutingRule
        The site's STAT rules (:func:`parse_stat_rules`); any match makes it STAT.

    Returns
    -------
    {"stat", "routine"}
    """
    if manifest.serving.priority == "stat":
        return "stat"
    return "stat" if stat_reason(instances, calling_ae, rules) is not None else "routine"
