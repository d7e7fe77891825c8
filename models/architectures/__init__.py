"""Network architectures, looked up by a manifest's ``architecture`` key.

An :class:`Architecture` pairs a key with a builder ``build(manifest) ->
torch.nn.Module`` that returns raw outputs (logits) for input in the
manifest's declared layout, and the ``architecture_params`` it accepts.
:func:`builtin_architectures` returns a fresh table each call; the registry
object (:class:`models.registry.ModelRegistry`) holds the one in use, so no
module-global table is mutated. torch is imported only when a network is built.

Built-in keys
-------------
densenet121
    DenseNet-121 (Huang et al. 2017), torchxrayvision/torchvision layout.
densenet169
    DenseNet-169 (Huang et al. 2017), torchvision layout (MURA's network).

Parameters (``architecture_params``) of both: ``in_channels`` (must equal the
manifest's input channels; default: those). The number of outputs is the
number of labels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dicom_node.core.errors import ManifestError

if TYPE_CHECKING:
    from torch import nn

    from models.manifest import Manifest


@dataclass(frozen=True)
class Architecture:
    """A buildable network.

    Attributes
    ----------
    key : str
        The manifest's ``architecture`` value.
    build : callable
        ``build(manifest) -> torch.nn.Module`` (CPU, train mode, random
        weights) taking ``(N, C, H, W)`` and returning ``(N, L)`` raw
        outputs. :func:`models.engines.build_torch_model` adapts an NHWC
        manifest's layout.
    params : frozenset of str
        ``architecture_params`` keys it accepts.
    description : str
        One line for ``models list``.
    """

    key: str
    build: Callable[[Manifest], nn.Module]
    params: frozenset[str]
    description: str

    def check(self, manifest: Manifest) -> None:
        """Check a manifest's ``architecture_params`` against this architecture.

        Raises
        ------
        ManifestError
            Unknown parameter, or ``in_channels`` differing from the input's channels.
        """
        unknown = sorted(set(manifest.architecture_params) - self.params)
        if unknown:
            raise ManifestError(
                f"model {manifest.id}: architecture {self.key} has no parameters {unknown}; "
                f"known: {sorted(self.params)}"
            )
        channels = manifest.architecture_params.get("in_channels", manifest.input.num_channels)
        if channels != manifest.input.num_channels:
            raise ManifestError(
                f"model {manifest.id}: architecture_params.in_channels {channels} differs from "
                f"the input's {manifest.input.num_channels} channels"
            )


def _densenet(depth: int) -> Callable[[Manifest], nn.Module]:
    def build(manifest: Manifest) -> nn.Module:
        from models.architectures.densenet import DenseNet121, DenseNet169

        cls = DenseNet121 if depth == 121 else DenseNet169
        return cls(num_classes=len(manifest.labels), in_channels=manifest.input.num_channels)

    return build


def builtin_architectures() -> dict[str, Architecture]:
    """A fresh table of the shipped architectures, by key.

    Returns
    -------
    dict of str to Architecture
        ``densenet121`` and ``densenet169``.
    """
    params = frozenset({"in_channels"})
    return {
        "densenet121": Architecture("densenet121", _densenet(121), params, "DenseNet-121"),
        "densenet169": Architecture("densenet169", _densenet(169), params, "DenseNet-169"),
    }


def architecture_for(
    manifest: Manifest, architectures: Mapping[str, Architecture] | None = None
) -> Architecture:
    """The architecture a manifest names.

    Parameters
    ----------
    manifest : Manifest
        Its ``architecture`` key is looked up.
    architectures : mapping of str to Architecture, optional
        Table to look in (default: :func:`builtin_architectures`).

    Raises
    ------
    ManifestError
        If the manifest has no architecture (ONNX-only) or the key is unknown.
    """
    if manifest.architecture is None:
        raise ManifestError(f"model {manifest.id} has no architecture (ONNX-only)")
    table = builtin_architectures() if architectures is None else architectures
    try:
        return table[manifest.architecture]
    except KeyError:
        raise ManifestError(
            f"model {manifest.id}: unknown architecture {manifest.architecture!r}; "
            f"known: {sorted(table)}"
        ) from None
