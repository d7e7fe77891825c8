"""Durable file writes: temp file, fsync, rename, fsync of the directory.

A file exists under its final name only once its bytes are on disk, so a crash
leaves either the whole file or nothing (at worst a ``.tmp-*`` file beside it).
Also :func:`safe_component`, which turns a UID into a file name that cannot
escape its directory.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import uuid
from pathlib import Path

from dicom_node.core.errors import DiskFullError, SpoolError

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def safe_component(uid: str) -> str:
    """Turn a UID into a file-name component that cannot escape its directory.

    Parameters
    ----------
    uid : str
        A DICOM UID (PS3.5 9.1). Trailing NUL and spaces are removed.

    Returns
    -------
    str
        The UID itself when it is well formed (digits and dots, at most 64
        characters), else ``x-`` and the sha256 of the text, so a malformed UID
        still gets a stable, harmless name.
    """
    cleaned = uid.rstrip("\x00 ").strip()
    if _UID_RE.match(cleaned) and len(cleaned) <= 64:
        return cleaned
    return "x-" + hashlib.sha256(cleaned.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def fsync_dir(path: Path) -> None:
    """Fsync a directory so a rename inside it survives a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically and durably.

    Writes a temp file in the same directory, fsyncs it, renames it over
    ``path`` and fsyncs the directory.

    Parameters
    ----------
    path : Path
        Final file name.
    data : bytes or memoryview
        The exact bytes to store.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    DiskFullError
        If the file system is full (ENOSPC, EDQUOT).
    SpoolError
        On any other OS error; no partial file is left under ``path``.
    """
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in _FULL_ERRNOS:
            raise DiskFullError(f"no space left writing {path.name}") from exc
        raise SpoolError(f"cannot write {path.name}: {exc.strerror}") from exc
    return path
