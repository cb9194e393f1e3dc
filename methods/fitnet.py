"""FitNet: Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.

https://arxiv.org/abs/1412.6550 — reference: RepDistiller (``models/util.py: ConvReg``,
``distiller_zoo/FitNet.py``) and mdistiller (``distillers/FitNet.py``).
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .base import Distiller, StepInputs
from .registry import METHODS


class ConvReg(nn.Module):
    """Regresses the student's hint feature onto the teacher's shape: conv → BN → ReLU.

    The conv depends on the spatial sizes (N, C, H, W shapes):
    s_H = 2·t_H → Conv2d(3, stride 2, pad 1); 2·s_H = t_H → ConvTranspose2d(4, stride 2,
    pad 1); s_H ≥ t_H → Conv2d with kernel (1 + s_H − t_H, 1 + s_W − t_W).
    """

    def __init__(self, s_shape: Sequence[int], t_shape: Sequence[int], use_relu: bool = True) -> None:
        super().__init__()
        _, s_c, s_h, s_w = s_shape
        _, t_c, t_h, t_w = t_shape
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif s_h * 2 == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ValueError(
                f"FitNet ConvReg cannot map a student hint of {tuple(s_shape)} onto a teacher hint of {tuple(t_shape)}"
            )
        self.bn = nn.BatchNorm2d(t_c)
        self.relu = nn.ReLU()
        self.use_relu = use_relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return self.relu(x) if self.use_relu else x


def fitnet_loss(regressed_student: Tensor, feature_teacher: Tensor) -> Tensor:
    """Mean squared error between the regressed student hint and the teacher hint."""
    return F.mse_loss(regressed_student, feature_teacher)


@METHODS.register_module(name="fitnet")
class FitNet(Distiller):
    """``L = w_ce · CE + w_hint · MSE(ConvReg(f_s), f_t)`` at the hint tap (stage-2 output).

    Defaults as RepDistiller / mdistiller on CIFAR-100: hint layer 2, hint weight 100,
    CE weight 1, single-stage training.
    """

    display_name, table_order, detection = "FitNet", 20, "fpn_features"

    feature_taps = ("hint",)

    def __init__(self, hint_weight: float = 100.0, ce_weight: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        context = self._require_context()
        self.regressor = ConvReg(context.student_shapes["hint"], context.teacher_shapes["hint"])
        self.hint_weight, self.ce_weight = hint_weight, ce_weight

    def forward(self, step: StepInputs) -> dict[str, Tensor]:
        regressed = self.regressor(step.features_student["hint"])
        return {
            "loss_ce": self.cross_entropy(step, self.ce_weight),
            "loss_hint": self.hint_weight * fitnet_loss(regressed, step.features_teacher["hint"]),
        }
