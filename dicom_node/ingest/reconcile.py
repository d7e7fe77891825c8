"""Spool ↔ ledger reconciliation, run by the primary SCP process before it listens.

The spool is the source of truth (:mod:`dicom_node.ingest.spool`): an
instance under its final name was fsynced and renamed before the sender got
Success. The SCP's ledger commits are not fsynced one by one (SQLite
``synchronous=NORMAL``), so a crash or power loss may lose the last ones, and
a kill -9 may land between the rename and the ledger commit, or in the middle
of receiving. At start the primary therefore:

1. removes half-written data sets: everything under ``.incoming/<pid>`` whose
   process is gone (other SCP processes sharing the port may be receiving
   into their own directories right now), and legacy ``.tmp-*`` files beside
   spool files. None of them was ever acknowledged;
2. records every ``<study>/<sop>.dcm`` the ledger does not list, classified for
   the loop guard as the C-STORE handler would, with its file time as the
   time received. A file that no longer parses, or is filed under UIDs other
   than its own, is moved to ``.quarantine`` and logged by name (a UID);
3. leaves studies received but never queued to the completion monitor: they
   are ``receiving`` in the ledger, and :meth:`~dicom_node.core.ledger.Ledger.due_studies`
   returns them once quiet; studies marked ``queued`` whose task was never
   sent are reopened when the monitor starts (``reopen_unsent``).

Nothing here raises for one bad file; a ledger that cannot be written stops
the start (:class:`~dicom_node.core.errors.LedgerError`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom.filereader import read_file_meta_info

from dicom_node.core.durable import fsync_dir
from dicom_node.core.errors import InvalidInstanceError
from dicom_node.core.ledger import InstanceRecord, Ledger
from dicom_node.ingest.header import read_header
from dicom_node.ingest.spool import INCOMING, Spool

log = logging.getLogger(__name__)

QUARANTINE = ".quarantine"
LEGACY_TMP_PREFIX = ".tmp-"
_CLOCK_SLACK = 1.0  # seconds: /proc start times are exact to about a second


@dataclass(frozen=True)
class ReconcileResult:
    """What one reconciliation found and did.

    Attributes
    ----------
    incoming_removed : int
        Half-written files of SCP processes that are gone, removed.
    incoming_kept : int
        ``.incoming`` directories of live SCP processes, left alone.
    tmp_removed : int
        Legacy ``.tmp-*`` files removed from study directories.
    checked : int
        Instance files in the spool.
    recorded : int
        Of those, missing from the ledger and recorded now.
    quarantined : int
        Of those, unreadable or misfiled, moved to ``.quarantine``.
    receiving : int
        Studies in ``receiving``: the completion monitor queues each once quiet.
    """

    incoming_removed: int = 0
    incoming_kept: int = 0
    tmp_removed: int = 0
    checked: int = 0
    recorded: int = 0
    quarantined: int = 0
    receiving: int = 0


def reconcile_spool(spool: Spool, ledger: Ledger) -> ReconcileResult:
    """Make the ledger agree with the spool after a crash (see the module docstring).

    Parameters
    ----------
    spool : Spool
        The spool; its ``.incoming`` and ``.quarantine`` live under its root.
    ledger : Ledger
        The study ledger.

    Returns
    -------
    ReconcileResult
        Counts, also logged.

    Raises
    ------
    LedgerError
        If the ledger cannot be read or written.
    """
    started = time.perf_counter()
    if not spool.root.is_dir():
        return ReconcileResult()
    removed, kept = _clean_incoming(spool.root / INCOMING)
    tmp = checked = recorded = quarantined = 0
    for study_dir in _study_dirs(spool.root):
        known = {Path(p).name for p in ledger.instance_paths(study_dir.name)}
        calling_ae: str | None = None
        looked_up = False
        for path in sorted(study_dir.iterdir()):
            if path.name.startswith(LEGACY_TMP_PREFIX):
                tmp += _unlink(path)
                continue
            if path.suffix != ".dcm" or not path.is_file():
                continue
            checked += 1
            if path.name in known or ledger.instance_exists(path.stem):
                continue
            if not looked_up:
                view = ledger.get(study_dir.name)
                calling_ae, looked_up = (view.study.calling_ae if view else None), True
            if _record(path, spool, ledger, calling_ae):
                recorded += 1
            else:
                quarantined += 1
    receiving = len(ledger.due_studies(0.0))
    result = ReconcileResult(removed, kept, tmp, checked, recorded, quarantined, receiving)
    log.info(
        "spool reconciled in %.2f s: %d instance file(s), %d recorded that the ledger missed, "
        "%d quarantined; %d half-written file(s) and %d legacy temp file(s) removed, "
        "%d live receiver(s) left alone; %d study(ies) receiving",
        time.perf_counter() - started,
        checked,
        recorded,
        quarantined,
        removed,
        tmp,
        kept,
        receiving,
    )
    return result


def _study_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _unlink(path: Path) -> int:
    try:
        path.unlink()
    except OSError as exc:
        log.warning("cannot remove %s: %s", path.name, exc.strerror)
        return 0
    return 1


def _clean_incoming(incoming: Path) -> tuple[int, int]:
    """Remove the receive directories of SCP processes that are gone; return (files, kept)."""
    if not incoming.is_dir():
        return 0, 0
    removed = kept = 0
    for entry in sorted(incoming.iterdir()):
        if entry.is_dir() and entry.name.isdigit() and _receiving(int(entry.name), entry):
            kept += 1
            continue
        files = [p for p in entry.rglob("*") if not p.is_dir()] if entry.is_dir() else [entry]
        try:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        except OSError as exc:
            log.warning("cannot remove %s/%s: %s", INCOMING, entry.name, exc.strerror)
            continue
        removed += len(files)
        if files:
            log.info(
                "removed %d half-written file(s) of SCP process %s (gone)", len(files), entry.name
            )
    return removed, kept


def _receiving(pid: int, directory: Path) -> bool:
    """Whether process ``pid`` is alive, not us, and is the one that wrote ``directory``.

    Our own pid at start, and a pid reused by a process that started after the
    newest file in the directory was written (containers restart with the
    same pids), hold only leftovers.
    """
    if pid == os.getpid() or not _alive(pid):
        return False
    started = _start_time(pid)
    if started is None:
        return True
    newest = None
    with contextlib.suppress(OSError):  # a live receiver renames its files away meanwhile
        newest = max((p.stat().st_mtime for p in directory.iterdir()), default=None)
    return newest is None or started <= newest + _CLOCK_SLACK


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # zombie or dead
    return True


def _start_time(pid: int) -> float | None:
    """Epoch seconds when ``pid`` started (Linux ``/proc``), or None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22, starttime, in clock ticks since boot
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _record(path: Path, spool: Spool, ledger: Ledger, calling_ae: str | None) -> bool:
    """Record a spool file the ledger missed; quarantine it if unusable. True if recorded."""
    try:
        header = read_header(path)
        syntax = str(read_file_meta_info(path).get("TransferSyntaxUID", ""))
    except InvalidInstanceError as exc:
        _quarantine(path, spool, str(exc))
        return False
    except Exception as exc:  # pydicom raises many types on malformed input
        _quarantine(path, spool, f"file meta cannot be read ({exc.__class__.__name__})")
        return False
    if spool.path_for(header.study_uid, header.sop_instance_uid) != path:
        _quarantine(path, spool, "its UIDs differ from the names it is filed under")
        return False
    role = header.role(ledger.produced_here(header.sop_instance_uid))
    ledger.record_instance(
        InstanceRecord(
            study_uid=header.study_uid,
            series_uid=header.series_uid,
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            transfer_syntax_uid=syntax,
            path=str(path),
            calling_ae=calling_ae,
            role=role,
        ),
        now=path.stat().st_mtime,
    )
    log.warning(
        "SOP Instance %s of study %s was in the spool but not in the ledger; recorded (%s)",
        header.sop_instance_uid,
        header.study_uid,
        role.value,
    )
    return True


def _quarantine(path: Path, spool: Spool, reason: str) -> None:
    target_dir = spool.root / QUARANTINE / path.parent.name
    target = target_dir / path.name
    n = 1
    while target.exists():
        target, n = target_dir / f"{path.name}.{n}", n + 1
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        fsync_dir(target_dir)
        fsync_dir(path.parent)
    except OSError as exc:
        log.error(
            "spool file %s/%s is unusable (%s) and cannot be quarantined: %s",
            path.parent.name,
            path.name,
            reason,
            exc.strerror,
        )
        return
    log.error(
        "spool file %s/%s is unusable (%s); moved to %s",
        path.parent.name,
        path.name,
        reason,
        target.relative_to(spool.root),
    )
