"""ShuffleNet V2 1x for CIFAR (stages 116/232/464 x 3/7/3 units, head 1024; 'ShuffleV2').

Matches RepDistiller's ``models/ShuffleNetv2.py`` (net_size 1): a 1x1 stem that keeps
32x32 px; each stage ``layerN`` is a stride-2 down-sampling unit (``layerN.0``, convs 1-5)
followed by basic units (``layerN.1...``, convs 1-3); then 1x1 ``conv2``/``bn2``, a 4x4
average pool and ``linear``. PyTorch's default init, as in the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model
from .shufflenetv1 import ChannelShuffle
from .taps import FeatureTap

SHUFFLENETV2_TAPS = {
    "hint": FeatureTap("layer2", "output"),  # feats[2]: output of stage 2 (after the shuffle)
    "embedding": FeatureTap("linear", "input"),  # feats[-1]: pooled 1024-d vector
}

STEM_CHANNELS = 24


class BasicUnit(nn.Module):
    """Split channels in half; keep the first half, run the second through
    1x1-bn-relu, depthwise 3x3-bn, 1x1-bn-relu; concatenate (kept half first); shuffle."""

    def __init__(self, channels: int, split_ratio: float = 0.5) -> None:
        super().__init__()
        self.split_ratio = split_ratio
        branch = int(channels * split_ratio)
        self.conv1 = nn.Conv2d(branch, branch, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(branch)
        self.conv2 = nn.Conv2d(branch, branch, 3, stride=1, padding=1, groups=branch, bias=False)
        self.bn2 = nn.BatchNorm2d(branch)
        self.conv3 = nn.Conv2d(branch, branch, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(branch)
        self.shuffle = ChannelShuffle(groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept_channels = int(x.size(1) * self.split_ratio)
        kept, branch = x[:, :kept_channels], x[:, kept_channels:]
        out = F.relu(self.bn1(self.conv1(branch)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return self.shuffle(torch.cat([kept, out], 1))


class DownUnit(nn.Module):
    """Two stride-2 branches on the full input, each giving half the output channels:
    left = dw3x3-bn, 1x1-bn-relu; right = 1x1-bn-relu, dw3x3-bn, 1x1-bn-relu; concat; shuffle."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.shuffle = ChannelShuffle(groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.bn1(self.conv1(x))
        left = F.relu(self.bn2(self.conv2(left)))
        right = F.relu(self.bn3(self.conv3(x)))
        right = self.bn4(self.conv4(right))
        right = F.relu(self.bn5(self.conv5(right)))
        return self.shuffle(torch.cat([left, right], 1))


class CifarShuffleNetV2(nn.Module):
    def __init__(
        self,
        stage_channels: tuple[int, int, int],
        units_per_stage: tuple[int, int, int],
        head_channels: int,
        num_classes: int = 100,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        self.in_channels = STEM_CHANNELS
        self.layer1 = self._make_stage(stage_channels[0], units_per_stage[0])
        self.layer2 = self._make_stage(stage_channels[1], units_per_stage[1])
        self.layer3 = self._make_stage(stage_channels[2], units_per_stage[2])
        self.conv2 = nn.Conv2d(stage_channels[2], head_channels, 1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(head_channels)
        self.linear = nn.Linear(head_channels, num_classes)

    def _make_stage(self, out_channels: int, num_units: int) -> nn.Sequential:
        units: list[nn.Module] = [DownUnit(self.in_channels, out_channels)]
        units += [BasicUnit(out_channels) for _ in range(num_units)]
        self.in_channels = out_channels
        return nn.Sequential(*units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = torch.flatten(F.avg_pool2d(out, 4), 1)
        return self.linear(out)


@register_model(taps=SHUFFLENETV2_TAPS)
def ShuffleV2(num_classes: int = 100) -> CifarShuffleNetV2:  # noqa: N802 - the reference's name
    return CifarShuffleNetV2((116, 232, 464), (3, 7, 3), head_channels=1024, num_classes=num_classes)
