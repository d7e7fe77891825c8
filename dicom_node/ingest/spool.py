"""The spool: durable storage of received instances, grouped by study. The source of truth.

Layout::

    <data_dir>/spool/<StudyInstanceUID>/<SOPInstanceUID>.dcm   Part 10 files, as received
    <data_dir>/spool/.incoming/<pid>/tmp*.dcm                  being received by SCP process <pid>

pynetdicom writes each received data set straight into ``.incoming/<pid>``
(the same file system), and :meth:`Spool.commit` makes it durable with one
fsync and a rename. A file under its final name is complete; anything left in
``.incoming`` after a crash was never acknowledged and is removed at start
(:mod:`dicom_node.ingest.reconcile`).
"""

from __future__ import annotations

import errno
import filecmp
import os
from pathlib import Path

from dicom_node.core.durable import fsync_dir, safe_component, write_durably
from dicom_node.core.errors import DiskFullError, SpoolError

INCOMING = ".incoming"
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


class Spool:
    """The directory tree of received instances, grouped by study.

    Parameters
    ----------
    root : Path
        ``<data_dir>/spool``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, study_uid: str, sop_instance_uid: str) -> Path:
        """Return where an instance is stored."""
        return self.root / safe_component(study_uid) / f"{safe_component(sop_instance_uid)}.dcm"

    def incoming_dir(self, pid: int) -> Path:
        """Where SCP process ``pid`` receives data sets (created if missing)."""
        path = self.root / INCOMING / str(pid)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def store(self, study_uid: str, sop_instance_uid: str, data: bytes) -> Path:
        """Store one encoded instance (Part 10 file bytes) durably.

        Raises
        ------
        DiskFullError, SpoolError
            See :func:`~dicom_node.core.durable.write_durably`.
        """
        return write_durably(self.path_for(study_uid, sop_instance_uid), data)

    def same_as_stored(self, received: Path, study_uid: str, sop_instance_uid: str) -> bool:
        """Whether ``received`` has exactly the bytes already stored for this instance."""
        stored = self.path_for(study_uid, sop_instance_uid)
        try:
            return filecmp.cmp(received, stored, shallow=False)
        except OSError:
            return False

    def commit(self, received: Path, study_uid: str, sop_instance_uid: str) -> Path:
        """Make a received file durable under its final name: fsync, rename, fsync the directory.

        Parameters
        ----------
        received : Path
            A complete Part 10 file in this spool's ``.incoming`` (same file system).
        study_uid, sop_instance_uid : str
            Validated UIDs (they become path components).

        Returns
        -------
        Path
            The final path; an earlier file of the same instance is replaced atomically.

        Raises
        ------
        DiskFullError
            ENOSPC or EDQUOT.
        SpoolError
            Any other OS error; nothing appears under the final name.
        """
        final = self.path_for(study_uid, sop_instance_uid)
        try:
            fd = os.open(received, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            if not final.parent.is_dir():
                final.parent.mkdir(parents=True, exist_ok=True)
                fsync_dir(self.root)
            os.replace(received, final)
            fsync_dir(final.parent)
        except OSError as exc:
            if exc.errno in _FULL_ERRNOS:
                raise DiskFullError(f"no space left storing {final.name}") from exc
            raise SpoolError(f"cannot store {final.name}: {exc.strerror}") from exc
        return final
