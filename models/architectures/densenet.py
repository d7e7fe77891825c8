"""DenseNet-121 with one input channel, laid out like torchxrayvision's ``DenseNet``.

Source: Huang et al., "Densely Connected Convolutional Networks", CVPR 2017
(arXiv:1608.06993); layout and parameter names follow torchxrayvision's
``models.DenseNet`` (itself torchvision's, with ``in_channels``), so its
``state_dict`` keys (``features.denseblock1.denselayer1.norm1.weight`` ...)
load unchanged. Written here so that neither torchvision nor torchxrayvision
is a dependency.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

BLOCK_CONFIG_121 = (6, 12, 24, 16)


class _DenseLayer(nn.Sequential):
    def __init__(self, in_features: int, growth_rate: int, bn_size: int) -> None:
        super().__init__(
            OrderedDict(
                norm1=nn.BatchNorm2d(in_features),
                relu1=nn.ReLU(inplace=True),
                conv1=nn.Conv2d(in_features, bn_size * growth_rate, 1, bias=False),
                norm2=nn.BatchNorm2d(bn_size * growth_rate),
                relu2=nn.ReLU(inplace=True),
                conv2=nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, super().forward(x)], 1)


class _Transition(nn.Sequential):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(
            OrderedDict(
                norm=nn.BatchNorm2d(in_features),
                relu=nn.ReLU(inplace=True),
                conv=nn.Conv2d(in_features, out_features, 1, bias=False),
                pool=nn.AvgPool2d(2, stride=2),
            )
        )


class DenseNet121(nn.Module):
    """DenseNet-121 classifier that returns logits.

    Parameters
    ----------
    num_classes : int
        Outputs (18 for torchxrayvision's "all" model).
    in_channels : int
        Image channels (1 for radiographs).

    Notes
    -----
    Input ``(N, 1, 224, 224) float32`` scaled to [-1024, 1024]; output
    ``(N, num_classes) float32`` logits. Apply a sigmoid for probabilities.
    """

    def __init__(self, num_classes: int = 18, in_channels: int = 1) -> None:
        super().__init__()
        growth, bn_size, features = 32, 4, 64
        self.features = nn.Sequential(
            OrderedDict(
                conv0=nn.Conv2d(in_channels, features, 7, stride=2, padding=3, bias=False),
                norm0=nn.BatchNorm2d(features),
                relu0=nn.ReLU(inplace=True),
                pool0=nn.MaxPool2d(3, stride=2, padding=1),
            )
        )
        for i, layers in enumerate(BLOCK_CONFIG_121, start=1):
            block = nn.Sequential(
                OrderedDict(
                    (f"denselayer{j + 1}", _DenseLayer(features + j * growth, growth, bn_size))
                    for j in range(layers)
                )
            )
            self.features.add_module(f"denseblock{i}", block)
            features += layers * growth
            if i != len(BLOCK_CONFIG_121):
                self.features.add_module(f"transition{i}", _Transition(features, features // 2))
                features //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(features))
        self.classifier = nn.Linear(features, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
            elif isinstance(module, nn.Linear):
                nn.init.constant_(module.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(N, num_classes)`` for images ``(N, 1, H, W)``."""
        out = F.relu(self.features(x))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.classifier(out)


class WithSigmoid(nn.Module):
    """Wrap a logits model so it returns probabilities in [0, 1] (exported to ONNX as is)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``sigmoid(model(x))``."""
        return torch.sigmoid(self.model(x))
