"""What the SCP accepts: storage SOP Classes, decodable transfer syntaxes, the sender's order.

Three rules, from the association negotiation of PS3.8 section 9.3.2.2 and
the Storage Service Class of PS3.4 Annex B:

- **SOP Classes.** Every storage SOP Class pynetdicom knows, plus the retired
  ones that older modalities still send (:data:`RETIRED_STORAGE_CLASSES`).
- **Transfer syntaxes.** Only those the node can decode with the decoders it
  installs (:data:`ACCEPTED_TRANSFER_SYNTAXES`). A presentation context that
  proposes nothing else is rejected with result 4, transfer-syntaxes-not-supported
  (PS3.8 section 9.3.3.2), so a sender that can convert does convert, and one that
  cannot fails at once instead of getting Success for an image the worker
  cannot read. Instances are stored as received, never transcoded.
- **The sender's preference.** pynetdicom's acceptor picks, for each proposed
  context, the first syntax of *its own* list that the requestor proposed. An
  ``EVT_REQUESTED`` handler (:func:`negotiation_handlers`) reorders this
  association's copy of that list so that the choice becomes: the first
  lossless compressed syntax the sender proposed, in the sender's order (it
  stores less); otherwise the sender's first proposed syntax that we accept.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from pydicom import uid as pydicom_uid
from pydicom.uid import UID
from pynetdicom import AE, AllStoragePresentationContexts, evt, register_uid
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import StorageServiceClass

if TYPE_CHECKING:
    from pynetdicom.events import Event

_CACHED_CONTEXTS = 1024
"""Reordered contexts kept for reuse (one per SOP Class and distinct proposal)."""


@dataclass(frozen=True)
class AcceptedSyntax:
    """A transfer syntax the SCP negotiates, and why the node can decode it.

    Attributes
    ----------
    uid : pydicom.uid.UID
        The Transfer Syntax UID (PS3.6 Table A-1).
    decoders : tuple of str
        The pydicom decoding plugins that read its pixel data here, in the
        order pydicom tries them (``pylibjpeg`` is pylibjpeg with
        pylibjpeg-openjpeg or pylibjpeg-rle); empty for native (uncompressed)
        pixel data, which pydicom reads itself, after inflating a deflated
        data set.
    lossless_compressed : bool
        Whether the data set is compressed and decodes bit for bit; such a
        syntax is preferred over uncompressed ones when the sender proposes both.
    reference : str
        Where PS3.5 defines the syntax.
    """

    uid: UID
    decoders: tuple[str, ...]
    lossless_compressed: bool
    reference: str


ACCEPTED_TRANSFER_SYNTAXES: tuple[AcceptedSyntax, ...] = (
    AcceptedSyntax(pydicom_uid.ExplicitVRLittleEndian, (), False, "PS3.5 A.2, section 10.1"),
    AcceptedSyntax(pydicom_uid.ImplicitVRLittleEndian, (), False, "PS3.5 A.1, section 10.1"),
    AcceptedSyntax(pydicom_uid.DeflatedExplicitVRLittleEndian, (), True, "PS3.5 A.5"),
    AcceptedSyntax(pydicom_uid.ExplicitVRBigEndian, (), False, "PS3.5 A.3 (retired)"),
    AcceptedSyntax(pydicom_uid.RLELossless, ("pylibjpeg", "pydicom"), True, "PS3.5 A.4.2, 10.4"),
    AcceptedSyntax(pydicom_uid.JPEGLossless, ("gdcm",), True, "PS3.5 A.4.1, section 10.2"),
    AcceptedSyntax(pydicom_uid.JPEGLosslessSV1, ("gdcm",), True, "PS3.5 A.4.1, section 10.2"),
    AcceptedSyntax(
        pydicom_uid.JPEGLSLossless, ("gdcm", "pyjpegls"), True, "PS3.5 A.4.3, section 10.5"
    ),
    AcceptedSyntax(
        pydicom_uid.JPEG2000Lossless,
        ("gdcm", "pylibjpeg", "pillow"),
        True,
        "PS3.5 A.4.4, section 10.6",
    ),
    AcceptedSyntax(pydicom_uid.HTJ2KLossless, ("pylibjpeg",), True, "PS3.5 A.4, section 10.18"),
    AcceptedSyntax(pydicom_uid.HTJ2KLosslessRPCL, ("pylibjpeg",), True, "PS3.5 A.4, section 10.18"),
    AcceptedSyntax(
        pydicom_uid.JPEGBaseline8Bit, ("gdcm", "pillow"), False, "PS3.5 A.4.1, section 10.3"
    ),
    AcceptedSyntax(
        pydicom_uid.JPEGLSNearLossless, ("gdcm", "pyjpegls"), False, "PS3.5 A.4.3, section 10.5"
    ),
    AcceptedSyntax(
        pydicom_uid.JPEG2000, ("gdcm", "pylibjpeg", "pillow"), False, "PS3.5 A.4.4, section 10.6"
    ),
    AcceptedSyntax(pydicom_uid.HTJ2K, ("pylibjpeg",), False, "PS3.5 A.4, section 10.18"),
)
"""The transfer syntaxes the SCP accepts: each one decodes with what the node installs.

