"""MobileNetV2 for CIFAR at width 0.5 (RepDistiller's ``mobile_half``, registered as 'MobileNetV2').

Matches RepDistiller's ``models/mobilenetv2.py``: a stride-2 stem (32 -> 16 px), seven
stages of inverted residuals in ``blocks`` (a ModuleList), a 1x1 conv to 1280 channels,
a 2x2 average pool and ``classifier`` (a Sequential holding one Linear: key
``classifier.0.weight``). Sequential indices carry the ReLU modules so keys match.
"""

from __future__ import annotations

import torch
from torch import nn

from .init import init_like_reference
from .registry import register_model
from .taps import FeatureTap

MOBILENETV2_TAPS = {
    "hint": FeatureTap("blocks.2", "output"),  # feats[2]: output of the third stage (8x8)
    "embedding": FeatureTap("classifier", "input"),  # feats[-1]: pooled 1280-d vector
}

# (expansion t, channels c, blocks n, first stride s); t is replaced by the model's T,
# except for the first stage which never expands.
INVERTED_RESIDUAL_STAGES = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """1x1 expand-bn-relu, 3x3 depthwise-bn-relu, 1x1 project-bn (linear bottleneck);
    residual add when the shape is kept."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class CifarMobileNetV2(nn.Module):
    def __init__(self, expansion: int, width_mult: float, num_classes: int = 100) -> None:
        super().__init__()
        in_channels = int(32 * width_mult)
        self.conv1 = conv_bn_relu(3, in_channels, kernel_size=3, stride=2)
        self.blocks = nn.ModuleList()
        for stage_expansion, channels, num_blocks, stride in INVERTED_RESIDUAL_STAGES:
            out_channels = int(channels * width_mult)
            stage = []
            for block_stride in [stride] + [1] * (num_blocks - 1):
                stage.append(InvertedResidual(in_channels, out_channels, block_stride, stage_expansion or expansion))
                in_channels = out_channels
            self.blocks.append(nn.Sequential(*stage))
        self.last_channels = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_bn_relu(in_channels, self.last_channels, kernel_size=1, stride=1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channels, num_classes))
        # 32x32 input -> 2x2 map after the stem and three stride-2 stages.
        self.avgpool = nn.AvgPool2d(2, ceil_mode=True)

        init_like_reference(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        for stage in self.blocks:
            out = stage(out)
        out = self.conv2(out)
        out = torch.flatten(self.avgpool(out), 1)
        return self.classifier(out)


@register_model(taps=MOBILENETV2_TAPS, name="MobileNetV2")
def mobilenetv2_half(num_classes: int = 100) -> CifarMobileNetV2:
    """The reference's ``mobile_half``: expansion 6, width 0.5."""
    return CifarMobileNetV2(expansion=6, width_mult=0.5, num_classes=num_classes)
