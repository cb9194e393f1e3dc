"""Small plain CNNs for the CPU-sized ``digits`` suite (not from any reference paper).

A CIFAR ResNet-8 costs ~15 M multiply-adds per 32×32 image; on a 2-core CPU a teacher,
six methods and three seeds of it do not fit in minutes. These nets keep the CIFAR
interface (32×32×3 in, logits out, 'hint' = stage-2 output, 'embedding' = input of the
classifier) at 0.4 M (width 8) to 6.8 M (width 32) multiply-adds per image.
"""

from __future__ import annotations

from torch import Tensor, nn

from .registry import register_model
from .taps import FeatureTap

TAPS = {"hint": FeatureTap("layer2", "output"), "embedding": FeatureTap("fc", "input")}


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class SmallCNN(nn.Module):
    """stem (stride 2) → layer1 (stride 2) → layer2 → global average pool → fc."""

    def __init__(self, width: int, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(3, width, stride=2)  # 16×16
        self.layer1 = _conv_bn_relu(width, 2 * width, stride=2)  # 8×8
        self.layer2 = _conv_bn_relu(2 * width, 4 * width, stride=1)  # 8×8, the hint
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))


@register_model(taps=TAPS)
def small_cnn_w8(num_classes: int = 10) -> SmallCNN:
    return SmallCNN(8, num_classes)


@register_model(taps=TAPS)
def small_cnn_w32(num_classes: int = 10) -> SmallCNN:
    return SmallCNN(32, num_classes)
