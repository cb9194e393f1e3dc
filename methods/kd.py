"""KD: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.

https://arxiv.org/abs/1503.02531
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import Distiller, StepInputs, requires_teacher_logits
from .registry import METHODS


def kd_loss(logits_student: Tensor, logits_teacher: Tensor, temperature: float) -> Tensor:
    """``T² · mean_b Σ_c p_t (log p_t − log p_s)`` with ``p = softmax(z / T)``.

    The same operations as the references (RepDistiller's ``DistillKL``, mdistiller's
    ``kd_loss``): ``kl_div`` on log p_s against p_t, summed over classes, averaged over
    the batch, times T² so gradients keep their scale across temperatures.
    """
    log_p_student = F.log_softmax(logits_student / temperature, dim=1)
    p_teacher = F.softmax(logits_teacher / temperature, dim=1)
    per_sample = F.kl_div(log_p_student, p_teacher, reduction="none").sum(1)
    return per_sample.mean() * temperature**2


@METHODS.register_module(name="kd")
class KD(Distiller):
    """``L = w_ce · CE + w_kd · kd_loss``.

    Defaults are mdistiller's CIFAR-100 config (``KD.TEMPERATURE 4``, ``CE_WEIGHT 0.1``,
    ``KD_WEIGHT 0.9``).
    """

    display_name, table_order, detection = "KD", 10, "roi_logits"

    def __init__(self, temperature: float = 4.0, ce_weight: float = 0.1, kd_weight: float = 0.9, **kwargs) -> None:
        super().__init__(**kwargs)
        self.temperature, self.ce_weight, self.kd_weight = temperature, ce_weight, kd_weight

    def forward(self, step: StepInputs) -> dict[str, Tensor]:
        logits_teacher = requires_teacher_logits(step)
        return {
            "loss_ce": self.cross_entropy(step, self.ce_weight),
            "loss_kd": self.kd_weight * kd_loss(step.logits_student, logits_teacher, self.temperature),
        }
