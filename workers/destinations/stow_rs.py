"""Destination: a DICOMweb service, STOW-RS (PS3.18 10.5 Store Transaction), with dicomweb-client.

All items of an attempt go in one ``POST <url>/studies`` request
(``multipart/related; type="application/dicom"``). The answer maps to one
status per item (PS3.18 10.5.3, Table 10.5.3-1 and the Store Instances
Response Module, Annex I):

================================  ===============================================
HTTP answer                       result
================================  ===============================================
200 OK (any 2xx but 202)          every item 0x0000, or its Warning Reason
                                  (0008,1196) from the Referenced SOP Sequence
                                  (0008,1199); an item in the Failed SOP Sequence
                                  (0008,1198) gets its Failure Reason (0008,1197)
202 Accepted                      per item: Referenced SOP Sequence -> 0x0000 or
                                  its Warning Reason; Failed SOP Sequence -> its
                                  Failure Reason (0xA7xx retried; 0xA9xx, 0xC000,
                                  0xC122, 0x0110, 0x0122 dead letter); in neither
                                  -> 0x0110 (Processing failure)
409 Conflict                      per item as for 202 (no item was stored)
408, 429, 5xx, connection error,  :class:`DeliveryError` (retried)
timeout, 202 without an answer
other 4xx (400, 401, 403, 404,    :class:`PermanentDeliveryError` (dead letter):
406, 413, 415 ...), 409 without   the request is wrong, not the moment
a per-instance answer
================================  ===============================================

dicomweb-client's own retries are switched off (the ``deliver`` task retries
with back-off); the response is read through a response hook, so that 202
and 409 bodies are kept whatever their exact Content-Type.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from pydicom import Dataset, dcmread

from dicom_node.core import dimse
from dicom_node.core.destinations import Destination
from dicom_node.core.errors import DeliveryError, PermanentDeliveryError
from dicom_node.core.settings import Settings
from workers.destinations.base import Outbound, Sent, Timeouts

log = logging.getLogger(__name__)

HTTP_OK = 200
HTTP_ACCEPTED = 202
HTTP_CONFLICT = 409
RETRIED_4XX = frozenset({408, 429})
"""Request Timeout and Too Many Requests: the server says "later", so retry."""


def stow(destination: Destination, items: Sequence[Outbound], settings: Settings) -> list[Sent]:
    """Send ``items`` to a ``stow_rs`` destination in one STOW-RS request.

    Parameters
    ----------
    destination : Destination
        Kind ``stow_rs``: its base ``url`` and ``timeout_seconds``.
    items : sequence of Outbound
        The Part 10 files, in order.
    settings : Settings
        Default timeouts (``acse`` for the connect, ``dimse`` for the answer).

    Returns
    -------
    list of Sent
        One per item, in order (see the module table).

    Raises
    ------
    DeliveryError
        Connection error, timeout, HTTP 408/429/5xx, 202 without a per-instance answer.
    PermanentDeliveryError
        Any other HTTP 4xx, and 409 without a per-instance answer.
    OSError, pydicom.errors.InvalidDicomError
        If a report file cannot be read.
    """
    from dicomweb_client import DICOMwebClient

    if not items:
        return []
    assert destination.url is not None  # checked by Destination
    where = safe_url(destination.url)
    timeouts = Timeouts.of(destination, settings)
    datasets = [dcmread(item.path) for item in items]
    responses: list[requests.Response] = []

    def keep(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        responses.append(response)
        return response

    with requests.Session() as session:
        client = DICOMwebClient(
            destination.url,
            session=session,
            headers={"Accept": "application/dicom+json"},
            callback=keep,
            timeout=(timeouts.acse, timeouts.dimse),
        )
        client.set_http_retry_params(retry=False)
        try:
            client.store_instances(datasets)
        except requests.HTTPError:
            pass  # 4xx/5xx: the answer is in ``responses``
        except requests.RequestException as exc:
            raise DeliveryError(
                f"STOW-RS {where}: {exc.__class__.__name__} (unreachable or no answer "
                f"within {timeouts.dimse:g} s)"
            ) from exc
        except (ValueError, KeyError):
            pass  # dicomweb-client could not read the answer body; read it below
    if not responses:
        raise DeliveryError(f"STOW-RS {where}: no HTTP answer")
    response = responses[-1]
    sent = statuses_from_answer(response.status_code, answer_dataset(response), items, where)
    for item, result in zip(items, sent, strict=True):
        log.info(
            "STOW-RS %s (%s) to %s: HTTP %d, %s",
            item.sop_instance_uid,
            item.sop_class_uid,
            where,
            response.status_code,
            dimse.status_text(result.status),
        )
    return sent


def answer_dataset(response: requests.Response) -> Dataset | None:
    """The Store Instances Response (PS3.18 Annex I) in an answer, or None.

    Reads ``application/dicom+json`` (and ``application/json``) or
    ``application/dicom+xml`` (and ``application/xml``); None for an empty or
    unreadable body.
    """
    if not response.content:
        return None
    media = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    try:
        if media in ("application/dicom+json", "application/json"):
            body = response.json()
            if isinstance(body, list):  # some servers wrap the one data set in an array
                body = body[0] if body else {}
            return Dataset.from_json(body)
        if media in ("application/dicom+xml", "application/xml", "text/xml"):
            from xml.etree.ElementTree import fromstring

            from dicomweb_client.web import _load_xml_dataset

            loaded: Dataset = _load_xml_dataset(fromstring(response.content))
            return loaded
    except Exception:  # any malformed body: treated as "no per-instance answer"
        log.warning("STOW-RS answer body (%s) could not be read", media or "no media type")
    return None


def statuses_from_answer(
    code: int, answer: Dataset | None, items: Sequence[Outbound], where: str
) -> list[Sent]:
    """Map a STOW-RS answer to one status per item (the module table).

    Parameters
    ----------
    code : int
        HTTP status code.
    answer : Dataset or None
        The Store Instances Response, if any.
    items : sequence of Outbound
        The items of the request, in order.
    where : str
        The service, for messages (no credentials).

    Returns
    -------
    list of Sent
        One per item, in order.

    Raises
    ------
    DeliveryError, PermanentDeliveryError
        See the module table.
    """
    if code in RETRIED_4XX or code >= 500:
        raise DeliveryError(f"STOW-RS {where}: HTTP {code}")
    if code == HTTP_CONFLICT and answer is None:
        raise PermanentDeliveryError(f"STOW-RS {where}: HTTP 409 without a per-instance answer")
    if 400 <= code < 500 and code != HTTP_CONFLICT:
        raise PermanentDeliveryError(f"STOW-RS {where}: HTTP {code}")
    if not (200 <= code < 300 or code == HTTP_CONFLICT):
        raise DeliveryError(f"STOW-RS {where}: unexpected HTTP {code}")
    if code == HTTP_ACCEPTED and answer is None:
        raise DeliveryError(f"STOW-RS {where}: HTTP 202 without a per-instance answer")
    stored: dict[str, int] = {}
    failed: dict[str, int] = {}
    if answer is not None:
        for ref in answer.get("ReferencedSOPSequence", []):
            stored[str(ref.get("ReferencedSOPInstanceUID", ""))] = _code(ref, "WarningReason")
        for ref in answer.get("FailedSOPSequence", []):
            failed[str(ref.get("ReferencedSOPInstanceUID", ""))] = (
                _code(ref, "FailureReason") or dimse.PROCESSING_FAILURE
            )
    all_stored = code not in (HTTP_ACCEPTED, HTTP_CONFLICT)
    sent = []
    for item in items:
        uid = item.sop_instance_uid
        if uid in failed:
            status, note = failed[uid], "failed"
        elif uid in stored:
            status, note = stored[uid], "stored"
        elif all_stored:
            status, note = dimse.SUCCESS, "stored"
        else:
            status, note = dimse.PROCESSING_FAILURE, "not in the answer"
        sent.append(
            Sent(
                item.delivery_id,
                status,
                f"STOW-RS {where}: HTTP {code}, {note}, {dimse.status_text(status)}",
            )
        )
    return sent


def _code(item: Dataset, keyword: str) -> int:
    value = item.get(keyword)
    return int(value) if value is not None and value != "" else dimse.SUCCESS


def safe_url(url: str) -> str:
    """``url`` without user name, password, query or fragment (for logs and the ledger)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
