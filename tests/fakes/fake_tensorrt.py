"""FAKE ``tensorrt`` module: just the TensorRT 10 Python API calls our engine builder makes.

TensorRT cannot be installed here (no wheels on the reachable registries), so
the build steps of :mod:`models.engines.tensorrt_build` run against this FAKE,
put in ``sys.modules["tensorrt"]`` by :func:`install`. It builds nothing: the
"plan" is JSON describing what the builder was told (flags, workspace,
optimization profile), so tests can check the steps. Knobs (module globals,
reset by :func:`install`): ``PARSER_ERRORS`` makes ``OnnxParser.parse`` fail
with those errors; ``BUILD_RETURNS_NONE`` makes ``build_serialized_network``
return None. ``BUILDS`` and ``DESERIALIZED`` record calls.

API modelled (names and signatures from the TensorRT Python API reference):
``__version__``, ``Logger(Logger.WARNING)``, ``Builder(logger)`` with
``create_network(flags)``, ``create_builder_config()``,
``create_optimization_profile()``, ``build_serialized_network(network, config)``;
``NetworkDefinitionCreationFlag.EXPLICIT_BATCH``; ``OnnxParser(network, logger)``
with ``parse(bytes)``, ``num_errors``, ``get_error(i)`` (``desc()``, ``node()``);
``IBuilderConfig.set_flag``, ``set_memory_pool_limit``, ``add_optimization_profile``,
``set_calibration_profile``, ``create_timing_cache(bytes)``,
``set_timing_cache(cache, ignore_mismatch)``, ``get_timing_cache()``;
``ITimingCache.serialize()`` / ``combine(other, ignore_mismatch)``;
``IOptimizationProfile.set_shape(name, min, opt, max)``; ``BuilderFlag``,
``MemoryPoolType.WORKSPACE``; ``Runtime(logger).deserialize_cuda_engine(bytes)``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

__version__ = "10.0.0-FAKE"

PARSER_ERRORS: list[str] = []
BUILD_RETURNS_NONE = False
BUILDS: list[dict[str, Any]] = []
DESERIALIZED: list[bytes] = []


def install(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Reset the knobs and records and put this FAKE in ``sys.modules["tensorrt"]``."""
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "PARSER_ERRORS", [])
    monkeypatch.setattr(module, "BUILD_RETURNS_NONE", False)
    monkeypatch.setattr(module, "BUILDS", [])
    monkeypatch.setattr(module, "DESERIALIZED", [])
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module


class Logger:
    """FAKE ``tensorrt.Logger``."""

    WARNING = 2

    def __init__(self, severity: int = WARNING) -> None:
        self.severity = severity


class NetworkDefinitionCreationFlag:
    """FAKE enum."""

    EXPLICIT_BATCH = 0


class BuilderFlag:
    """FAKE enum: the names are the values."""

    FP16 = "FP16"
    BF16 = "BF16"
    INT8 = "INT8"


class MemoryPoolType:
    """FAKE enum."""

    WORKSPACE = "WORKSPACE"


class DataType:
    """FAKE enum."""

    FLOAT = "FLOAT"
    HALF = "HALF"


class _Network:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.parsed = False


class _ParserError:
    def __init__(self, text: str, node: int) -> None:
        self._text, self._node = text, node

    def desc(self) -> str:
        return self._text

    def node(self) -> int:
        return self._node


class OnnxParser:
    """FAKE parser: fails with ``PARSER_ERRORS`` when set, else marks the network parsed."""

    def __init__(self, network: _Network, logger: Logger) -> None:
        self.network = network
        self._errors: list[_ParserError] = []

    def parse(self, data: bytes) -> bool:
        if PARSER_ERRORS:
            self._errors = [_ParserError(text, i) for i, text in enumerate(PARSER_ERRORS)]
            return False
        self.network.parsed = bool(data)
        return bool(data)

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> _ParserError:
        return self._errors[index]


class _Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, list[list[int]]] = {}

    def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:
        self.shapes[name] = [list(min), list(opt), list(max)]


class _TimingCache:
    def __init__(self, data: bytes) -> None:
        self.entries: list[str] = json.loads(data) if data else []

    def serialize(self) -> bytes:
        return json.dumps(sorted(set(self.entries))).encode()

    def combine(self, other: _TimingCache, ignore_mismatch: bool) -> bool:
        self.entries += other.entries
        return True


class _Config:
    def __init__(self) -> None:
        self.flags: list[str] = []
        self.pools: dict[str, int] = {}
        self.profiles: list[_Profile] = []
        self.timing_cache: _TimingCache | None = None
        self.int8_calibrator: Any = None
        self.calibration_profile: _Profile | None = None

    def set_flag(self, flag: str) -> None:
        self.flags.append(flag)

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.pools[pool] = size

    def add_optimization_profile(self, profile: _Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_calibration_profile(self, profile: _Profile) -> bool:
        self.calibration_profile = profile
        return True

    def create_timing_cache(self, data: bytes) -> _TimingCache:
        return _TimingCache(data)

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> _TimingCache | None:
        return self.timing_cache


class Builder:
    """FAKE builder: the "plan" is JSON of what it was told."""

    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def create_network(self, flags: int) -> _Network:
        return _Network(flags)

    def create_builder_config(self) -> _Config:
        return _Config()

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _Config) -> bytes | None:
        record = {
            "parsed": network.parsed,
            "flags": config.flags,
            "pools": config.pools,
            "profiles": [p.shapes for p in config.profiles],
        }
        BUILDS.append(record)
        if BUILD_RETURNS_NONE or not network.parsed:
            return None
        if config.timing_cache is not None:
            config.timing_cache.entries.append(f"tactic-{len(BUILDS)}")
        return b"FAKE-PLAN " + json.dumps(record).encode()


class _Engine:
    def __init__(self, plan: bytes) -> None:
        self.plan = plan


class Runtime:
    """FAKE runtime: records every plan it is asked to deserialize."""

    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, plan: bytes) -> _Engine | None:
        DESERIALIZED.append(plan)
        return _Engine(plan) if plan.startswith(b"FAKE-PLAN ") else None
