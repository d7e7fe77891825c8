"""Which destinations take a study's reports, and in which profiles.

Each destination's ``rules`` (:class:`dicom_node.core.destinations.Destination`)
are routing rules (:class:`models.manifest.RoutingRule`: calling AE titles,
modalities, descriptions, any attribute by keyword) checked by the routing code
(:func:`models.routing.rule_reason`): a study goes to a destination when any of
its rules matches any image the analysis used, or when it has no rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydantic import ValidationError
from pydicom import Dataset

from dicom_node.core.destinations import Destination
from dicom_node.core.errors import ConfigError
from models.manifest import RoutingRule, validation_problems
from models.routing import rule_reason
from workers.outputs import PROFILES


@dataclass(frozen=True)
class Route:
    """A destination with its parsed rules."""

    destination: Destination
    rules: tuple[RoutingRule, ...]

    def takes(self, headers: Sequence[Dataset], calling_ae: str | None) -> bool:
        """Whether the study (its analysed images' headers) goes to this destination."""
        if not self.rules:
            return True
        return any(
            rule_reason(rule, ds, calling_ae) is None for rule in self.rules for ds in headers
        )


def parse_routes(destinations: Iterable[Destination]) -> list[Route]:
    """Check every destination's profiles and rules.

    Parameters
    ----------
    destinations : iterable of Destination
        ``settings.report_destinations``.

    Returns
    -------
    list of Route

    Raises
    ------
    ConfigError
        If a destination names an unknown profile, or a rule is not a valid
        routing rule; the text names the destination, the rule and the field.
    """
    routes = []
    for destination in destinations:
        unknown = [p for p in destination.profiles if p not in PROFILES]
        if unknown:
            raise ConfigError(
                f"destination {destination.name}: unknown profile(s) {unknown}; "
                f"known: {sorted(PROFILES)}"
            )
        rules = []
        for index, raw in enumerate(destination.rules):
            try:
                rules.append(RoutingRule.model_validate(raw))
            except ValidationError as exc:
                problems = validation_problems(exc, "(rule)")
                raise ConfigError(
                    f"destination {destination.name}: rules[{index}] is invalid: {problems}"
                ) from exc
        routes.append(Route(destination, tuple(rules)))
    return routes


def destinations_for(
    routes: Sequence[Route], headers: Sequence[Dataset], calling_ae: str | None
) -> list[Destination]:
    """The destinations a study's reports go to, in configured order.

    Parameters
    ----------
    routes : sequence of Route
        From :func:`parse_routes`.
    headers : sequence of pydicom.Dataset
        Headers of the images the analysis used.
    calling_ae : str or None
        Calling AE title of the association that sent the study.
    """
    return [route.destination for route in routes if route.takes(headers, calling_ae)]


def profiles_for(destinations: Sequence[Destination]) -> list[str]:
    """Every profile any of ``destinations`` takes, each once, in first-named order."""
    seen: dict[str, None] = {}
    for destination in destinations:
        for profile in destination.profiles:
            seen.setdefault(profile, None)
    return list(seen)
