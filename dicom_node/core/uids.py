"""Deterministic UIDs, so that work done twice produces the same DICOM instances.

A UID is ``2.25.`` followed by the decimal value of a name-based UUID (version 5)
of the given parts (PS3.5 B.2, "UUID Derived UID"). The same parts always give
the same UID; different parts give different UIDs with the collision odds of a
122-bit hash.
"""

from __future__ import annotations

import uuid

# Our namespace for name-based UUIDs (a random UUID fixed once for this product).
NAMESPACE = uuid.UUID("6f1c2a4e-3d0b-4f7e-9a51-2c8d7e5b9f13")


def derived_uid(*parts: str) -> str:
    """Return the UID derived from ``parts``.

    Parameters
    ----------
    *parts : str
        What identifies the object (for example study UID, generation, model id).

    Returns
    -------
    str
        A UID of at most 44 characters under the ``2.25`` root.
    """
    name = "\x1f".join(parts)  # unit separator: ("a", "bc") differs from ("ab", "c")
    return f"2.25.{uuid.uuid5(NAMESPACE, name).int}"
