"""Check that an ONNX file is a valid model whose graph fits its manifest.

Used when a site imports ONNX weights ("bring your own model") and again when
they are verified. The checks are those a backend would otherwise fail on
later, with a worse message: ``onnx.checker``, one graph input named
``input.name`` of rank 4 whose fixed dimensions equal ``input.shape``, and an
output named ``output.name`` of rank 2 with one column per label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dicom_node.core.errors import WeightsError, WeightsIntegrityError
from models.manifest import Manifest


def _dims(value_info: Any) -> list[int | None]:
    """Fixed dimensions of a graph input/output; None where symbolic or unknown."""
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def check_onnx(path: Path, manifest: Manifest) -> None:
    """Validate an ONNX file against a manifest's input and output contract.

    Parameters
    ----------
    path : Path
        The ``.onnx`` file.
    manifest : Manifest
        Declares ``input`` (name, layout, shape), ``output.name`` and the labels.

    Raises
    ------
    WeightsError
        If the file is not a loadable ONNX model or ``onnx.checker`` refuses it.
    WeightsIntegrityError
        If its input or output names, ranks, element types or fixed
        dimensions differ from the manifest.
    """
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise WeightsError(f"{path.name} is not a valid ONNX model: {exc}") from exc
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    where = f"{path.name} (model {manifest.id})"
    if len(inputs) != 1 or inputs[0].name != manifest.input.name:
        raise WeightsIntegrityError(
            f"{where}: graph inputs {[i.name for i in inputs]}, manifest declares one input "
            f"{manifest.input.name!r}"
        )
    float_type = onnx.TensorProto.FLOAT
    dims = _dims(inputs[0])
    if inputs[0].type.tensor_type.elem_type != float_type:
        raise WeightsIntegrityError(f"{where}: input {manifest.input.name!r} is not float32")
    if len(dims) != 4:
        raise WeightsIntegrityError(
            f"{where}: input {manifest.input.name!r} has rank {len(dims)}, expected 4 "
            f"(N, {manifest.input.layout[1:]})"
        )
    for axis, (got, want) in enumerate(zip(dims[1:], manifest.input.shape, strict=True), start=1):
        if got not in (None, 0) and got != want:
            raise WeightsIntegrityError(
                f"{where}: input dims {dims}, manifest declares (N, "
                f"{', '.join(map(str, manifest.input.shape))}) in {manifest.input.layout}; "
                f"axis {axis} differs"
            )
    outputs = {o.name: o for o in graph.output}
    output = outputs.get(manifest.output.name)
    if output is None:
        raise WeightsIntegrityError(
            f"{where}: graph outputs {sorted(outputs)}, manifest declares {manifest.output.name!r}"
        )
    out_dims = _dims(output)
    if len(out_dims) != 2:
        raise WeightsIntegrityError(
            f"{where}: output {manifest.output.name!r} has rank {len(out_dims)}, expected 2 (N, L)"
        )
    if out_dims[1] not in (None, 0) and out_dims[1] != len(manifest.labels):
        raise WeightsIntegrityError(
            f"{where}: output {manifest.output.name!r} has {out_dims[1]} columns, "
            f"manifest has {len(manifest.labels)} labels"
        )
