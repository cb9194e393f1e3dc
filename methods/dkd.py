"""DKD: Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022.

https://arxiv.org/abs/2203.08679 — reference: mdistiller (``mdistiller/distillers/DKD.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Distiller, StepInputs, requires_teacher_logits
from .registry import METHODS

# The reference removes the target class from the non-target softmax by subtracting this
# from the (temperature-scaled) target logit; kept as is for numerical parity.
_TARGET_SUPPRESSION = 1000.0


def _binary_log_probs(log_probs: Tensor, target_mask: Tensor) -> Tensor:
    """log [p_target, 1 − p_target] per row, computed in log space.

    The reference sums probabilities and takes ``log``: a fully confident row gives
    log(0) = −inf and a NaN loss. ``logsumexp`` over the non-target log-probs is the
    same quantity and stays finite.
    """
    log_target = log_probs.masked_fill(~target_mask, float("-inf")).logsumexp(1, keepdim=True)
    log_other = log_probs.masked_fill(target_mask, float("-inf")).logsumexp(1, keepdim=True)
    return torch.cat([log_target, log_other], dim=1)


def tckd_nckd(
    logits_student: Tensor, logits_teacher: Tensor, target: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """Per-sample (TCKD, NCKD), both already multiplied by T² (not averaged)."""
    num_classes = logits_student.shape[1]
    if num_classes < 3:
        raise ValueError(
            f"DKD needs at least 3 classes, got {num_classes}: with a single non-target class NCKD is undefined"
        )
    target_mask = F.one_hot(target, num_classes).bool()
    scaled_student = logits_student / temperature
    scaled_teacher = logits_teacher / temperature

    binary_student = _binary_log_probs(F.log_softmax(scaled_student, dim=1), target_mask)
    binary_teacher = _binary_log_probs(F.log_softmax(scaled_teacher, dim=1), target_mask)
    tckd = F.kl_div(binary_student, binary_teacher, reduction="none", log_target=True).sum(1)

    suppression = _TARGET_SUPPRESSION * target_mask
    log_p_student_nt = F.log_softmax(scaled_student - suppression, dim=1)
    # Teacher in log space too: its suppressed target prob underflows to 0, and the
    # gradient of p·log p there would be 0·(−inf) = NaN.
    log_p_teacher_nt = F.log_softmax(scaled_teacher - suppression, dim=1)
    nckd = F.kl_div(log_p_student_nt, log_p_teacher_nt, reduction="none", log_target=True).sum(1)
    return tckd * temperature**2, nckd * temperature**2


def dkd_loss(
    logits_student: Tensor,
    logits_teacher: Tensor,
    target: Tensor,
    alpha: float,
    beta: float,
    temperature: float,
) -> Tensor:
    """``alpha · TCKD + beta · NCKD``.

    TCKD = T²·KL(b_t ‖ b_s) on the binary distribution [p_target, 1 − p_target] at T;
    NCKD = T²·KL over the non-target classes (target logit minus 1000 before the
    (log-)softmax, as the reference does). Both are summed over the batch and divided by B.
    """
    tckd, nckd = tckd_nckd(logits_student, logits_teacher, target, temperature)
    batch = target.shape[0]
    return alpha * tckd.sum() / batch + beta * nckd.sum() / batch


@METHODS.register_module(name="dkd")
class DKD(Distiller):
    """``L = w_ce · CE + min(epoch / warmup, 1) · dkd_loss`` (epoch counted from 1).

    Defaults are mdistiller's CIFAR-100 config: CE weight 1, alpha 1, beta 8, T 4,
    warm-up 20 epochs. The DKD paper tunes beta per pair (the ``paper`` recipe sets it).
    """

    display_name, table_order, detection = "DKD", 50, "roi_logits"

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup: int = 20,
        ce_weight: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if warmup <= 0:
            raise ValueError(f"DKD warmup must be a positive number of epochs, got {warmup}")
        self.alpha, self.beta, self.temperature = alpha, beta, temperature
        self.warmup, self.ce_weight = warmup, ce_weight

    def forward(self, step: StepInputs) -> dict[str, Tensor]:
        logits_teacher = requires_teacher_logits(step)
        ramp = min(step.epoch / self.warmup, 1.0)
        loss = dkd_loss(step.logits_student, logits_teacher, step.target, self.alpha, self.beta, self.temperature)
        return {"loss_ce": self.cross_entropy(step, self.ce_weight), "loss_dkd": ramp * loss}