pydicom 3 reads native pixel data itself (after inflating a deflated data
set); its plugins decode the rest: python-gdcm (JPEG lossless and baseline,
JPEG-LS, JPEG 2000), pylibjpeg with pylibjpeg-openjpeg (JPEG 2000, HTJ2K) and
pylibjpeg-rle (RLE); Pillow and pyjpegls (installed with highdicom) are further
choices pydicom tries. ``tests/test_contexts.py`` decodes a real sample of every
entry with every plugin listed. Not accepted, for want of a decoder:

- JPEG Extended (Process 2 & 4), 1.2.840.10008.1.2.4.51. pydicom 3.0's gdcm
  and Pillow plugins refuse 12-bit samples (Process 4, the case this syntax is
  the default for), and the choice is made at negotiation, before the bit
  depth is known. pylibjpeg-libjpeg would decode them but is GPL. A sender
  converts (to JPEG 2000, JPEG lossless or uncompressed) or fails.
- JPEG XL (…4.110, …4.111, …4.112), JPEG 2000 Part 2 (…4.92, …4.93),
  Encapsulated Uncompressed (…1.2.1.98), Deflated Image Frame Compression
  (…1.2.8.1), JPIP, MPEG-2, H.264, HEVC and SMPTE ST 2110: no installed
  decoder, or not pixel data a model takes.

The order is the acceptor's default; :func:`negotiation_handlers` reorders it
per association after the sender's proposal.
"""

LOSSLESS_COMPRESSED: frozenset[str] = frozenset(
    str(s.uid) for s in ACCEPTED_TRANSFER_SYNTAXES if s.lossless_compressed
)
"""Accepted syntaxes that compress without loss: preferred when the sender proposes one."""

RETIRED_STORAGE_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.6": "UltrasoundImageStorageRetired",
    "1.2.840.10008.5.1.4.1.1.3": "UltrasoundMultiFrameImageStorageRetired",
    "1.2.840.10008.5.1.4.1.1.5": "NuclearMedicineImageStorageRetired",
}
"""Retired storage SOP Classes older modalities still send (PS3.6 Table A-1,
retired), by UID, with pydicom's keyword.

pynetdicom's ``AllStoragePresentationContexts`` leaves them out; their names in
pydicom's UID dictionary end in "Image Storage", so the C-STORE handler treats
them as images."""


def storage_sop_classes() -> list[str]:
    """Every storage SOP Class UID the SCP accepts: pynetdicom's, then the retired ones."""
    known = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    return known + [uid for uid in RETIRED_STORAGE_CLASSES if uid not in known]


def add_storage_contexts(ae: AE) -> None:
    """Support every storage SOP Class with the transfer syntaxes we can decode.

    The retired SOP Classes are registered with pynetdicom's Storage Service
    Class (:func:`pynetdicom.register_uid`, idempotent), without which a
    C-STORE on an accepted context of theirs would find no service to run.

    Parameters
    ----------
    ae : pynetdicom.AE
        The acceptor AE.
    """
    for uid, keyword in RETIRED_STORAGE_CLASSES.items():
        register_uid(uid, keyword, StorageServiceClass)
    syntaxes = [str(s.uid) for s in ACCEPTED_TRANSFER_SYNTAXES]
    for uid in storage_sop_classes():
        ae.add_supported_context(uid, syntaxes)


