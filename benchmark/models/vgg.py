"""VGG with batch norm for CIFAR (vgg8, vgg11, vgg13, vgg16, vgg19): no FC stack, one linear.

Matches RepDistiller's ``models/vgg.py`` ``vgg*_bn`` (registered there as 'vgg8' ... too):
five conv blocks ``block0..block4`` (biased convs + BN, the ReLU after each block's last BN
applied functionally in forward), max-pools ``pool0..pool3``, global average ``pool4``,
linear ``classifier``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .init import init_like_reference
from .registry import register_model
from .taps import FeatureTap

VGG_TAPS = {
    # feats[2]: block2's output after the functional ReLU (block2 itself ends with BN).
    "hint": FeatureTap("block2", "output", relu=True),
    "embedding": FeatureTap("classifier", "input"),  # feats[-1]: pooled 512-d vector
}

# Conv widths per block (configurations S, A, B, D, E of the reference).
VGG8_WIDTHS = ((64,), (128,), (256,), (512,), (512,))
VGG11_WIDTHS = ((64,), (128,), (256, 256), (512, 512), (512, 512))
VGG13_WIDTHS = ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512))
VGG16_WIDTHS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
VGG19_WIDTHS = (
    (64, 64),
    (128, 128),
    (256, 256, 256, 256),
    (512, 512, 512, 512),
    (512, 512, 512, 512),
)


def conv_bn_block(widths: tuple[int, ...], in_channels: int) -> nn.Sequential:
    """conv-bn-relu repeated, without the final ReLU (so the block's output is pre-activation).

    The ReLU modules stay in the Sequential because they fix the checkpoint indices
    (``block1.0`` conv, ``block1.1`` bn, ``block1.3`` conv, ...).
    """
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.BatchNorm2d(width)]
        layers.append(nn.ReLU())
        in_channels = width
    return nn.Sequential(*layers[:-1])


class CifarVGG(nn.Module):
    def __init__(self, block_widths: tuple[tuple[int, ...], ...], num_classes: int = 100):
        super().__init__()
        in_channels = [3] + [widths[-1] for widths in block_widths[:-1]]
        self.block0 = conv_bn_block(block_widths[0], in_channels[0])
        self.block1 = conv_bn_block(block_widths[1], in_channels[1])
        self.block2 = conv_bn_block(block_widths[2], in_channels[2])
        self.block3 = conv_bn_block(block_widths[3], in_channels[3])
        self.block4 = conv_bn_block(block_widths[4], in_channels[4])
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)  # used only for 64x64 inputs
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(block_widths[4][-1], num_classes)

        init_like_reference(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[2]
        x = self.pool0(F.relu(self.block0(x)))
        x = self.pool1(F.relu(self.block1(x)))
        x = self.pool2(F.relu(self.block2(x)))
        x = F.relu(self.block3(x))
        if height == 64:  # the reference's rule: one more halving for 64x64 inputs
            x = self.pool3(x)
        x = F.relu(self.block4(x))
        x = torch.flatten(self.pool4(x), 1)
        return self.classifier(x)


@register_model(taps=VGG_TAPS)
def vgg8(num_classes: int = 100) -> CifarVGG:
    return CifarVGG(VGG8_WIDTHS, num_classes)


@register_model(taps=VGG_TAPS)
def vgg11(num_classes: int = 100) -> CifarVGG:
    return CifarVGG(VGG11_WIDTHS, num_classes)


@register_model(taps=VGG_TAPS)
def vgg13(num_classes: int = 100) -> CifarVGG:
    return CifarVGG(VGG13_WIDTHS, num_classes)


@register_model(taps=VGG_TAPS)
def vgg16(num_classes: int = 100) -> CifarVGG:
    return CifarVGG(VGG16_WIDTHS, num_classes)


@register_model(taps=VGG_TAPS)
def vgg19(num_classes: int = 100) -> CifarVGG:
    return CifarVGG(VGG19_WIDTHS, num_classes)
