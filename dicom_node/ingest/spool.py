"""The spool: durable storage of received instances, grouped by study.

Layout: ``<data_dir>/spool/<StudyInstanceUID>/<SOPInstanceUID>.dcm``, written
with :func:`dicom_node.core.durable.write_durably`.
"""

from __future__ import annotations

from pathlib import Path

from dicom_node.core.durable import safe_component, write_durably


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

    def store(self, study_uid: str, sop_instance_uid: str, data: bytes) -> Path:
        """Store one encoded instance (Part 10 file bytes) durably.

        Raises
        ------
        DiskFullError, SpoolError
            See :func:`write_durably`.
        """
        return write_durably(self.path_for(study_uid, sop_instance_uid), data)
