"""The step registry: step name -> factory that checks parameters and builds the step.

The registry is an immutable object made by :func:`default_steps`; nothing is
registered at import time and there is no module-global mutable registry. A
site or test that needs another step builds a new registry with
:meth:`StepRegistry.with_step`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .geometry import make_center_crop, make_pad_square
from .intensity import (
    make_gray_to_rgb,
    make_invert_monochrome1,
    make_modality_lut,
    make_normalize,
    make_voi_lut,
    make_windows,
)
from .params import StepParams
from .resize import make_resize
from .scaling import make_scale
from .types import Step

StepFactory = Callable[[StepParams], Step]
"""Reads a step's parameters (raising ValueError) and returns the configured step."""


@dataclass(frozen=True)
class BoundStep:
    """A configured step with its manifest position and name (for error texts)."""

    index: int
    name: str
    run: Step


class StepRegistry(Mapping[str, StepFactory]):
    """Immutable mapping from step name to factory.

    Parameters
    ----------
    factories : Mapping
        ``{name: factory}``.
    """

    def __init__(self, factories: Mapping[str, StepFactory]) -> None:
        self._factories = MappingProxyType(dict(factories))

    def __getitem__(self, name: str) -> StepFactory:
        return self._factories[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._factories)

    def __len__(self) -> int:
        return len(self._factories)

    def with_step(self, name: str, factory: StepFactory) -> StepRegistry:
        """Return a new registry with ``name`` added or replaced."""
        return StepRegistry({**self._factories, name: factory})

    def build(self, spec: Any, index: int) -> BoundStep:
        """Check one manifest step and configure it.

        Parameters
        ----------
        spec : Mapping
            ``{step: <name>, ...params}``.
        index : int
            Its position in the manifest list.

        Raises
        ------
        ValueError
            Unknown step name, unknown parameter, or a bad value.
        """
        if not isinstance(spec, Mapping):
            raise ValueError(
                f"preprocessing[{index}]: expected a mapping, got {type(spec).__name__}"
            )
        name = spec.get("step")
        if not isinstance(name, str) or not name:
            raise ValueError(f"preprocessing[{index}]: missing 'step' (one of {sorted(self)})")
        if name not in self._factories:
            raise ValueError(
                f"preprocessing[{index}]: unknown step {name!r}; known steps: {sorted(self)}"
            )
        params = StepParams(spec, index)
        run = self._factories[name](params)
        params.finish()
        return BoundStep(index, name, run)


def default_steps() -> StepRegistry:
    """Return a new registry with the documented vocabulary (see :mod:`models.preprocessing`)."""
    return StepRegistry(
        {
            "modality_lut": make_modality_lut,
            "voi_lut": make_voi_lut,
            "invert_monochrome1": make_invert_monochrome1,
            "normalize": make_normalize,
            "windows": make_windows,
            "gray_to_rgb": make_gray_to_rgb,
            "center_crop": make_center_crop,
            "pad_square": make_pad_square,
            "resize": make_resize,
            "scale": make_scale,
        }
    )
