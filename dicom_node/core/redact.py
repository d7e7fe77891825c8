"""Texts that leave a process without patient data: attribute keywords, never values.

pydicom and highdicom quote the offending value when a value is invalid, in
exception texts, warnings and log lines (``Invalid value for VR CS:
'PID-4711'``). A patient ID in Patient's Sex, a name in a wrong VR or a bad
birth date would then reach the worker log, the ledger, ``dicom-node status``
and the Celery result store. Everything that leaves the node therefore goes
through this module:

- :func:`reason_for` turns any exception into a reason: our own
  :class:`~dicom_node.core.errors.DicomNodeError` texts as written (they name
  keywords, never values), any other exception as its class name and the DICOM
  keywords its text names (``ValueError (PatientSex)``).
- :func:`scrubbed` makes an exception safe to raise out of a Celery task (its
  arguments become the reason, its chain is cut), since the result backend
  stores the arguments and the formatted traceback.
- :func:`capture_library_warnings` (process-wide, for worker processes) and
  :func:`captured_library_warnings` (one block, undone after) keep pydicom and
  highdicom from printing values: reading validation off (PS3.5 6.2 checks
  happen where we copy values, not on every read), their warnings not shown,
  their log records redacted to the keywords they name.
- :func:`shown_value` decides whether a header value may be quoted at all:
  only a plausible coded term (a CS value such as ``CT`` or ``MONOCHROME2``).

Only the standard library, pydicom and our kernel are imported (the kernel
layer); highdicom is recognised by its module and logger names.
"""

from __future__ import annotations

import logging
import re
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from dicom_node.core.errors import DicomNodeError

LIBRARIES = ("pydicom", "highdicom")
"""Libraries whose warnings and log records may quote attribute values."""

MAX_REASON = 1000
"""Characters of a reason kept (ledger rows and log lines stay bounded)."""

WITHHELD = "value withheld"

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_WORD = re.compile(r"[A-Z][A-Za-z0-9]+")
_TAG = re.compile(r"\(\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)")
_CODED = re.compile(r"[A-Z][A-Z0-9_ ]{0,15}")
_MAX_CODED_DIGITS = 3


def _dictionary() -> tuple[dict[str, int], Callable[[int], str]]:
    from pydicom.datadict import keyword_dict, keyword_for_tag

    return keyword_dict, keyword_for_tag


def keywords_in(text: str) -> list[str]:
    """DICOM keywords a text names, in order, each once; quoted parts are not read.

    A word counts when it is a keyword of the data dictionary, or an enumeration
    name of one (highdicom's ``PatientSexValues`` names ``PatientSex``); a tag
    written ``(0010,0040)`` counts as its keyword. Text between quotes is skipped,
    since libraries quote values there.

    Parameters
    ----------
    text : str
        An exception or log text.

    Returns
    -------
    list of str
        Keywords, e.g. ``["PatientSex"]``.
    """
    keyword_dict, keyword_for_tag = _dictionary()
    bare = _QUOTED.sub(" ", text)
    found: list[str] = []
    for match in _TAG.finditer(bare):
        keyword = keyword_for_tag(int(match.group(1) + match.group(2), 16))
        if keyword and keyword not in found:
            found.append(keyword)
    for word in _WORD.findall(bare):
        for candidate in (word, word.removesuffix("Values")):
            if candidate in keyword_dict and candidate not in found:
                found.append(candidate)
                break
    return found


def _printable(text: str) -> str:
    cleaned = "".join(c if c.isprintable() else " " for c in text).strip()
    return cleaned if len(cleaned) <= MAX_REASON else cleaned[: MAX_REASON - 3] + "..."


def reason_for(exc: BaseException, keyword: str | None = None) -> str:
    """Describe an exception without quoting data.

    Parameters
    ----------
    exc : BaseException
        Any exception.
    keyword : str, optional
        The attribute known to be at fault (named instead of those found in the text).

    Returns
    -------
    str
        A :class:`DicomNodeError`'s own text (our messages name keywords, never
        values; control characters removed, at most :data:`MAX_REASON`
        characters). Any other exception: its class name and the keywords its
        text or its ``name`` attribute names, e.g. ``"ValueError (PatientSex)"``,
        ``"AttributeError (Rows)"`` or just ``"TypeError"``.
    """
    if isinstance(exc, DicomNodeError):
        return _printable(str(exc)) or type(exc).__name__
    if keyword:
        named = [keyword]
    else:
        named = keywords_in(_safe_str(exc))
        attribute = getattr(exc, "name", None)  # AttributeError, ImportError
        keyword_dict, _ = _dictionary()
        if isinstance(attribute, str) and attribute in keyword_dict and attribute not in named:
            named.insert(0, attribute)
    name = type(exc).__name__
    return f"{name} ({', '.join(named[:4])})" if named else name


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__
        return ""


def scrubbed(exc: BaseException) -> BaseException:
    """Make an exception safe to leave the process (Celery result backend, logs).

    Its ``args`` become ``(reason_for(exc),)``, its notes are dropped and its
    cause and context are cut, so neither ``str(exc)`` nor a formatted traceback
    quotes a value. The type is kept (callers and tests still recognise it).
    Raise it with ``raise scrubbed(exc) from None``.

    Returns
    -------
    BaseException
        ``exc`` itself, changed in place.
    """
    if not isinstance(exc, DicomNodeError):
        reason = reason_for(exc)
        with suppress(Exception):  # an exception type that refuses new args keeps them
            exc.args = (reason,)
    if hasattr(exc, "__notes__"):
        del exc.__notes__
    exc.__cause__ = None
    exc.__context__ = None
    exc.__suppress_context__ = True
    return exc


def frames(exc: BaseException) -> str:
    """Where an exception was raised: the traceback's frames without any exception text."""
    return "".join(traceback.format_tb(exc.__traceback__)).rstrip()


