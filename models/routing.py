"""Routing: which models run on which instances of a study, and why the others do not.

Each manifest's ``routing.rules`` (see :class:`models.manifest.RoutingRule`)
are matched against every instance header; an instance applies to a model when
any rule matches it. A study may match several models: each match becomes its
own analysis. For every (series, model) pair that does not run, the plan says
why in plain words, e.g. ``Modality CT not in [CR, DX]``.

Headers come from other people's machines: a missing, empty, multi-valued,
mistyped or undecodable attribute is a reason for a rejection, never an
exception. Reasons reach logs and the ledger, so a header value is quoted
only when it is a plausible coded term (:func:`dicom_node.core.redact.shown_value`,
e.g. ``CT`` or ``MONOCHROME2``) or a valid UID; anything else is named by its
keyword alone (``BodyPartExamined (value withheld) not in [CHEST]``).
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

from dicom_node.core.redact import WITHHELD, shown_value
from models.manifest import Manifest, RoutingRule
from models.preprocessing.attributes import is_uid

if TYPE_CHECKING:
    from models.registry import ModelRegistry

log = logging.getLogger(__name__)

NO_SERIES = "(no SeriesInstanceUID)"
"""Series key of instances whose header has no usable Series Instance UID."""
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

_Check = Callable[[Dataset, str | None], str | None]
"""``check(header, calling_ae)``: None when the condition holds, else the reason."""


@dataclass(frozen=True)
class RouteMatch:
    """One model to run on a study.

    Attributes
    ----------
    model_id, version : str
        The manifest.
    paths : list of str
        The instances it applies to, in input order.
    series_uids : list of str
        Their series, in order of first appearance.
    """

    model_id: str
    version: str
    paths: list[str]
    series_uids: list[str]


class Rejection(NamedTuple):
    """A (series, model) pair that does not run (or only partly), and why."""

    series_uid: str
    model_id: str
    reason: str


@dataclass
class RoutePlan:
    """What :func:`route` decided.

    Attributes
    ----------
    matches : list of RouteMatch
        One per model with at least one applicable instance, sorted by model id.
    rejections : list of Rejection
        One per (series, model) pair with inapplicable instances: the whole
        series, or ``"k of n instances: ..."`` when only some apply.
    """

    matches: list[RouteMatch] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def model_ids(self) -> list[str]:
        """Ids of the matched models."""
        return [m.model_id for m in self.matches]


def header_text(ds: Any, keyword: str) -> str:
    """An attribute's value as text, ``""`` when missing or unreadable; never raises.

    Multi-valued attributes are joined with a backslash (their DICOM form);
    bytes are decoded as Latin-1; surrounding spaces and NULs are stripped. A
    sequence or data set where a value belongs counts as unreadable.
    """
    try:
        value = ds.get(keyword) if isinstance(ds, Dataset) else None
        if value is None or isinstance(value, Dataset | DicomSequence):
            return ""
        if isinstance(value, bytes):
            value = value.decode("latin-1", "replace")
        if isinstance(value, (list, tuple, MultiValue)):
            return "\\".join(str(v).strip() for v in value).strip(" \x00")
        return str(value).strip(" \x00")
    except Exception:  # a malformed element: decoding errors of any kind
        return ""


def _shown(keyword: str, text: str) -> str:
    """A header value as a reason may quote it: a coded term or a UID, else withheld."""
    if not text:
        return "(none)"
    values = [v.strip() for v in text.split("\\")]
    if keyword.endswith("UID"):
        shown = [v if is_uid(v) else None for v in values]
    else:
        shown = [shown_value(v) for v in values]
    if any(v is None for v in shown):
        return f"({WITHHELD})"
    return "\\".join(v for v in shown if v is not None)


def _listed(values: list[str], shown: int = 8) -> str:
    """``[A, B, C]``, or the first few and how many more for long lists."""
    if len(values) <= shown:
        return f"[{', '.join(values)}]"
    return f"[{', '.join(values[: shown - 2])}, ... {len(values) - shown + 2} more]"


def _in_list(keyword: str, allowed: list[str]) -> _Check:
    wanted = {a.strip().upper() for a in allowed}

    def check(ds: Dataset, calling_ae: str | None) -> str | None:
        raw = header_text(ds, keyword)
        text = raw.upper()
        values = {text, *(v.strip() for v in text.split("\\"))} - {""}
        if values & wanted:
            return None
        return f"{keyword} {_shown(keyword, raw)} not in {_listed(allowed)}"

    return check


def _ae_shown(ae: str) -> str:
    """An AE title for a reason (AE titles are not patient data): printable, at most 16."""
    return "".join(c if c.isprintable() else "?" for c in ae[:16]) or "(none)"


def _calling_ae(allowed: list[str]) -> _Check:
    wanted = {a.strip().upper() for a in allowed}

    def check(ds: Dataset, calling_ae: str | None) -> str | None:
        ae = (calling_ae or "").strip()
        if ae.upper() in wanted:
            return None
        return f"calling AE {_ae_shown(ae)} not in {_listed(allowed)}"

    return check


def _regex(keyword: str, pattern: str) -> _Check:
    """Build a pattern check.

    Its reason never quotes the value: free text (a description, or any keyword a
    site names, even a patient's) may hold PHI, and reasons reach logs.
    """
    compiled = re.compile(pattern, re.IGNORECASE)

    def check(ds: Dataset, calling_ae: str | None) -> str | None:
        text = header_text(ds, keyword)
        if compiled.search(text):
            return None
        return f"{keyword} {'' if text else '(none) '}does not match /{pattern}/"

    return check


def _checks(rule: RoutingRule) -> list[_Check]:
    checks: list[_Check] = []
    for keyword, allowed in (
        ("Modality", rule.modalities),
        ("SOPClassUID", rule.sop_classes),
        ("BodyPartExamined", rule.body_parts),
        ("ViewPosition", rule.view_positions),
        ("PhotometricInterpretation", rule.photometric_interpretations),
    ):
        if allowed:
            checks.append(_in_list(keyword, allowed))
    if rule.calling_aes:
        checks.append(_calling_ae(rule.calling_aes))
    if rule.study_description is not None:
        checks.append(_regex("StudyDescription", rule.study_description))
    if rule.series_description is not None:
        checks.append(_regex("SeriesDescription", rule.series_description))
    for keyword, pattern in rule.attributes.items():
        checks.append(_regex(keyword, pattern))
    return checks


def rule_reason(rule: RoutingRule, ds: Dataset, calling_ae: str | None) -> str | None:
    """Why a rule does not match an instance, or None when it matches.

    Parameters
    ----------
    rule : RoutingRule
        One rule (all its non-empty fields must match).
    ds : pydicom.Dataset
        The instance's header.
    calling_ae : str or None
        AE title of the association that sent the study.

    Returns
    -------
    str or None
        The first failing condition in plain words.
    """
    return _first_failure(_checks(rule), ds, calling_ae)


def _first_failure(checks: list[_Check], ds: Dataset, calling_ae: str | None) -> str | None:
    for check in checks:
        reason = check(ds, calling_ae)
        if reason is not None:
            return reason
    return None


def _applies(rules: list[list[_Check]], ds: Dataset, calling_ae: str | None) -> str | None:
    if not isinstance(ds, Dataset):
        return "header unreadable"
    reasons: list[str] = []
    for checks in rules:
        reason = _first_failure(checks, ds, calling_ae)
        if reason is None:
            return None
        if reason not in reasons:
            reasons.append(reason)
    return " | ".join(reasons)


def applies(manifest: Manifest, ds: Dataset, calling_ae: str | None) -> str | None:
    """Whether a model applies to an instance: None if it does, else why not.

    When several rules fail, their distinct reasons are joined with ``" | "``.
    """
    return _applies([_checks(rule) for rule in manifest.routing.rules], ds, calling_ae)


def route(
    registry: ModelRegistry,
    instances: Sequence[tuple[str, Dataset]],
    calling_ae: str | None,
    enabled: Collection[str] | None = None,
) -> RoutePlan:
    """Decide which models run on a study's instances.

    Parameters
    ----------
    registry : ModelRegistry
        Manifests to consider.
    instances : sequence of (str, pydicom.Dataset)
        Path and header (pixel data not needed) of each instance.
    calling_ae : str or None
        Calling AE title of the sender (for ``calling_aes`` rules).
    enabled : collection of str, optional
        Model ids enabled on this node (None: all). Unknown ids are logged and ignored.

    Returns
    -------
    RoutePlan
        Matches, one per applicable model, and a rejection for every
        (series, model) pair that does not (fully) run. Never raises on
        malformed headers.
    """
    manifests = _enabled(registry, enabled)
    series: dict[str, list[tuple[str, Dataset]]] = {}
    for path, ds in instances:
        uid = header_text(ds, "SeriesInstanceUID") or NO_SERIES
        series.setdefault(uid, []).append((str(path), ds))
    plan = RoutePlan()
    for manifest in manifests:
        rules = [_checks(rule) for rule in manifest.routing.rules]
        paths: list[str] = []
        series_uids: list[str] = []
        for uid, members in series.items():
            reasons = [_applies(rules, ds, calling_ae) for _, ds in members]
            chosen = [path for (path, _), why in zip(members, reasons, strict=True) if why is None]
            if chosen:
                paths += chosen
                series_uids.append(uid)
            refused = [why for why in reasons if why is not None]
            if refused:
                reason, _ = Counter(refused).most_common(1)[0]
                if chosen:
                    reason = f"{len(refused)} of {len(members)} instances: {reason}"
                plan.rejections.append(Rejection(uid, manifest.id, reason))
        if paths:
            plan.matches.append(RouteMatch(manifest.id, manifest.version, paths, series_uids))
    return plan


def _enabled(registry: ModelRegistry, enabled: Collection[str] | None) -> list[Manifest]:
    if enabled is None:
        return registry.manifests()
    unknown = sorted(set(enabled) - set(registry.ids()))
    if unknown:
        log.warning("enabled models %s have no manifest; ignored", unknown)
    return [m for m in registry.manifests() if m.id in set(enabled)]


def read_headers(
    paths: Iterable[str | os.PathLike[str]],
) -> tuple[list[tuple[str, Dataset]], list[str]]:
    """Read instance headers (no pixel data) from files and directories.

    Parameters
    ----------
    paths : iterable of path-like
        Files, or directories searched recursively (sorted).

    Returns
    -------
    instances : list of (str, pydicom.Dataset)
        Path and header of each DICOM instance.
    skipped : list of str
        One line per file that is not a DICOM instance, naming the file and
        why (no attribute values, so no PHI).
    """
    instances: list[tuple[str, Dataset]] = []
    skipped: list[str] = []
    for path in _expand(paths, skipped):
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            skipped.append(f"{path}: not DICOM (no DICM prefix)")
            continue
        except Exception as exc:
            skipped.append(f"{path}: unreadable ({exc.__class__.__name__})")
            continue
        if (
            header_text(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID")
            == DICOMDIR_SOP_CLASS
        ):
            skipped.append(f"{path}: a DICOMDIR, not an instance")
            continue
        instances.append((str(path), ds))
    return instances, skipped


def _expand(paths: Iterable[str | os.PathLike[str]], skipped: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            skipped.append(f"{path}: no such file")
    return files