def preferred_order(proposed: Iterable[str], supported: Sequence[str]) -> list[str]:
    """Order our transfer syntaxes for one SOP Class after the sender's proposal.

    Parameters
    ----------
    proposed : iterable of str
        The Transfer Syntax UIDs the requestor proposed for the SOP Class
        (PS3.8 section 9.3.2.2), in its order, taken as its preference.
    supported : sequence of str
        The syntaxes we support for the SOP Class, in our order.

    Returns
    -------
    list of str
        All of ``supported``: first the proposed lossless compressed ones, in
        the sender's order; then the other proposed ones, in the sender's
        order; then those not proposed, in our order. pynetdicom accepts the
        first of these that the context proposes.
    """
    ours = set(supported)
    wanted = [uid for uid in dict.fromkeys(str(u) for u in proposed) if uid in ours]
    lossless = [uid for uid in wanted if uid in LOSSLESS_COMPRESSED]
    others = [uid for uid in wanted if uid not in LOSSLESS_COMPRESSED]
    taken = set(wanted)
    return lossless + others + [uid for uid in supported if uid not in taken]


@lru_cache(maxsize=_CACHED_CONTEXTS)
def _reordered(
    abstract_syntax: str,
    supported: tuple[str, ...],
    proposed: tuple[str, ...],
    scu_role: bool | None,
    scp_role: bool | None,
) -> PresentationContext | None:
    """A supported context with its syntaxes in :func:`preferred_order`; None if unchanged.

    Cached: senders repeat their proposals, and pynetdicom only reads the
    supported contexts while negotiating, so one object serves many associations.
    """
    order = preferred_order(proposed, supported)
    if tuple(order) == supported:
        return None
    context = PresentationContext()
    context.abstract_syntax = abstract_syntax
    syntaxes: list[str | bytes | UID] = [UID(uid) for uid in order]
    context.transfer_syntax = syntaxes
    context.scu_role = scu_role
    context.scp_role = scp_role
    return context


def prefer_senders_syntaxes(event: Event) -> None:
    """``EVT_REQUESTED`` handler: reorder this association's supported contexts.

    pynetdicom triggers ``EVT_REQUESTED`` once the A-ASSOCIATE-RQ has arrived
    and before it negotiates (``Association.run_reactor``); until then the
    acceptor's supported contexts may be set for this association alone. The
    contexts of the SOP Classes the requestor proposed are replaced (never
    changed in place) by contexts whose syntaxes follow :func:`preferred_order`.

    A requestor may propose one SOP Class in several contexts; pynetdicom
    keeps one list per SOP Class, so their proposals are taken together, in
    the order of their context IDs. Associations already rejected (by the
    access policy) are left alone.
    """
    assoc = event.assoc
    request = assoc.requestor.primitive
    if not assoc.is_acceptor or assoc.is_rejected or assoc.is_aborted or request is None:
        return
    proposed: dict[str, list[str]] = {}
    for rq_context in sorted(
        request.presentation_context_definition_list, key=lambda cx: cx.context_id or 0
    ):
        proposed.setdefault(str(rq_context.abstract_syntax), []).extend(
            str(uid) for uid in rq_context.transfer_syntax
        )
    contexts: list[PresentationContext] = []
    for context in assoc.acceptor.supported_contexts:
        wanted = proposed.get(str(context.abstract_syntax))
        reordered = None
        if wanted:
            supported = tuple(context.transfer_syntax)
            ours = set(supported)
            # Only what we support, once each: keeps the cache keys small.
            relevant = tuple(uid for uid in dict.fromkeys(wanted) if uid in ours)
            reordered = _reordered(
                str(context.abstract_syntax),
                supported,
                relevant,
                context.scu_role,
                context.scp_role,
            )
        contexts.append(context if reordered is None else reordered)
    assoc.acceptor.supported_contexts = contexts


def negotiation_handlers() -> list[Any]:
    """Event handlers that order transfer syntaxes by the sender's preference.

    Returns
    -------
    list
        ``[(evt.EVT_REQUESTED, prefer_senders_syntaxes)]``, to bind after the
        access handlers (which may reject the association first).
    """
    return [(evt.EVT_REQUESTED, prefer_senders_syntaxes)]
