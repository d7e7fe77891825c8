"""Library warnings captured while any analysis of this process runs, safe across threads.

:func:`dicom_node.core.redact.captured_library_warnings` changes process-wide
state (``warnings.catch_warnings``, pydicom's validation mode, the log record
factory) and restores it on exit. Two threads entering and leaving it in
overlapping order would restore each other's state: the last one out could
leave the process recording warnings into a list nobody logs (Python docs,
``warnings.catch_warnings``: "not thread-safe"). With Celery's threads pool
several analyses run at once, so they share one capture: the first thread in
enters it, the last one out leaves it, and every warning recorded meanwhile
is logged (redacted) then.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from dicom_node.core.redact import captured_library_warnings

_lock = threading.Lock()
_users = 0
_stack: ExitStack | None = None


@contextmanager
def shared_library_warnings() -> Iterator[None]:
    """:func:`~dicom_node.core.redact.captured_library_warnings`, shared by concurrent threads.

    Re-entrant and thread-safe; single-threaded it is exactly the wrapped
    context manager.
    """
    global _users, _stack
    with _lock:
        if _users == 0:
            stack = ExitStack()
            stack.enter_context(captured_library_warnings())
            _stack = stack
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0 and _stack is not None:
                stack, _stack = _stack, None
                stack.close()
