"""Engine builders: turn installed weights into runnable, cached engines.

Modules: :mod:`~models.engines.onnx_export` (the ONNX graph every other engine
starts from, run by ONNX Runtime), :mod:`~models.engines.keys` (engine cache
keys and this host's GPU / TensorRT fingerprint),
:mod:`~models.engines.tensorrt_build` (TensorRT engines built from the ONNX
export, in small steps) and :mod:`~models.engines.calibration` (INT8
calibration from a folder of DICOM images). Nothing imports torch, onnx or
tensorrt at import time.
"""

from models.engines.onnx_export import (
    ONNX_OPSET,
    build_onnx_engine,
    build_torch_model,
    onnx_engine_path,
)

__all__ = ["ONNX_OPSET", "build_onnx_engine", "build_torch_model", "onnx_engine_path"]
