"""The TensorRT engine builder: the ONNX export to a cached, host-specific engine plan.

Written against the TensorRT 10 Python API (TensorRT developer guide, "The
Python API": build phase; ``tensorrt.Builder``, ``OnnxParser``,
``IBuilderConfig``, ``ITimingCache``). TensorRT cannot be installed where this
project is tested (no wheels on the reachable registries): the steps below run
in CI against ``tests/fakes/fake_tensorrt.py`` and on a GPU host only with the
real library.

Steps, one function each:

1. :func:`create_network` - an explicit-batch network definition.
2. :func:`parse_onnx` - ``OnnxParser.parse``; every parser error is logged with
   its index and description, and :class:`EngineError` lists them.
3. :func:`builder_config` - precision flags (FP16; BF16; INT8 with an entropy
   calibrator over ``options.calibration_dir``), one optimization profile over
   the batch axis (min 1, opt = max = ``options.max_batch``) and the workspace
   limit (``set_memory_pool_limit(MemoryPoolType.WORKSPACE, ...)``).
4. :func:`build_plan` - ``build_serialized_network``; ``None`` raises EngineError.
5. :func:`save_plan` - the plan and its JSON sidecar, written durably.

The timing cache (:func:`models.engines.keys.timing_cache_path`, one per GPU
model and TensorRT version) is read before the build and merged back after it
under a :class:`filelock.FileLock`, so concurrent builds on one host share it
without losing entries. Engines are cached under :class:`EngineKey`; a plan
whose sidecar names another GPU, compute capability, TensorRT version, ONNX
hash, precision or max batch is never deserialized (:func:`read_valid_plan`).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

from filelock import FileLock

from dicom_node.core.durable import write_durably
from dicom_node.core.errors import BackendUnavailableError, EngineError
from models.backends.base import BackendOptions
from models.engines.keys import (
    EngineKey,
    HostFingerprint,
    host_fingerprint,
    read_sidecar,
    timing_cache_path,
)
from models.manifest import Manifest

log = logging.getLogger(__name__)

TENSORRT_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
_missing_logged = False


def import_tensorrt() -> Any:
    """Import ``tensorrt``, or say clearly that it is missing.

    Returns
    -------
    module
        The ``tensorrt`` module (whatever ``sys.modules`` holds: tests inject a fake).

    Raises
    ------
    BackendUnavailableError
        ``"TensorRT is not installed (...)"``; logged once per process, at WARNING,
        with what ``auto`` falls back to.
    """
    global _missing_logged
    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:
        reason = f"TensorRT is not installed ({exc})"
        if not _missing_logged:
            _missing_logged = True
            log.warning(
                "%s: backend auto falls back to torch on CUDA, else onnxruntime", reason
            )
        raise BackendUnavailableError(reason) from exc


def trt_logger(trt: Any) -> Any:
    """A ``tensorrt.Logger`` at WARNING (TensorRT prints its own build diagnostics)."""
    return trt.Logger(trt.Logger.WARNING)


def create_network(trt: Any, builder: Any) -> Any:
    """An explicit-batch ``INetworkDefinition``.

    TensorRT 10 networks are always explicit-batch (the flag is deprecated and
    ignored); it is still passed where the enum has it, for TensorRT 8.
    """
    flag = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    flags = 0 if flag is None else 1 << int(flag)
    return builder.create_network(flags)


def _describe(error: Any) -> str:
    """One line for an ``IParserError``: its description and node."""
    try:
        text = str(error.desc())
    except Exception:
        text = str(error)
    try:
        node = int(error.node())
    except Exception:
        node = -1
    return f"{text} (node {node})" if node >= 0 else text


def parse_onnx(trt: Any, network: Any, logger: Any, onnx_path: Path) -> Any:
    """Parse the ONNX file into ``network``.

    Returns
    -------
    tensorrt.OnnxParser
        Keep it alive as long as the network (it owns the parsed weights).

    Raises
    ------
    EngineError
        If the file is unreadable or the parser reports errors: each one is
        logged (index and description) and listed in the message.
    """
    parser = trt.OnnxParser(network, logger)
    try:
        data = onnx_path.read_bytes()
    except OSError as exc:
        raise EngineError(f"cannot read ONNX file {onnx_path.name}: {exc.strerror}") from exc
    if parser.parse(data):
        return parser
    errors = [_describe(parser.get_error(i)) for i in range(parser.num_errors)]
    for index, text in enumerate(errors):
        log.error("TensorRT ONNX parser error %d of %d in %s: %s", index + 1, len(errors),
                  onnx_path.name, text)
    listed = "; ".join(f"[{i}] {text}" for i, text in enumerate(errors)) or "no error reported"
    raise EngineError(f"TensorRT could not parse {onnx_path.name}: {listed}")


def builder_config(
    trt: Any,
    builder: Any,
    manifest: Manifest,
    precision: str,
    options: BackendOptions,
    calibrator: Any = None,
) -> Any:
    """The ``IBuilderConfig``: precision, optimization profile, workspace limit.

    Parameters
    ----------
    trt, builder : TensorRT module and ``tensorrt.Builder``
    manifest : Manifest
        Input name and per-image shape ``input.shape``.
    precision : {"fp32", "fp16", "bf16", "int8"}
        FP16 sets ``BuilderFlag.FP16``; BF16 ``BuilderFlag.BF16``; INT8 sets
        ``INT8`` and ``FP16`` (layers without INT8 kernels run in FP16) and the
        calibrator, calibrated at the profile's ``opt`` shape.
    options : BackendOptions
        ``batch_sizes`` (profile ``min=1, opt=max=max(batch_sizes)``) and
        ``workspace_mb``.
    calibrator : tensorrt.IInt8Calibrator, optional
        Required for INT8.

    Raises
    ------
    BackendUnavailableError
        If this TensorRT has no flag for the precision.
    EngineError
        INT8 without a calibrator.
    """
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mb) << 20)
    flags = {"fp32": [], "fp16": ["FP16"], "bf16": ["BF16"], "int8": ["INT8", "FP16"]}[precision]
    for name in flags:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is None:
            raise BackendUnavailableError(
                f"TensorRT {trt.__version__} has no {name} builder flag ({precision})"
            )
        config.set_flag(flag)
    shape = tuple(manifest.input.shape)
    largest = options.max_batch
    profile = builder.create_optimization_profile()
    profile.set_shape(manifest.input.name, (1, *shape), (largest, *shape), (largest, *shape))
    config.add_optimization_profile(profile)
    if precision == "int8":
        if calibrator is None:
            raise EngineError("INT8 needs a calibrator (set int8_calibration_dir)")
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profile)
    return config


def read_timing_cache(config: Any, path: Path) -> Any:
    """Create the config's timing cache from ``path`` (empty when absent) and attach it.

    Read under the timing cache's file lock, so a half-written file is never read.
    """
    with FileLock(str(path) + ".lock"):
        data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, False)
    return cache


def write_timing_cache(config: Any, path: Path) -> None:
    """Merge the build's timings into ``path`` under its file lock, durably.

    Entries another process wrote since :func:`read_timing_cache` are kept
    (``ITimingCache.combine``); the file is replaced atomically.
    """
    cache = config.get_timing_cache()
    if cache is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            on_disk = config.create_timing_cache(path.read_bytes())
            cache.combine(on_disk, False)
        write_durably(path, bytes(cache.serialize()))


def build_plan(builder: Any, network: Any, config: Any) -> bytes:
    """``build_serialized_network``; its ``IHostMemory`` as bytes.

    Raises
    ------
    EngineError
        If it returns None (TensorRT logged why: unsupported layer, too little
        workspace, out of memory).
    """
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(
            "TensorRT build_serialized_network returned None: the engine could not be "
            "built (see the TensorRT log lines above)"
        )
    return bytes(plan)


def save_plan(key: EngineKey, plan: bytes, models_dir: Path) -> Path:
    """Write the plan, then its sidecar, durably (a plan without a sidecar is never loaded)."""
    path = key.plan_path(models_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durably(path, plan)
    write_durably(key.sidecar_path(models_dir), key.to_json().encode())
    return path


def read_valid_plan(key: EngineKey, models_dir: Path) -> bytes | None:
    """The cached plan for ``key``, or None when there is none valid for this host.

    A plan is returned only when its sidecar's fields equal ``key``'s. Otherwise
    nothing is deserialized and the reason is logged: a sidecar at this path
    that differs, or other engines of the model built for another GPU, compute
    capability, TensorRT version, ONNX graph, precision or max batch.
    """
    path = key.plan_path(models_dir)
    sidecar = read_sidecar(key.sidecar_path(models_dir))
    if path.is_file() and sidecar is not None:
        differences = key.differences(sidecar)
        if not differences:
            return path.read_bytes()
        log.warning(
            "model %s: engine %s not loaded, built for another host or model: %s",
            key.model_id, path.name, "; ".join(differences),
        )
        return None
    if path.is_file():
        log.warning("model %s: engine %s has no sidecar: not loaded", key.model_id, path.name)
        return None
    for other in sorted(path.parent.glob(f"{key.model_id}-*.json")):
        fields = read_sidecar(other)
        if fields is not None and fields.get("model_id") == key.model_id:
            log.info(
                "model %s: engine %s is not for this host/model (%s); building %s",
                key.model_id, other.with_suffix(".plan").name,
                "; ".join(key.differences(fields)), path.name,
            )
    return None


def engine_key(
    trt: Any,
    manifest: Manifest,
    onnx_path: Path,
    precision: str,
    options: BackendOptions,
    host: HostFingerprint | None = None,
) -> EngineKey:
    """The key of the engine this host needs (``host``: default, from torch.cuda)."""
    from models.weights import sha256_file

    host = host or host_fingerprint(str(trt.__version__))
    return EngineKey.for_host(
        manifest.id, host, sha256_file(onnx_path), precision, options.max_batch
    )


def build_engine(
    trt: Any,
    manifest: Manifest,
    onnx_path: Path,
    key: EngineKey,
    models_dir: Path,
    options: BackendOptions,
) -> Path:
    """Run every build step and save the engine (no cache check: see :func:`ensure_engine`).

    Raises
    ------
    EngineError
        Parser errors, no engine from the builder, INT8 without calibration images.
    BackendUnavailableError
        A precision this TensorRT cannot build.
    """
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network = create_network(trt, builder)
    parser = parse_onnx(trt, network, logger, onnx_path)
    calibrator = None
    if key.precision == "int8":
        from models.engines.calibration import make_entropy_calibrator

        if options.calibration_dir is None:
            raise EngineError("INT8 needs int8_calibration_dir: a folder of DICOM images")
        calibrator = make_entropy_calibrator(
            trt,
            manifest,
            options.calibration_dir,
            key.plan_path(models_dir).with_suffix(".calibration"),
            batch_size=min(8, options.max_batch),
        )
    config = builder_config(trt, builder, manifest, key.precision, options, calibrator)
    cache_path = timing_cache_path(
        models_dir, HostFingerprint(key.gpu_name, key.compute_capability, key.tensorrt_version)
    )
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    read_timing_cache(config, cache_path)
    log.info(
        "model %s: building TensorRT %s engine %s (max batch %d, workspace %d MiB)",
        manifest.id, key.precision, key.short, key.max_batch, options.workspace_mb,
    )
    plan = build_plan(builder, network, config)
    write_timing_cache(config, cache_path)
    del parser
    path = save_plan(key, plan, models_dir)
    log.info("model %s: saved TensorRT engine %s (%d bytes)", manifest.id, path.name, len(plan))
    return path


def ensure_engine(
    trt: Any,
    manifest: Manifest,
    onnx_path: Path,
    models_dir: Path,
    precision: str,
    options: BackendOptions,
    host: HostFingerprint | None = None,
) -> EngineKey:
    """Make sure a valid engine for this host is cached; build it once otherwise.

    A file lock on the plan makes concurrent workers build it once.

    Returns
    -------
    EngineKey
        The key whose plan (:meth:`EngineKey.plan_path`) is now valid.
    """
    if precision not in TENSORRT_PRECISIONS:
        raise BackendUnavailableError(f"TensorRT cannot build precision {precision!r}")
    key = engine_key(trt, manifest, onnx_path, precision, options, host)
    path = key.plan_path(models_dir)
    if read_valid_plan(key, models_dir) is not None:
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file() and not key.differences(read_sidecar(key.sidecar_path(models_dir)) or {}):
            return key
        build_engine(trt, manifest, onnx_path, key, models_dir, options)
    return key


def deserialize_engine(
    trt: Any, key: EngineKey, models_dir: Path, logger: Any
) -> tuple[Any, Any]:
    """Deserialize the cached plan for ``key`` (never one whose sidecar differs).

    Returns
    -------
    (tensorrt.Runtime, tensorrt.ICudaEngine)
        Keep the runtime alive as long as the engine.

    Raises
    ------
    EngineError
        No valid plan for this host, or ``Runtime.deserialize_cuda_engine``
        returned None (a corrupt plan, or one TensorRT refuses).
    """
    plan = read_valid_plan(key, models_dir)
    if plan is None:
        raise EngineError(
            f"model {key.model_id}: no TensorRT engine for this host ({key.gpu_name}, "
            f"sm {key.compute_capability}, TensorRT {key.tensorrt_version}); "
            "run `dicom-node models build`"
        )
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise EngineError(
            f"model {key.model_id}: TensorRT could not deserialize engine {key.short}"
        )
    return runtime, engine
