"""CIFAR ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4): three stages of basic blocks.

Matches RepDistiller's ``models/resnet.py`` (basic-block variants): module names, shapes,
the order modules are created in (so a seeded init draws the same numbers) and the forward,
whose block output is ``relu(bn2(conv2(...)) + shortcut)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .init import init_resnet_like
from .registry import register_model
from .taps import FeatureTap

CIFAR_RESNET_TAPS = {
    # feats[2]: the (post-ReLU) output of stage 2.
    "hint": FeatureTap("layer2", "output"),
    # feats[-1]: the pooled, flattened vector that fc maps to logits.
    "embedding": FeatureTap("fc", "input"),
}


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv-bn-relu, conv-bn, add the shortcut, relu."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample  # 1x1 conv + BN where the shape changes, else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """3x3 stem at 32x32, stages at 32/16/8 pixels, 8x8 average pool, linear ``fc``.

    ``depth = 6n + 2`` gives n blocks per stage; ``widths`` = (stem, stage1, stage2, stage3).
    """

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"a basic-block CIFAR ResNet needs depth 6n+2, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.in_planes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.layer1 = self._make_stage(widths[1], blocks_per_stage, stride=1)
        self.layer2 = self._make_stage(widths[2], blocks_per_stage, stride=2)
        self.layer3 = self._make_stage(widths[3], blocks_per_stage, stride=2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(widths[3] * BasicBlock.expansion, num_classes)

        init_resnet_like(self)
        # fc keeps PyTorch's default init, as in the reference.

    def _make_stage(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        out_planes = planes * BasicBlock.expansion
        downsample = None
        if stride != 1 or self.in_planes != out_planes:
            # Created before the block, as in the reference (same RNG draw order).
            downsample = nn.Sequential(
                nn.Conv2d(self.in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )
        blocks = [BasicBlock(self.in_planes, planes, stride, downsample)]
        self.in_planes = out_planes
        blocks += [BasicBlock(self.in_planes, planes) for _ in range(1, num_blocks)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


NARROW = (16, 16, 32, 64)
WIDE_X4 = (32, 64, 128, 256)


@register_model(taps=CIFAR_RESNET_TAPS)
def resnet8(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(8, NARROW, num_classes)


@register_model(taps=CIFAR_RESNET_TAPS)
def resnet14(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(14, NARROW, num_classes)


@register_model(taps=CIFAR_RESNET_TAPS)
def resnet20(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(20, NARROW, num_classes)


@register_model(taps=CIFAR_RESNET_TAPS)
def resnet32(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(32, NARROW, num_classes)


@register_model(taps=CIFAR_RESNET_TAPS)
def resnet44(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(44, NARROW, num_classes)


@register_model(taps=CIFAR_RESNET_TAPS)
def resnet56(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(56, NARROW, num_classes)


@register_model(taps=CIFAR_RESNET_TAPS)
def resnet110(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(110, NARROW, num_classes)


@register_model(taps=CIFAR_RESNET_TAPS)
def resnet8x4(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(8, WIDE_X4, num_classes)


@register_model(taps=CIFAR_RESNET_TAPS)
def resnet32x4(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(32, WIDE_X4, num_classes)
