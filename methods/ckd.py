"""CKD: Zhu, Zhou, Zhu, Wang & Hu, "CKD: Contrastive Knowledge Distillation from A
Sample-wise Perspective", 2024. https://arxiv.org/abs/2404.14109

Reference: the authors' code, a fork of mdistiller.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import distributed
from .base import Distiller, StepInputs, requires_teacher_logits
from .registry import METHODS


def ckd_loss(
    logits_student: Tensor, logits_teacher: Tensor, temperature: float = 1.0, global_batch: bool = False
) -> Tensor:
    """InfoNCE over L2-normalised logits, in-batch negatives.

    ``t̂, ŝ`` = rows of teacher / student logits divided by their L2 norms;
    ``M = t̂ ŝᵀ / τ`` (B×B, teacher rows, student columns);
    ``L = mean_i −log softmax(M_i)_i`` — the positive of teacher sample i is the
    student's view of the same sample, the other B−1 students are its negatives.
    One direction only, no memory bank, no projection head; the teacher is detached.
    Invariant to scaling a row by a positive constant (normalisation), not to adding
    a constant. A batch of one gives 0.

    ``global_batch`` (under DDP, W processes): the columns are the students of all ranks
    (N rows in all; ranks may hold different numbers, e.g. RoIs), gathered with their
    gradient; this rank's rows keep their own positives, offset by the rows of the earlier
    ranks. Rank r returns ``L_r = (W / N) Σ_{i∈r} −log softmax(M_i)_{o_r+i}``, so the mean of
    the L_r (what DDP's gradient averaging optimises) is the one-process loss over all N rows —
    also when the ranks' row counts differ. With equal counts L_r is the mean over its rows.
    """
    student = F.normalize(logits_student, dim=1)
    teacher = F.normalize(logits_teacher.detach(), dim=1)
    if not (global_batch and distributed.world_size() > 1):
        similarity = teacher @ student.t() / temperature
        return F.cross_entropy(similarity, torch.arange(similarity.shape[0], device=similarity.device))
    student, offset = distributed.all_gather_rows_with_grad(student)
    similarity = teacher @ student.t() / temperature
    positives = torch.arange(offset, offset + similarity.shape[0], device=similarity.device)
    return F.cross_entropy(similarity, positives, reduction="sum") * (distributed.world_size() / student.shape[0])


def grouped_ckd_loss(
    logits_student: Tensor, logits_teacher: Tensor, group_sizes: Sequence[int], temperature: float = 1.0
) -> Tensor:
    """:func:`ckd_loss` within consecutive groups of rows, averaged over the groups:
    ``L = (1/G) Σ_g ckd_loss(s_g, t_g)``, the negatives of a row only from its own group.

    Detection (the coco suite's ``contrast_rois``): a group is the RoIs of consecutive whole
    images, as the official CKD detection code contrasted the RoIs of one GPU's images
    (Detectron2, ``detection/model/rcnn.py``: ``ckd_loss`` over the GPU's sampled proposals).
    Groups are this process's rows only: nothing is gathered across ranks.
    """
    if sum(group_sizes) != logits_student.shape[0]:
        raise ValueError(f"contrast groups of {sum(group_sizes)} rows for {logits_student.shape[0]} rows")
    pairs = zip(torch.split(logits_student, list(group_sizes)), torch.split(logits_teacher, list(group_sizes)))
    # An empty group (an image without RoIs) has no InfoNCE; it would be NaN, so it does not count.
    return torch.stack([ckd_loss(s, t, temperature) for s, t in pairs if s.shape[0]]).mean()


@METHODS.register_module(name="ckd")
class CKD(Distiller):
    """``L = w_ce · CE + w_cl · ckd_loss``; defaults τ = 1, CL weight 10, CE weight 1.

    The paper recipe tunes batch size, learning rate, CL weight and τ per pair. A step with
    ``groups`` (row counts) contrasts within each group of this process (:func:`grouped_ckd_loss`),
    whatever ``contrast`` says.
    """

    display_name, table_order, detection = "CKD", 60, "roi_logits"

    def __init__(
        self,
        temperature: float = 1.0,
        cl_weight: float = 10.0,
        ce_weight: float = 1.0,
        contrast: str = "global",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if contrast not in ("global", "local"):
            raise ValueError(f"CKD contrast must be 'global' or 'local', got {contrast!r}")
        self.temperature, self.cl_weight, self.ce_weight = temperature, cl_weight, ce_weight
        # Under DDP: negatives from the global batch, or ("local") only from this process's
        # batch, as the official code's DataParallel computed the loss per replica.
        self.contrast = contrast

    def forward(self, step: StepInputs) -> dict[str, Tensor]:
        logits_teacher = requires_teacher_logits(step)
        # CE first: the order the graph is built in sets the order in which backward sums the two
        # terms' gradients into the logits, so the same seed keeps giving the same numbers.
        loss_ce = self.cross_entropy(step, self.ce_weight)
        if step.groups is not None:  # contrast groups of this process (detection: contrast_rois); no gather
            contrastive = grouped_ckd_loss(step.logits_student, logits_teacher, step.groups, self.temperature)
        else:
            contrastive = ckd_loss(step.logits_student, logits_teacher, self.temperature, self.contrast == "global")
        return {"loss_ce": loss_ce, "loss_ckd": self.cl_weight * contrastive}