def shown_value(value: object) -> str | None:
    """A header value fit to quote in a reason, or None when it must be withheld.

    Only a plausible coded term is shown: a Code String (PS3.5 6.2, CS) of at
    most 16 characters that starts with a capital letter, holds only capitals,
    digits, space and underscore, and at most three digits (``CT``, ``CHEST``,
    ``MONOCHROME2``, ``YBR_FULL_422``). Names, identifiers, dates and free text
    never pass.
    """
    text = value.strip(" \x00") if isinstance(value, str) else None
    if not text or not _CODED.fullmatch(text):
        return None
    if sum(c.isdigit() for c in text) > _MAX_CODED_DIGITS:
        return None
    return text


def _origin(name: str) -> str | None:
    for library in LIBRARIES:
        if name == library or name.startswith(library + "."):
            return library
    return None


def redact_record(record: logging.LogRecord) -> None:
    """Replace a pydicom or highdicom log record's text with the keywords it names.

    The level, logger name and place are kept; the message, its arguments and
    any exception text are not (they may quote values).
    """
    try:
        text = record.getMessage()
    except Exception:  # arguments that do not fit the format
        text = str(record.msg)
    named = keywords_in(text)
    exc_type = record.exc_info[0] if record.exc_info else None
    parts = ["message withheld (it may quote attribute values)"]
    if named:
        parts.append(f"keywords: {', '.join(named[:6])}")
    if exc_type is not None:
        parts.append(f"exception: {exc_type.__name__}")
    record.msg = "; ".join(parts)
    record.args = ()
    record.exc_info = None
    record.exc_text = None
    record.stack_info = None


class LibraryRecordFilter(logging.Filter):
    """A logging filter that redacts records of pydicom's and highdicom's loggers.

    Attach it to a handler to redact whatever reaches that handler; the record
    factory that :func:`capture_library_warnings` installs does the same for
    every record, whichever handler gets it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact a library record in place; keep every record."""
        if _origin(record.name) is not None:
            redact_record(record)
        return True


@dataclass
class _RedactingFactory:
    """Log record factory that redacts records of the libraries' loggers."""

    previous: Callable[..., logging.LogRecord]

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.previous(*args, **kwargs)
        if _origin(record.name) is not None:
            redact_record(record)
        return record


def _install_factory() -> Callable[..., logging.LogRecord] | None:
    """Install the redacting record factory; return the one it replaced (None: already in)."""
    current = logging.getLogRecordFactory()
    if isinstance(current, _RedactingFactory):
        return None
    logging.setLogRecordFactory(_RedactingFactory(current))
    return current


def _set_validation() -> tuple[int | None, int | None]:
    from pydicom import config

    saved = (config.settings._reading_validation_mode, config.settings._writing_validation_mode)
    config.settings.reading_validation_mode = config.IGNORE
    config.settings.writing_validation_mode = config.WARN
    return saved


def _restore_validation(saved: tuple[int | None, int | None]) -> None:
    from pydicom import config

    config.settings._reading_validation_mode, config.settings._writing_validation_mode = saved


def _filter_warnings() -> None:
    for library in LIBRARIES:
        warnings.filterwarnings("ignore", module=rf"{library}(\.|$)")


_installed = False


def capture_library_warnings() -> None:
    """Keep pydicom and highdicom from printing values, for the rest of the process.

    Call it once when a worker process starts (idempotent). It

    - sets pydicom's ``reading_validation_mode`` to IGNORE: reading an invalid
      value no longer warns with the value (validation happens where a value is
      copied into a report, :mod:`workers.outputs.headers`), and
      ``writing_validation_mode`` to WARN;
    - ignores warnings raised in pydicom's and highdicom's modules (pydicom logs
      each of its warnings as well, and that record is redacted);
    - installs a log record factory that redacts every record of the
      ``pydicom`` and ``highdicom`` loggers and their children
      (:func:`redact_record`), whichever handler gets it.
    """
    global _installed
    if _installed:
        return
    _set_validation()
    _filter_warnings()
    _install_factory()
    _installed = True


@contextmanager
def captured_library_warnings() -> Iterator[None]:
    """:func:`capture_library_warnings` for one block, undone afterwards.

    Inside the block every warning is recorded instead of shown. When the block
    ends, each one is logged without its text: a pydicom warning not at all
    (pydicom logged it already, and that record is redacted), a highdicom one
    on the ``highdicom`` logger (redacted), any other on ``py.warnings`` as its
    category, place and the keywords it names. Process-wide state: for
    single-threaded (prefork) worker processes and tests.
    """
    saved = _set_validation()
    factory = _install_factory()
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as recorded:
            caught = recorded
            warnings.simplefilter("always")
            yield
    finally:
        if not _installed:
            _restore_validation(saved)
        try:
            for item in caught:
                _log_warning(item)
        finally:
            if factory is not None and not _installed:
                logging.setLogRecordFactory(factory)


def _log_warning(item: warnings.WarningMessage) -> None:
    origin = _library_of_file(item.filename)
    if origin == "pydicom":
        return  # pydicom.misc.warn_and_log logged it already (redacted)
    if origin is not None:
        logging.getLogger(origin).warning("%s", item.message)  # the record factory redacts it
        return
    named = keywords_in(str(item.message))
    logging.getLogger("py.warnings").warning(
        "%s at %s:%d: text withheld (it may quote attribute values)%s",
        item.category.__name__,
        item.filename,
        item.lineno,
        f"; keywords: {', '.join(named[:6])}" if named else "",
    )


def _library_of_file(filename: str) -> str | None:
    parts = filename.replace("\\", "/").split("/")
    for library in LIBRARIES:
        if library in parts[:-1]:
            return library
    return None
