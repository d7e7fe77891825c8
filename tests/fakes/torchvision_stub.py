"""FAKE ``torchvision`` (a stub), so torchxrayvision can be imported in tests.

torchxrayvision imports torchvision at import time (``import torchvision``,
``from torchvision import transforms``, ``import torchvision.models``) but
its DenseNet, ``utils.read_xray_dcm``, ``datasets.XRayCenterCrop`` and
``datasets.XRayResizer`` never use it. PyPI's torchvision wheels pin a torch
build that conflicts with ours, so tests install this stub instead of the
real package. Any attribute asked of the stub raises an AttributeError that
says it is the FAKE.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

FAKE_MARKER = "__fake_torchvision_stub__"
_SUBMODULES = ("models", "transforms", "datasets", "ops", "io", "utils")


def _stub_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name, f"FAKE torchvision stub ({name}); see tests/fakes.")
    setattr(module, FAKE_MARKER, True)

    def __getattr__(item: str) -> object:  # noqa: N807 - module-level __getattr__ (PEP 562)
        raise AttributeError(f"{name}.{item}: this is the FAKE torchvision stub from tests/fakes")

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module


def build_fake_torchvision() -> dict[str, types.ModuleType]:
    """Return the stub's modules by name: ``torchvision`` and its usual submodules."""
    package = _stub_module("torchvision")
    package.__path__ = []
    package.__dict__["__version__"] = "0.0.0+fake-stub"
    modules = {"torchvision": package}
    for sub in _SUBMODULES:
        module = _stub_module(f"torchvision.{sub}")
        setattr(package, sub, module)
        modules[f"torchvision.{sub}"] = module
    return modules


@contextmanager
def torchxrayvision_with_fake_torchvision() -> Iterator[types.ModuleType]:
    """Import torchxrayvision, with the FAKE torchvision when the real one is absent.

    On exit, the stub and any torchxrayvision modules imported here are
    removed from ``sys.modules`` again.

    Yields
    ------
    module
        ``torchxrayvision``.

    Raises
    ------
    pytest.skip.Exception
        If torchxrayvision (or one of its other dependencies) is not installed.
    """
    before = set(sys.modules)
    with pytest.MonkeyPatch.context() as patch:
        if importlib.util.find_spec("torchvision") is None:
            for name, module in build_fake_torchvision().items():
                patch.setitem(sys.modules, name, module)
        try:
            xrv = pytest.importorskip(
                "torchxrayvision",
                reason="torchxrayvision is not installed (pip install --no-deps "
                "torchxrayvision; pip install scikit-image pandas requests tqdm)",
            )
            yield xrv
        finally:
            for name in set(sys.modules) - before:
                if name.split(".")[0] == "torchxrayvision":
                    sys.modules.pop(name, None)
