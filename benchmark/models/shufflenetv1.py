"""ShuffleNet V1 for CIFAR (groups 3, stages 240/480/960 x 4/8/4 blocks; 'ShuffleV1').

Matches RepDistiller's ``models/ShuffleNetv1.py``: a 1x1 stem that keeps 32x32 px, three
stages that each halve the resolution in their first block, a 4x4 average pool and
``linear``. PyTorch's default init, as in the reference (it has no init loop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model
from .taps import FeatureTap

SHUFFLENETV1_TAPS = {
    "hint": FeatureTap("layer2", "output"),  # feats[2]: post-ReLU output of stage 2
    "embedding": FeatureTap("linear", "input"),  # feats[-1]: pooled 960-d vector
}

STEM_CHANNELS = 24


class ChannelShuffle(nn.Module):
    """[N, C, H, W] -> [N, g, C/g, H, W] -> swap the two channel axes -> [N, C, H, W]."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """Grouped 1x1 - shuffle - depthwise 3x3 - grouped 1x1, then relu(add) or, at stride 2,
    relu(concat with a 3x3 average-pooled input), which is why the first unit of a stage
    produces ``out_planes - in_planes`` channels itself."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid_planes = int(out_planes / 4)
        # The 24-channel stem output is not grouped (24 -> mid with groups=1).
        first_groups = 1 if in_planes == STEM_CHANNELS else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.shuffle1 = ChannelShuffle(first_groups)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, 3, stride=stride, padding=1, groups=mid_planes, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.shuffle1(out)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.shortcut(x)
        merged = torch.cat([out, shortcut], 1) if self.stride == 2 else out + shortcut
        return F.relu(merged)


class CifarShuffleNetV1(nn.Module):
    def __init__(
        self,
        stage_planes: tuple[int, int, int],
        blocks_per_stage: tuple[int, int, int],
        groups: int,
        num_classes: int = 100,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        self.in_planes = STEM_CHANNELS
        self.layer1 = self._make_stage(stage_planes[0], blocks_per_stage[0], groups)
        self.layer2 = self._make_stage(stage_planes[1], blocks_per_stage[1], groups)
        self.layer3 = self._make_stage(stage_planes[2], blocks_per_stage[2], groups)
        self.linear = nn.Linear(stage_planes[2], num_classes)

    def _make_stage(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        units = []
        for i in range(num_blocks):
            if i == 0:  # stride 2; the pooled input is concatenated to the unit's own output
                units.append(ShuffleUnit(self.in_planes, out_planes - self.in_planes, 2, groups))
            else:
                units.append(ShuffleUnit(self.in_planes, out_planes, 1, groups))
            self.in_planes = out_planes
        return nn.Sequential(*units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = torch.flatten(F.avg_pool2d(out, 4), 1)
        return self.linear(out)


@register_model(taps=SHUFFLENETV1_TAPS)
def ShuffleV1(num_classes: int = 100) -> CifarShuffleNetV1:  # noqa: N802 - the reference's name
    return CifarShuffleNetV1((240, 480, 960), (4, 8, 4), groups=3, num_classes=num_classes)
