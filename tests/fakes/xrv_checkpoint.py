"""FAKE of torchxrayvision's published checkpoint, for tests (no internet here).

The published ``densenet121-res224-all`` file is ``torch.save(model)`` of a
``torchxrayvision.models.DenseNet``: a whole pickled module whose pickle names
torchxrayvision's classes. This module builds a file of the same kind: it
registers throw-away classes under the module name ``torchxrayvision.models``
(in a subprocess, so the test process never has them), copies our DenseNet-121
layout, fills it with seeded weights, and pickles the whole module.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

_SCRIPT = textwrap.dedent(
    """
    import sys, types, torch
    from collections import OrderedDict
    from torch import nn
    import models.architectures.densenet as ours

    fake = types.ModuleType("torchxrayvision.models")
    pkg = types.ModuleType("torchxrayvision")
    pkg.models = fake
    sys.modules["torchxrayvision"] = pkg
    sys.modules["torchxrayvision.models"] = fake

    class _DenseLayer(ours._DenseLayer):
        pass
    class _Transition(ours._Transition):
        pass
    class DenseNet(ours.DenseNet121):
        pass
    for cls in (_DenseLayer, _Transition, DenseNet):
        cls.__module__ = "torchxrayvision.models"
        cls.__qualname__ = cls.__name__
        setattr(fake, cls.__name__, cls)

    torch.manual_seed(int(sys.argv[2]))
    model = DenseNet(num_classes=18)
    # Relabel submodules so the pickle names torchxrayvision's classes.
    for module in model.modules():
        if type(module) is ours._DenseLayer:
            module.__class__ = _DenseLayer
        elif type(module) is ours._Transition:
            module.__class__ = _Transition
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.fill_(1.5)
    model.op_threshs = torch.tensor([0.1] * 18)  # xrv keeps a plain tensor attribute
    model.eval()
    torch.save(model, sys.argv[1], _use_new_zipfile_serialization=sys.argv[3] == "zip")
    torch.save(model.state_dict(), sys.argv[1] + ".state_dict")
    """
)


def make_xrv_like_checkpoint(path: Path, seed: int = 7, fmt: str = "legacy") -> Path:
    """Write a FAKE torchxrayvision-style pickled module to ``path``.

    Also writes ``path + '.state_dict'``, the plain state dict, for comparison.

    Parameters
    ----------
    path : Path
        Output file.
    seed : int
        Seed of the weights.
    fmt : {"legacy", "zip"}
        torch's legacy (pre-1.6, as the 2020 release files) or zip format.
    """
    root = Path(__file__).resolve().parents[2]
    subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(path), str(seed), fmt],
        check=True,
        cwd=root,
        capture_output=True,
    )
    return path
