"""Reading and checking one preprocessing step's parameters.

A step is a mapping from a manifest, ``{step: <name>, <param>: <value>, ...}``.
:class:`StepParams` reads its parameters with their types, defaults and
bounds, and :meth:`StepParams.finish` refuses any key no reader asked for, so
a misspelt parameter fails validation instead of being silently ignored.
Every problem is a :class:`ValueError` that names the step, its position and
the parameter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

_T = TypeVar("_T", bound=str)
_REQUIRED: Any = object()


class StepParams:
    """Typed reader over one step's parameters.

    Parameters
    ----------
    raw : Mapping
        The step as written in the manifest, ``step`` key included.
    index : int
        Position of the step in the manifest's ``preprocessing`` list.
    """

    def __init__(self, raw: Mapping[str, Any], index: int) -> None:
        self._raw = raw
        self.name = str(raw.get("step", ""))
        self.where = f"preprocessing[{index}] ({self.name})"
        self._used: set[str] = {"step"}

    def error(self, key: str, problem: str) -> ValueError:
        """Return (not raise) a ValueError naming this step and ``key``."""
        return ValueError(f"{self.where}: {key}: {problem}")

    def has(self, key: str) -> bool:
        """Tell whether ``key`` was given (and mark it as known)."""
        self._used.add(key)
        return key in self._raw

    def _get(self, key: str, default: Any) -> Any:
        self._used.add(key)
        if key in self._raw and self._raw[key] is not None:
            return self._raw[key]
        if default is _REQUIRED:
            raise ValueError(f"{self.where}: missing required parameter {key!r}")
        return default

    def choice(self, key: str, options: Sequence[_T], default: Any = _REQUIRED) -> _T:
        """Read one of ``options`` (case-sensitive)."""
        value = self._get(key, default)
        for option in options:
            if value == option:
                return option
        raise self.error(key, f"{value!r} is not one of {list(options)}")

    def number(
        self,
        key: str,
        default: Any = _REQUIRED,
        *,
        positive: bool = False,
    ) -> float:
        """Read a finite real number (``positive``: strictly greater than 0)."""
        value = self._get(key, default)
        number = self._as_number(key, value)
        if positive and number <= 0:
            raise self.error(key, f"must be > 0, got {number}")
        return number

    def optional_number(self, key: str) -> float | None:
        """Read a finite real number, or None when absent."""
        value = self._get(key, None)
        return None if value is None else self._as_number(key, value)

    def integer(
        self,
        key: str,
        default: Any = _REQUIRED,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        """Read an integer within ``[minimum, maximum]``."""
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be <= {maximum}, got {value}")
        return value

    def optional_integer(
        self, key: str, *, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        """Read an integer, or None when absent."""
        if self._get(key, None) is None:
            return None
        return self.integer(key, minimum=minimum, maximum=maximum)

    def boolean(self, key: str, default: Any = _REQUIRED) -> bool:
        """Read a boolean (YAML ``true``/``false`` only, not 0/1)."""
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def optional_boolean(self, key: str) -> bool | None:
        """Read a boolean, or None when absent."""
        if self._get(key, None) is None:
            return None
        return self.boolean(key)

    def interval(self, key: str, default: Any = _REQUIRED) -> tuple[float, float]:
        """Read ``[lo, hi]`` with ``lo < hi``."""
        value = self._get(key, default)
        if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 2:
            raise self.error(key, f"must be a list [lo, hi], got {value!r}")
        low, high = (self._as_number(key, v) for v in value)
        if not low < high:
            raise self.error(key, f"needs lo < hi, got [{low}, {high}]")
        return low, high

    def size(self, key: str, default: Any = _REQUIRED) -> tuple[int, int]:
        """Read a size in pixels: ``N`` (square) or ``[H, W]``, each >= 1."""
        value = self._get(key, default)
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value, value]
        if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 2:
            raise self.error(key, f"must be N or [H, W], got {value!r}")
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
            raise self.error(key, f"must be positive integers, got {value!r}")
        return int(value[0]), int(value[1])

    def optional_size(self, key: str) -> tuple[int, int] | None:
        """Read a size, or None when absent."""
        if self._get(key, None) is None:
            return None
        return self.size(key)

    def numbers(
        self, key: str, default: Any = _REQUIRED, *, positive: bool = False
    ) -> tuple[float, ...]:
        """Read a scalar or a non-empty list of numbers (one per channel)."""
        value = self._get(key, default)
        items = value if isinstance(value, list | tuple) else [value]
        if not items:
            raise self.error(key, "must not be empty")
        numbers = tuple(self._as_number(key, v) for v in items)
        if positive and any(n <= 0 for n in numbers):
            raise self.error(key, f"must be > 0, got {list(numbers)}")
        return numbers

    def mappings(self, key: str) -> list[Mapping[str, Any]]:
        """Read a non-empty list of mappings."""
        value = self._get(key, _REQUIRED)
        if not isinstance(value, list) or not value:
            raise self.error(key, "must be a non-empty list")
        if not all(isinstance(item, Mapping) for item in value):
            raise self.error(key, "each item must be a mapping")
        return value

    def forbid(self, *keys: str, reason: str) -> None:
        """Refuse ``keys`` if given (they do not apply in this configuration)."""
        for key in keys:
            if key in self._raw:
                raise self.error(key, f"not allowed {reason}")
            self._used.add(key)

    def finish(self) -> None:
        """Refuse parameters that no reader asked for.

        Raises
        ------
        ValueError
            Naming the unknown parameters and the known ones.
        """
        unknown = sorted(set(self._raw) - self._used)
        if unknown:
            known = sorted(self._used - {"step"})
            raise ValueError(
                f"{self.where}: unknown parameter(s) {unknown}; known: {known or 'none'}"
            )

    def _as_number(self, key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, got {value!r}")
        number = float(value)
        if not math.isfinite(number):
            raise self.error(key, f"must be finite, got {value!r}")
        return number
