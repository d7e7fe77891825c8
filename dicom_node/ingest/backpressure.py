"""Backpressure: when C-STORE answers 0xA700 (Refused: Out of Resources, PS3.4 Table B.2-1).

Three limits, each checked before an instance is stored, and each lifting on
its own as soon as the condition clears:

- free space on the spool's file system below ``min_free_disk_mb`` (one
  ``statvfs`` per instance);
- the spool larger than ``spool_quota_mb`` (its size is measured by a
  background walk every few seconds, plus what this process stored since);
- ``max_pending_studies`` studies already waiting for the workers: a *new*
  study is refused, images of a study that is still being received are not,
  so a study is never cut in half.

The reason is returned as text for the log line; it carries no PHI.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from dicom_node.core.errors import LedgerError
from dicom_node.core.ledger import Ledger
from dicom_node.core.settings import Settings
from dicom_node.ingest.spool import Spool

log = logging.getLogger(__name__)

MIB = 1024 * 1024
QUOTA_REFRESH_SECONDS = 5.0
PENDING_REFRESH_SECONDS = 1.0


def tree_size(root: Path) -> int:
    """Bytes in regular files under ``root`` (0 if it does not exist)."""
    total = 0
    stack = [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total


class Backpressure:
    """Decides whether the node can take another instance now.

    Parameters
    ----------
    settings : Settings
        ``min_free_disk_mb``, ``spool_quota_mb``, ``max_pending_studies``.
    spool : Spool
        The spool whose file system and size are checked.
    ledger : Ledger
        Counts the studies waiting for the workers.
    clock : callable, optional
        Monotonic seconds (tests).
    """

    def __init__(
        self,
        settings: Settings,
        spool: Spool,
        ledger: Ledger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.ledger = ledger
        self.clock = clock
        self._lock = threading.Lock()
        self._spool_bytes: int | None = None
        self._spool_measured_at = -1e9
        self._measuring = False
        self._pending = 0
        self._pending_at = -1e9

    def refusal(self, study_uid: str, incoming_bytes: int = 0) -> str | None:
        """Why an instance of ``study_uid`` must be refused now, or None to go ahead.

        Parameters
        ----------
        study_uid : str
            The instance's (validated) Study Instance UID.
        incoming_bytes : int, optional
            Size of the instance, bytes (counted against the quota).

        Returns
        -------
        str or None
            A one-line reason naming the setting, or None.
        """
        return (
            self._disk_refusal()
            or self._quota_refusal(incoming_bytes)
            or self._pending_refusal(study_uid)
        )

    def stored(self, nbytes: int) -> None:
        """Count an instance this process stored toward the spool size until the next walk."""
        with self._lock:
            if self._spool_bytes is not None:
                self._spool_bytes += nbytes

    def _disk_refusal(self) -> str | None:
        limit = self.settings.min_free_disk_mb
        if limit <= 0:
            return None
        try:
            free = shutil.disk_usage(self.spool.root).free
        except OSError:
            return None  # the store itself will report the error
        if free < limit * MIB:
            return f"free disk {free / MIB:.0f} MB is below DICOM_NODE_MIN_FREE_DISK_MB={limit:g}"
        return None

    def _quota_refusal(self, incoming_bytes: int) -> str | None:
        quota = self.settings.spool_quota_mb
        if quota <= 0:
            return None
        self._refresh_spool_size()
        with self._lock:
            used = self._spool_bytes
        if used is not None and used + incoming_bytes > quota * MIB:
            return f"spool holds {used / MIB:.0f} MB, DICOM_NODE_SPOOL_QUOTA_MB={quota:g}"
        return None

    def _refresh_spool_size(self) -> None:
        now = self.clock()
        with self._lock:
            if self._measuring or now - self._spool_measured_at < QUOTA_REFRESH_SECONDS:
                return
            self._measuring = True
            first = self._spool_bytes is None

        def measure() -> None:
            size = tree_size(self.spool.root)
            with self._lock:
                self._spool_bytes = size
                self._spool_measured_at = self.clock()
                self._measuring = False

        if first:
            measure()  # the first answer must not be a guess
        else:
            threading.Thread(target=measure, name="spool-size", daemon=True).start()

    def _pending_refusal(self, study_uid: str) -> str | None:
        limit = self.settings.max_pending_studies
        if limit <= 0:
            return None
        try:
            if self.ledger.is_receiving(study_uid):
                return None  # never cut a study in half
            now = self.clock()
            with self._lock:
                stale = now - self._pending_at >= PENDING_REFRESH_SECONDS
            if stale:
                pending = self.ledger.pending_studies()
                with self._lock:
                    self._pending, self._pending_at = pending, now
        except LedgerError as exc:
            log.warning("backpressure: cannot count pending studies (%s)", exc.__class__.__name__)
            return None
        with self._lock:
            pending = self._pending
        if pending >= limit:
            return f"{pending} studies wait for the workers, DICOM_NODE_MAX_PENDING_STUDIES={limit}"
        return None
