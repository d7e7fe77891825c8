"""Real validators run on the objects we write: dciodvfy, dsrdump, dcmjs.

- ``dciodvfy`` (dicom3tools): checks an object against its IOD (PS3.3) and the data
  dictionary (PS3.6); we want no ``Error`` line.
- ``dsrdump`` (dcmtk): parses and renders an SR document tree (PS3.3 C.17.3); it
  stops at content items it cannot read.
- dcmjs (npm, pinned in ``tests/js/package.json``): the DICOM parser OHIF uses;
  ``tests/js/ohif_check.mjs`` reports what OHIF's SR viewer would find (README there).

``make test`` installs all three (``make sysdeps``, ``make tests/js/node_modules``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

JS_DIR = Path(__file__).parent / "js"
OHIF_CHECK = JS_DIR / "ohif_check.mjs"


class ToolError(AssertionError):
    """A validator could not read or render an object."""


def tool(name: str) -> str:
    """Path of a command-line tool; fails the test (not skips) when it is missing."""
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is not installed; `make test` (make sysdeps) installs it")
    return path


def dciodvfy(path: Path | str) -> tuple[list[str], list[str]]:
    """Run dciodvfy on one file.

    Parameters
    ----------
    path : Path or str
        A DICOM Part 10 file.

    Returns
    -------
    errors : list of str
        Lines starting with ``Error``.
    warnings : list of str
        Lines starting with ``Warning``.
    """
    out = subprocess.run(
        [tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    lines = (out.stdout + out.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


def dsrdump(path: Path | str) -> str:
    """Render an SR document with dcmtk's dsrdump.

    Parameters
    ----------
    path : Path or str
        A DICOM SR file.

    Returns
    -------
    str
        The rendered document tree (dsrdump's standard output; template identifiers
        printed).

    Raises
    ------
    ToolError
        If dsrdump exits non-zero or logs an error (``E:``) or fatal (``F:``) line.
    """
    out = subprocess.run(
        [tool("dsrdump"), "+Pt", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    bad = [line for line in out.stderr.splitlines() if line.startswith(("E:", "F:"))]
    if out.returncode != 0 or bad or not out.stdout.strip():
        raise ToolError(f"dsrdump failed on {Path(path).name} (exit {out.returncode}): {bad}")
    return out.stdout


def node_modules_ready() -> bool:
    """Whether ``npm ci`` has run in ``tests/js`` (``make tests/js/node_modules``)."""
    return (JS_DIR / "node_modules" / "dcmjs" / "package.json").is_file()


def dcmjs_check(paths: Sequence[Path | str]) -> list[dict[str, Any]]:
    """Parse files with dcmjs and read their SR structure as OHIF does.

    Parameters
    ----------
    paths : sequence of Path or str
        DICOM Part 10 files.

    Returns
    -------
    list of dict
        One per file, in order: ``parsed`` (bool), ``error`` (when not parsed),
        ``sop_class_uid``, ``sop_instance_uid``, ``modality``, ``study_uid``,
        ``series_uid``, ``patient_id``, ``is_sr``, and for SRs ``sr``:
        ``root_concept`` ({value, scheme, meaning}), ``template``,
        ``image_library``, ``image_library_group``, ``library_images``,
        ``imaging_measurements``, ``groups`` (tracking identifier, tracking UID,
        finding code, NUM/IMAGE/SCOORD counts), ``ohif_fatal`` (what makes OHIF's SR
        loader refuse or throw), ``ohif_legacy`` (what older OHIF 3.x loaders throw
        on), ``adapters`` (dcmjs' ``MeasurementReport.generateToolState`` result).

    Raises
    ------
    ToolError
        If node is missing, ``tests/js/node_modules`` is not installed, or the
        script fails.
    """
    if not node_modules_ready():
        pytest.fail("tests/js/node_modules is missing; run `make tests/js/node_modules`")
    out = subprocess.run(
        [tool("node"), str(OHIF_CHECK), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=JS_DIR,
        env={**os.environ, "NODE_NO_WARNINGS": "1"},
    )
    if out.returncode != 0:
        raise ToolError(f"ohif_check.mjs exited {out.returncode}: {out.stderr[-2000:]}")
    results = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    if len(results) != len(paths):
        raise ToolError(f"ohif_check.mjs answered {len(results)} lines for {len(paths)} files")
    return results
