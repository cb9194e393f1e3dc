"""CKD: Zhu, Zhou, Zhu, Wang & Hu, "CKD: Contrastive Knowledge Distillation from A
Sample-wise Perspective", 2024. https://arxiv.org/abs/2404.14109

Reference: the authors' code, a fork of mdistiller.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Distiller, StepInputs, requires_teacher_logits
from .registry import METHODS


def ckd_loss(logits_student: Tensor, logits_teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """InfoNCE over L2-normalised logits, in-batch negatives.

    ``t̂, ŝ`` = rows of teacher / student logits divided by their L2 norms;
    ``M = t̂ ŝᵀ / τ`` (B×B, teacher rows, student columns);
    ``L = mean_i −log softmax(M_i)_i`` — the positive of teacher sample i is the
    student's view of the same sample, the other B−1 students are its negatives.
    One direction only, no memory bank, no projection head; the teacher is detached.
    Invariant to scaling a row by a positive constant (normalisation), not to adding
    a constant. A batch of one gives 0.
    """
    student = F.normalize(logits_student, dim=1)
    teacher = F.normalize(logits_teacher.detach(), dim=1)
    similarity = teacher @ student.t() / temperature
    positives = torch.arange(similarity.shape[0], device=similarity.device)
    return F.cross_entropy(similarity, positives)


@METHODS.register_module(name="ckd")
class CKD(Distiller):
    """``L = w_ce · CE + w_cl · ckd_loss``; defaults τ = 1, CL weight 10, CE weight 1.

    The paper recipe tunes batch size, learning rate, CL weight and τ per pair.
    """

    def __init__(self, temperature: float = 1.0, cl_weight: float = 10.0, ce_weight: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.temperature, self.cl_weight, self.ce_weight = temperature, cl_weight, ce_weight

    def forward(self, step: StepInputs) -> dict[str, Tensor]:
        logits_teacher = requires_teacher_logits(step)
        return {
            "loss_ce": self.cross_entropy(step, self.ce_weight),
            "loss_ckd": self.cl_weight * ckd_loss(step.logits_student, logits_teacher, self.temperature),
        }
