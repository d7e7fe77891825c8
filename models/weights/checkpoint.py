"""Read tensors from a pickled torch checkpoint without running its code.

torchxrayvision publishes each model as a whole pickled ``nn.Module`` whose
pickle names torchxrayvision's classes. Importing that package would pull in
torchvision, and unpickling untrusted data runs code. So :func:`read_checkpoint`
rebuilds only the tensors with a restricted unpickler: tensor-rebuild functions
and storages are allowed, every ``torch.nn`` / ``torchxrayvision`` class is
replaced by an inert :class:`_ModuleStub` that only keeps its attribute dict,
and any other global raises :class:`~dicom_node.core.errors.UnsafePickleError`.
"""

from __future__ import annotations

import pickle
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any

import torch

from dicom_node.core.errors import UnsafePickleError, WeightsError


class _ModuleStub:
    """Stands in for any pickled nn.Module class; keeps state, runs no code."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,  # protocol-2 pickles name builtins the Python 2 way
}
_STUB_MODULE_PREFIXES = ("torch.nn.modules.", "torchxrayvision.")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module.startswith(_STUB_MODULE_PREFIXES):
            return type(name, (_ModuleStub,), {"__module__": "stub." + module})
        raise UnsafePickleError(f"checkpoint references forbidden global {module}.{name}")


class _RestrictedPickleModule:
    """A ``pickle_module`` for ``torch.load`` that uses :class:`_RestrictedUnpickler`."""

    Unpickler = _RestrictedUnpickler
    __name__ = "restricted_pickle"

    @staticmethod
    def load(file: IO[bytes], **kwargs: Any) -> Any:
        return _RestrictedUnpickler(file, **kwargs).load()


def _collect_tensors(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    state = obj.__dict__
    for group in ("_parameters", "_buffers"):
        for name, tensor in (state.get(group) or {}).items():
            if isinstance(tensor, torch.Tensor):
                out[prefix + name] = tensor.detach().clone()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _collect_tensors(child, f"{prefix}{name}.", out)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors from a pickled checkpoint without running its code.

    Accepts a whole pickled module (torchxrayvision's published files) or a
    plain state dict (optionally under ``"state_dict"``), in either torch's zip
    or legacy format. A ``module.`` prefix (``DataParallel``) is removed.

    Parameters
    ----------
    path : Path
        The checkpoint.

    Returns
    -------
    dict of str to Tensor
        ``state_dict``-style names to CPU tensors.

    Raises
    ------
    UnsafePickleError
        If the pickle references a global outside the allowlist.
    WeightsError
        If the file cannot be read as a torch checkpoint.
    """
    try:
        with warnings.catch_warnings():  # legacy files: "couldn't retrieve source code"
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(
                path, map_location="cpu", pickle_module=_RestrictedPickleModule, weights_only=False
            )
    except UnsafePickleError:
        raise
    except Exception as exc:
        raise WeightsError(f"{path.name} is not a readable torch checkpoint: {exc}") from exc
    tensors: dict[str, torch.Tensor] = {}
    if isinstance(obj, _ModuleStub):
        _collect_tensors(obj, "", tensors)
    elif isinstance(obj, dict):
        source = obj.get("state_dict", obj)
        tensors = {k: v.detach().clone() for k, v in source.items() if isinstance(v, torch.Tensor)}
    else:
        raise WeightsError(f"{path.name}: unexpected checkpoint content {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in tensors.items()}
