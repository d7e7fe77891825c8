"""Engine cache keys: what a compiled engine depends on, and this host's fingerprint.

A TensorRT engine (a "plan") is only valid on the GPU model, compute capability
and TensorRT version that built it (TensorRT developer guide, "Engine
compatibility": plans are not portable across devices or versions unless built
as hardware/version compatible, which we do not). It also depends on the ONNX
graph, the precision and the largest batch of its optimization profile. All of
these go into :class:`EngineKey`; its sha256 names the cached file and a JSON
sidecar keeps the fields, so a plan built elsewhere is recognised (and its
difference named) without deserializing it::

    <models_dir>/engines/tensorrt/<model_id>-<key[:16]>.plan
    <models_dir>/engines/tensorrt/<model_id>-<key[:16]>.json
    <models_dir>/engines/tensorrt/timing-<gpu>-sm<cc>-trt<version>.cache
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dicom_node.core.errors import BackendUnavailableError

ENGINE_DIR = Path("engines") / "tensorrt"
"""Where TensorRT engines live, relative to ``<models_dir>``."""


@dataclass(frozen=True)
class HostFingerprint:
    """The GPU and TensorRT an engine is built for.

    Attributes
    ----------
    gpu_name : str
        ``torch.cuda.get_device_name()``, e.g. ``"NVIDIA H100 80GB HBM3"``.
    compute_capability : str
        ``"major.minor"``, e.g. ``"9.0"``.
    tensorrt_version : str
        ``tensorrt.__version__``, e.g. ``"10.3.0"``.
    """

    gpu_name: str
    compute_capability: str
    tensorrt_version: str

    @property
    def slug(self) -> str:
        """A file-name-safe form: ``nvidia-h100-80gb-hbm3-sm90-trt10.3.0``."""
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu_name.lower()).strip("-") or "gpu"
        version = re.sub(r"[^A-Za-z0-9.]+", "-", self.tensorrt_version)
        return f"{gpu}-sm{self.compute_capability.replace('.', '')}-trt{version}"


def host_fingerprint(tensorrt_version: str, device_index: int = 0) -> HostFingerprint:
    """The fingerprint of this host, from torch's view of CUDA device ``device_index``.

    Parameters
    ----------
    tensorrt_version : str
        ``tensorrt.__version__`` of the imported module.
    device_index : int
        CUDA device ordinal.

    Raises
    ------
    BackendUnavailableError
        If torch is missing or sees no CUDA device.
    """
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailableError("torch is not installed (needed for CUDA buffers)") from exc
    if not torch.cuda.is_available():
        raise BackendUnavailableError("no CUDA device is visible (torch.cuda.is_available())")
    major, minor = torch.cuda.get_device_capability(device_index)
    return HostFingerprint(
        gpu_name=torch.cuda.get_device_name(device_index),
        compute_capability=f"{major}.{minor}",
        tensorrt_version=tensorrt_version,
    )


@dataclass(frozen=True)
class EngineKey:
    """Everything a TensorRT engine depends on.

    Attributes
    ----------
    model_id : str
        The manifest id (names the file; not hashed: the ONNX hash covers the graph).
    gpu_name, compute_capability, tensorrt_version : str
        See :class:`HostFingerprint`.
    onnx_sha256 : str
        sha256 of the ``.onnx`` file the engine is parsed from.
    precision : str
        ``fp16``, ``fp32``, ``bf16`` or ``int8``.
    max_batch : int
        Largest batch of the optimization profile (``opt`` and ``max``).
    """

    model_id: str
    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    onnx_sha256: str
    precision: str
    max_batch: int

    @classmethod
    def for_host(
        cls, model_id: str, host: HostFingerprint, onnx_sha256: str, precision: str, max_batch: int
    ) -> EngineKey:
        """The key of an engine for this host."""
        return cls(
            model_id=model_id,
            gpu_name=host.gpu_name,
            compute_capability=host.compute_capability,
            tensorrt_version=host.tensorrt_version,
            onnx_sha256=onnx_sha256,
            precision=precision,
            max_batch=int(max_batch),
        )

    @property
    def digest(self) -> str:
        """sha256 over GPU, compute capability, TensorRT, ONNX sha256, precision, max batch."""
        fields = [
            self.gpu_name,
            self.compute_capability,
            self.tensorrt_version,
            self.onnx_sha256,
            self.precision,
            str(self.max_batch),
        ]
        return hashlib.sha256("\x1f".join(fields).encode()).hexdigest()

    @property
    def short(self) -> str:
        """The first 16 hex digits of :attr:`digest` (in file names and SRs)."""
        return self.digest[:16]

    def plan_path(self, models_dir: Path) -> Path:
        """``<models_dir>/engines/tensorrt/<model_id>-<key[:16]>.plan``."""
        return models_dir / ENGINE_DIR / f"{self.model_id}-{self.short}.plan"

    def sidecar_path(self, models_dir: Path) -> Path:
        """The JSON sidecar beside the plan (same stem, ``.json``)."""
        return self.plan_path(models_dir).with_suffix(".json")

    def to_json(self) -> str:
        """The sidecar text: the key's fields and its digest."""
        return json.dumps({**asdict(self), "key": self.digest}, indent=2, sort_keys=True)

    def differences(self, sidecar: dict[str, Any]) -> list[str]:
        """How a sidecar's fields differ from this key ("" fields missing count as different).

        Returns
        -------
        list of str
            ``"gpu_name: 'A' != 'B'"`` per differing field (sidecar first); empty when
            the sidecar describes this very engine.
        """
        found: list[str] = []
        for name, expected in asdict(self).items():
            got = sidecar.get(name)
            if got != expected:
                found.append(f"{name}: {got!r} != {expected!r}")
        return found


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """A sidecar's fields, or None when it is missing or not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def timing_cache_path(models_dir: Path, host: HostFingerprint) -> Path:
    """The builder's timing cache for one GPU model and TensorRT version.

    Tactic timings are only valid on the GPU and TensorRT version that measured
    them (TensorRT developer guide, "Timing cache"), so each pair has its own file.
    """
    return models_dir / ENGINE_DIR / f"timing-{host.slug}.cache"
