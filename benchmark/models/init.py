"""The weight initialisation loops the RepDistiller model families share."""

from __future__ import annotations

import math

from torch import nn


def init_like_reference(model: nn.Module) -> None:
    """He-normal convs (fan-out), BN to (1, 0), linear N(0, 0.01) with zero bias.

    Modules are visited in ``model.modules()`` order, as the reference does, so a seeded
    build draws the same initial weights.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)


def init_resnet_like(model: nn.Module) -> None:
    """Kaiming-normal convs (fan-out, ReLU), norm layers to (1, 0); linear layers untouched.

    The loop of RepDistiller's CIFAR ResNets and its ResNet-50, in ``model.modules()`` order.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)
