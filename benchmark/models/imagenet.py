"""ImageNet-1k models of the CRD / DKD ImageNet experiments: torchvision's ResNets and MobileNetV1.

``resnet18_in1k``, ``resnet34_in1k``, ``resnet50_in1k`` are torchvision's
``torchvision.models.resnet.ResNet`` (``weights=None``): the same class, constructor,
initialisation, module names and state-dict keys, so torchvision's ImageNet weight files
(``resnet34-b627a593.pth`` ...) load with ``strict=True``. The only difference is in the
blocks: torchvision's ``BasicBlock`` / ``Bottleneck`` end with ``out += identity`` and use
``ReLU(inplace=True)``, which overwrite tensors other modules have returned. The feature
taps keep hooked tensors without copying (``benchmark.models.taps``), so this package
forbids that; the subclasses below compute ``relu(out + identity)`` out of place and every
ReLU runs with ``inplace=False``. Out-of-place and in-place add / ReLU are the same
elementwise kernels, so the logits are bit-identical to torchvision's model with the same
weights (``tests/test_imagenet.py`` checks ``torch.equal``).

``mobilenetv1_in1k`` is the MobileNetV1 of mdistiller's ``mdistiller/models/imagenet/mobilenetv1.py``
(the student of the CRD / DKD ResNet50 → MobileNetV1 experiments). Checked against that
file (megvii-research/mdistiller, commit fae6658): ``self.model = nn.Sequential(conv_bn(3, 32, 2),
conv_dw(32, 64, 1), conv_dw(64, 128, 2), conv_dw(128, 128, 1), conv_dw(128, 256, 2),
conv_dw(256, 256, 1), conv_dw(256, 512, 2), 5 x conv_dw(512, 512, 1), conv_dw(512, 1024, 2),
conv_dw(1024, 1024, 1), nn.AvgPool2d(7))`` with ``conv_bn`` = Conv3x3(stride, pad 1, no
bias)-BN-ReLU and ``conv_dw`` = depthwise Conv3x3(stride, pad 1, groups=inp, no bias)-BN-ReLU-
Conv1x1(no bias)-BN-ReLU; ``self.fc = nn.Linear(1024, 1000)``; PyTorch's default init (no
init loop); forward = ``self.model`` (its ``model[k][:-1]`` + ``F.relu`` split only exposes
pre-activations), ``reshape(-1, 1024)``, ``fc``. Same keys (``model.<i>.<j>.*``, ``fc.*``),
4,231,976 parameters at 1000 classes. Two deliberate differences, neither visible in the
state dict or (at 224x224) in the numbers:

* ``model.14`` is :class:`GlobalAvgPool2d` instead of ``nn.AvgPool2d(7)``: ``F.avg_pool2d``
  with the kernel set to the whole feature map. At a 224x224 input the last map is 7x7 and
  this is the very call ``nn.AvgPool2d(7)`` makes (kernel 7, stride 7, no padding), so the
  outputs are bit-identical (``tests/test_imagenet.py`` checks ``torch.equal``); at other
  sizes it is still the global mean, which the zoo's generic tests (32x32 inputs) and the
  distillation model's shape probe (``DistillationModel(input_size=(3, 32, 32))``) need,
  where ``AvgPool2d(7)`` + ``reshape(-1, 1024)`` only works for 7x7 maps (193-224 px inputs).
  ``nn.AdaptiveAvgPool2d(1)`` was rejected: on CPU it sums in another order and differs from
  ``AvgPool2d(7)`` in the last bits (measured: up to 2e-17 on values ~1e-2), not identical.
* ReLUs are out of place (see above), numerically the same.

Feature taps (FitNet's hint at the stride-8 stage of both networks, so teacher and student
hints have the same resolution and the CIFAR regressor applies unchanged):

* ResNets: ``hint`` = output of ``layer2`` (stride 8: 128x28x28 for ResNet18/34, 512x28x28
  for ResNet50 at 224x224; mdistiller's ``feats[2]``); ``embedding`` = input of ``fc``
  (512 / 2048).
* MobileNetV1: ``hint`` = output of ``model.5``, the last block at stride 8 (blocks 0-5
  have strides 2,1,2,1,2,1; ``model.6`` is the stride-2 block to stride 16): 256x28x28,
  post-ReLU, mdistiller's ``feats[1]``; ``embedding`` = input of ``fc`` (1024).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from .registry import register_model
from .taps import FeatureTap

RESNET_IN1K_TAPS = {
    # Stride 8 (28x28 at 224): the post-ReLU output of stage 2.
    "hint": FeatureTap("layer2", "output"),
    # The pooled, flattened vector fc maps to logits (512 or 2048).
    "embedding": FeatureTap("fc", "input"),
}

MOBILENETV1_HINT_BLOCK = 5  # model.5: the last block at stride 8 (256x28x28 at 224)
MOBILENETV1_TAPS = {
    "hint": FeatureTap(f"model.{MOBILENETV1_HINT_BLOCK}", "output"),
    "embedding": FeatureTap("fc", "input"),
}


def _no_inplace_relu(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return model


class BasicBlock(tv_resnet.BasicBlock):
    """torchvision's BasicBlock with ``relu(out + identity)`` computed out of place."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(tv_resnet.Bottleneck):
    """torchvision's Bottleneck with ``relu(out + identity)`` computed out of place."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def _torchvision_resnet(block: type[nn.Module], layers: list[int], num_classes: int) -> tv_resnet.ResNet:
    # torchvision.models.resnet18/34/50(weights=None, num_classes=...) build exactly
    # ResNet(block, layers, num_classes=...): same init, same RNG draw order.
    return _no_inplace_relu(tv_resnet.ResNet(block, layers, num_classes=num_classes))


@register_model(taps=RESNET_IN1K_TAPS)
def resnet18_in1k(num_classes: int = 1000) -> tv_resnet.ResNet:
    return _torchvision_resnet(BasicBlock, [2, 2, 2, 2], num_classes)


@register_model(taps=RESNET_IN1K_TAPS)
def resnet34_in1k(num_classes: int = 1000) -> tv_resnet.ResNet:
    return _torchvision_resnet(BasicBlock, [3, 4, 6, 3], num_classes)


@register_model(taps=RESNET_IN1K_TAPS)
def resnet50_in1k(num_classes: int = 1000) -> tv_resnet.ResNet:
    return _torchvision_resnet(Bottleneck, [3, 4, 6, 3], num_classes)


def _conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(),
    )


def _conv_dw(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.ReLU(),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(),
    )


# (in, out, stride) of the 13 depthwise-separable blocks, model.1 ... model.13.
MOBILENETV1_BLOCKS = (
    (32, 64, 1),
    (64, 128, 2),
    (128, 128, 1),
    (128, 256, 2),
    (256, 256, 1),
    (256, 512, 2),
    (512, 512, 1),
    (512, 512, 1),
    (512, 512, 1),
    (512, 512, 1),
    (512, 512, 1),
    (512, 1024, 2),
    (1024, 1024, 1),
)


class GlobalAvgPool2d(nn.Module):
    """``F.avg_pool2d`` over the whole map: exactly ``nn.AvgPool2d(k)`` on a k x k map, any size."""

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, kernel_size=tuple(x.shape[-2:]))


class MobileNetV1(nn.Module):
    """mdistiller's ImageNet MobileNetV1 (see the module docstring for what was checked)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.model = nn.Sequential(
            _conv_bn(3, 32, 2),
            *(_conv_dw(inp, oup, stride) for inp, oup, stride in MOBILENETV1_BLOCKS),
            GlobalAvgPool2d(),  # == AvgPool2d(7) on the 7x7 map of a 224x224 input
        )
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.model(x)
        return self.fc(torch.flatten(x, 1))  # == the reference's reshape(-1, 1024) for [B, 1024, 1, 1]


@register_model(taps=MOBILENETV1_TAPS)
def mobilenetv1_in1k(num_classes: int = 1000) -> MobileNetV1:
    return MobileNetV1(num_classes)
