"""CKD: Zhu, Zhou, Zhu, Wang & Hu, "CKD: Contrastive Knowledge Distillation from A
Sample-wise Perspective", 2024. https://arxiv.org/abs/2404.14109

Reference: the authors' code, a fork of mdistiller.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import distributed
from .base import Distiller, StepInputs, requires_teacher_logits
from .registry import METHODS


def ckd_loss(logits_student: Tensor, logits_teacher: Tensor, temperature: float = 1.0, global_batch: bool = False) -> Tensor:
    """InfoNCE over L2-normalised logits, in-batch negatives.

    ``t̂, ŝ`` = rows of teacher / student logits divided by their L2 norms;
    ``M = t̂ ŝᵀ / τ`` (B×B, teacher rows, student columns);
    ``L = mean_i −log softmax(M_i)_i`` — the positive of teacher sample i is the
    student's view of the same sample, the other B−1 students are its negatives.
    One direction only, no memory bank, no projection head; the teacher is detached.
    Invariant to scaling a row by a positive constant (normalisation), not to adding
    a constant. A batch of one gives 0.

    ``global_batch`` (under DDP): the columns are the students of the global batch,
    gathered with their gradient; this process's rows keep their own positives (labels
    offset by its rank). Two processes then compute what one computes over both batches.
    """
    student = F.normalize(logits_student, dim=1)
    teacher = F.normalize(logits_teacher.detach(), dim=1)
    offset = 0
    if global_batch and distributed.world_size() > 1:
        offset = distributed.rank() * student.shape[0]  # equal batches on every rank (DDP sampler)
        student = distributed.all_gather_cat_with_grad(student)
    similarity = teacher @ student.t() / temperature
    positives = torch.arange(offset, offset + similarity.shape[0], device=similarity.device)
    return F.cross_entropy(similarity, positives)


@METHODS.register_module(name="ckd")
class CKD(Distiller):
    """``L = w_ce · CE + w_cl · ckd_loss``; defaults τ = 1, CL weight 10, CE weight 1.

    The paper recipe tunes batch size, learning rate, CL weight and τ per pair.
    """

    display_name, table_order, detection = "CKD", 60, "roi_logits"

    def __init__(self, temperature: float = 1.0, cl_weight: float = 10.0, ce_weight: float = 1.0, contrast: str = "global", **kwargs) -> None:
        super().__init__(**kwargs)
        if contrast not in ("global", "local"):
            raise ValueError(f"CKD contrast must be 'global' or 'local', got {contrast!r}")
        self.temperature, self.cl_weight, self.ce_weight = temperature, cl_weight, ce_weight
        # Under DDP: negatives from the global batch, or ("local") only from this process's
        # batch, as the official code's DataParallel computed the loss per replica.
        self.contrast = contrast

    def forward(self, step: StepInputs) -> dict[str, Tensor]:
        logits_teacher = requires_teacher_logits(step)
        return {
            "loss_ce": self.cross_entropy(step, self.ce_weight),
            "loss_ckd": self.cl_weight * ckd_loss(step.logits_student, logits_teacher, self.temperature, self.contrast == "global"),
        }
