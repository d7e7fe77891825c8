"""DenseNet-121 and DenseNet-169, laid out like torchvision's and torchxrayvision's ``DenseNet``.

Source: Huang et al., "Densely Connected Convolutional Networks", CVPR 2017
(arXiv:1608.06993). Layout and parameter names follow torchvision's
``models.densenet`` (and torchxrayvision's ``models.DenseNet``, which adds
``in_channels``), so their ``state_dict`` keys
(``features.denseblock1.denselayer1.norm1.weight`` ...) load unchanged.
Written here so that neither torchvision nor torchxrayvision is a dependency.

Every network returns raw logits; the manifest's activation is applied
outside the network, in one place (:mod:`models.backends`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

BLOCK_CONFIG_121 = (6, 12, 24, 16)
"""Dense layers per block of DenseNet-121 (Huang et al., Table 1)."""
BLOCK_CONFIG_169 = (6, 12, 32, 32)
"""Dense layers per block of DenseNet-169 (Huang et al., Table 1)."""


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


class DenseNet(nn.Module):
    """DenseNet-BC classifier that returns logits.

    Parameters
    ----------
    block_config : tuple of int
        Dense layers in each of the four blocks.
    num_classes : int
        Outputs L.
    in_channels : int
        Image channels C (1 for radiographs, 3 for RGB or three CT windows).
    growth_rate, bn_size, num_init_features : int
        32, 4 and 64 for DenseNet-121/169.

    Notes
    -----
    Input ``(N, C, H, W) float32``; output ``(N, L) float32`` logits.
    """

    def __init__(
        self,
        block_config: tuple[int, ...] = BLOCK_CONFIG_121,
        num_classes: int = 18,
        in_channels: int = 1,
        growth_rate: int = 32,
        bn_size: int = 4,
        num_init_features: int = 64,
    ) -> None:
        super().__init__()
        features = num_init_features
        self.features = nn.Sequential(
            OrderedDict(
                conv0=nn.Conv2d(in_channels, features, 7, stride=2, padding=3, bias=False),
                norm0=nn.BatchNorm2d(features),
                relu0=nn.ReLU(inplace=True),
                pool0=nn.MaxPool2d(3, stride=2, padding=1),
            )
        )
        for i, layers in enumerate(block_config, start=1):
            block = nn.Sequential(
                OrderedDict(
                    (
                        f"denselayer{j + 1}",
                        _DenseLayer(features + j * growth_rate, growth_rate, bn_size),
                    )
                    for j in range(layers)
                )
            )
            self.features.add_module(f"denseblock{i}", block)
            features += layers * growth_rate
            if i != len(block_config):
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
        """Return logits ``(N, num_classes)`` for images ``(N, C, H, W)``."""
        out = F.relu(self.features(x))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.classifier(out)


class DenseNet121(DenseNet):
    """DenseNet-121 (blocks 6, 12, 24, 16); see :class:`DenseNet`."""

    def __init__(self, num_classes: int = 18, in_channels: int = 1) -> None:
        super().__init__(BLOCK_CONFIG_121, num_classes, in_channels)


class DenseNet169(DenseNet):
    """DenseNet-169 (blocks 6, 12, 32, 32); see :class:`DenseNet`."""

    def __init__(self, num_classes: int = 1, in_channels: int = 3) -> None:
        super().__init__(BLOCK_CONFIG_169, num_classes, in_channels)
