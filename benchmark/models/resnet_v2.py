"""ResNet50 with a CIFAR stem (3x3 conv, no max-pool): four bottleneck stages at 32/16/8/4 px.

Matches RepDistiller's ``models/resnetv2.py`` ``ResNet50``: module names (``shortcut``,
``linear``), shapes, creation order and forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .init import init_resnet_like
from .registry import register_model
from .taps import FeatureTap

CIFAR_STEM_RESNET_TAPS = {
    "hint": FeatureTap("layer2", "output"),  # feats[2]: post-ReLU output of stage 2
    "embedding": FeatureTap("linear", "input"),  # feats[-1]: pooled vector before `linear`
}


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand x4; add the shortcut; relu."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.Identity()  # stateless, like the reference's empty Sequential
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class CifarStemResNet(nn.Module):
    """ImageNet-style bottleneck ResNet whose stem keeps the 32x32 resolution."""

    def __init__(self, blocks_per_stage: tuple[int, int, int, int], num_classes: int = 100):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_stage(64, blocks_per_stage[0], stride=1)
        self.layer2 = self._make_stage(128, blocks_per_stage[1], stride=2)
        self.layer3 = self._make_stage(256, blocks_per_stage[2], stride=2)
        self.layer4 = self._make_stage(512, blocks_per_stage[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(512 * Bottleneck.expansion, num_classes)

        init_resnet_like(self)
        # `linear` keeps PyTorch's default init; the reference's zero_init_residual is off.

    def _make_stage(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        blocks = []
        for block_stride in [stride] + [1] * (num_blocks - 1):
            blocks.append(Bottleneck(self.in_planes, planes, block_stride))
            self.in_planes = planes * Bottleneck.expansion
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = torch.flatten(self.avgpool(out), 1)
        return self.linear(out)


@register_model(taps=CIFAR_STEM_RESNET_TAPS)
def ResNet50(num_classes: int = 100) -> CifarStemResNet:  # noqa: N802 - the reference's name
    return CifarStemResNet((3, 4, 6, 3), num_classes)
