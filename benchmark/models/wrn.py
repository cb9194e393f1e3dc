"""Wide ResNets (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2): pre-activation basic blocks.

Matches RepDistiller's ``models/wrn.py`` (dropRate 0, as every registered variant uses):
module names (``block1.layer.0.convShortcut``, final ``bn1``/``fc``), shapes, creation
order, init and forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model
from .taps import FeatureTap

WRN_TAPS = {
    # feats[2]: the raw output of block2 (pre-activation nets: no ReLU at a stage's end).
    "hint": FeatureTap("block2", "output"),
    "embedding": FeatureTap("fc", "input"),  # feats[-1]: pooled vector before fc
}


class PreActBlock(nn.Module):
    """bn-relu-conv, bn-relu-conv, plus a shortcut.

    Where the width changes, the 1x1 ``convShortcut`` reads the *activated* input
    relu(bn1(x)); otherwise the shortcut is the raw input x.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        # The reference's camelCase name is part of the checkpoint keys.
        self.convShortcut = (
            None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        out = self.relu2(self.bn2(self.conv1(activated)))
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    """One stage; the wrapper exists only because the checkpoint keys say ``blockN.layer.i``."""

    def __init__(self, num_blocks: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                PreActBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                for i in range(num_blocks)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k: stem conv, three stages of width 16k/32k/64k, bn-relu, 8x8 pool, fc."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"a Wide ResNet needs depth 6n+4, got {depth}")
        blocks_per_stage = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(blocks_per_stage, widths[0], widths[1], stride=1)
        self.block2 = NetworkBlock(blocks_per_stage, widths[1], widths[2], stride=2)
        self.block3 = NetworkBlock(blocks_per_stage, widths[2], widths[3], stride=2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(widths[3], num_classes)
        self.num_features = widths[3]

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)  # the weight keeps PyTorch's default init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        out = torch.flatten(F.avg_pool2d(out, 8), 1)
        return self.fc(out)


@register_model(taps=WRN_TAPS)
def wrn_16_1(num_classes: int = 100) -> WideResNet:
    return WideResNet(16, 1, num_classes)


@register_model(taps=WRN_TAPS)
def wrn_16_2(num_classes: int = 100) -> WideResNet:
    return WideResNet(16, 2, num_classes)


@register_model(taps=WRN_TAPS)
def wrn_40_1(num_classes: int = 100) -> WideResNet:
    return WideResNet(40, 1, num_classes)


@register_model(taps=WRN_TAPS)
def wrn_40_2(num_classes: int = 100) -> WideResNet:
    return WideResNet(40, 2, num_classes)
