"""CRD: Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020.

https://arxiv.org/abs/1910.10699 — reference: RepDistiller (``crd/memory.py``,
``crd/criterion.py``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import Distiller, StepInputs, requires_teacher_logits
from .kd import kd_loss
from .registry import METHODS

NCE_EPS = 1e-7  # the reference's epsilon in the NCE denominators


class Embed(nn.Module):
    """Linear projection to the contrast space followed by L2 normalisation."""

    def __init__(self, dim_in: int, dim_out: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear(x.reshape(x.shape[0], -1))
        # The reference's ``Normalize(2)``: x / (Σ x²)^½, no epsilon.
        return x.div(x.pow(2).sum(1, keepdim=True).pow(0.5))


class ContrastMemory(nn.Module):
    """Two memory banks of embeddings (one per network) scored against the batch.

    ``out_student[i, j] = exp(⟨memory_teacher[contrast_idx[i, j]], v_student[i]⟩ / T) / Z_s``
    and symmetrically for the teacher, each ``B × (K+1)`` with column 0 the positive.
    ``Z = mean(out) · n_data`` is estimated on the first call and then fixed (it is a
    buffer, so checkpoints keep it). After scoring, rows ``idx`` of each bank become
    ``normalize(m · old + (1 − m) · v)``. Banks are initialised uniform in
    ±1/sqrt(feat_dim/3), the student's bank drawn first, as in the reference.
    """

    def __init__(self, feat_dim: int, n_data: int, nce_k: int, nce_t: float = 0.07, nce_m: float = 0.5) -> None:
        super().__init__()
        self.feat_dim, self.n_data, self.nce_k = feat_dim, n_data, nce_k
        # [K, T, Z_student, Z_teacher, momentum] in one buffer of the default dtype, laid
        # out as the reference's ``params``: T and m pass through that dtype exactly as
        # there (0.07 is rounded to float32 in a float32 build), and a Z below zero
        # means "not estimated yet". Being a buffer, Z is saved in checkpoints.
        self.register_buffer("params", torch.tensor([nce_k, nce_t, -1, -1, nce_m]))
        self.nce_t, self.nce_m = self.params[1].item(), self.params[4].item()
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_student", torch.rand(n_data, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_teacher", torch.rand(n_data, feat_dim).mul_(2 * stdv).add_(-stdv))

    @property
    def z_student(self) -> Tensor:
        return self.params[2]

    @property
    def z_teacher(self) -> Tensor:
        return self.params[3]

    def _draw_contrast_index(self, idx: Tensor) -> Tensor:
        """The reference's fallback without data-side sampling: uniform over all samples."""
        contrast_idx = torch.randint(self.n_data, (idx.shape[0], self.nce_k + 1), device=idx.device)
        contrast_idx[:, 0] = idx
        return contrast_idx

    def _score(self, memory: Tensor, v: Tensor, contrast_idx: Tensor) -> Tensor:
        batch = v.shape[0]
        weight = memory.index_select(0, contrast_idx.reshape(-1)).detach().view(batch, -1, self.feat_dim)
        return torch.bmm(weight, v.view(batch, self.feat_dim, 1)).squeeze(2).div(self.nce_t).exp()

    def _normalised(self, out: Tensor, slot: int) -> Tensor:
        z = self.params[slot].item()
        if z < 0:
            self.params[slot] = out.detach().mean() * self.n_data
            z = self.params[slot].item()
        return out / z

    @torch.no_grad()
    def _update(self, memory: Tensor, v: Tensor, idx: Tensor) -> None:
        mixed = memory.index_select(0, idx).mul_(self.nce_m).add_(v.detach() * (1 - self.nce_m))
        memory.index_copy_(0, idx, mixed.div(mixed.pow(2).sum(1, keepdim=True).pow(0.5)))

    def forward(
        self, v_student: Tensor, v_teacher: Tensor, idx: Tensor, contrast_idx: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if contrast_idx is None:
            contrast_idx = self._draw_contrast_index(idx)
        out_student = self._score(self.memory_teacher, v_student, contrast_idx)
        out_teacher = self._score(self.memory_student, v_teacher, contrast_idx)
        out_student = self._normalised(out_student, 2)
        out_teacher = self._normalised(out_teacher, 3)
        self._update(self.memory_student, v_student, idx)
        self._update(self.memory_teacher, v_teacher, idx)
        return out_student, out_teacher


def nce_loss(x: Tensor, n_data: int) -> Tensor:
    """NCE loss of CRD on scores ``x`` (B × (K+1), column 0 the positive).

    ``−(1/B) Σ_i [log(P_i0 / (P_i0 + K/N + ε)) + Σ_{j≥1} log((K/N) / (P_ij + K/N + ε))]``
    with noise distribution 1/N and ε = 1e-7.
    """
    batch, k = x.shape[0], x.shape[1] - 1
    noise = k * (1.0 / float(n_data))  # written as the reference computes it (m · Pn)
    positive = x[:, 0]
    log_d1 = torch.div(positive, positive + (noise + NCE_EPS)).log()
    negatives = x[:, 1:]
    log_d0 = torch.div(torch.full_like(negatives, noise), negatives + (noise + NCE_EPS)).log()
    return -(log_d1.sum(0) + log_d0.reshape(-1).sum(0)) / batch


@METHODS.register_module(name="crd")
class CRD(Distiller):
    """``L = w_ce · CE + w_crd · (nce(out_student) + nce(out_teacher))``.

    Embedding heads Linear(dim, 128) + L2 norm on the pooled penultimate features of
    both networks; K = 16384 negatives per sample drawn by the data side from other
    classes ("exact" mode: the positive is the sample itself), T = 0.07, momentum 0.5.
    Defaults from RepDistiller's CIFAR-100 commands: CE weight 1, CRD weight 0.8.
    """

    feature_taps = ("embedding",)
    needs_index = True

    def __init__(
        self,
        crd_weight: float = 0.8,
        ce_weight: float = 1.0,
        feat_dim: int = 128,
        nce_k: int = 16384,
        nce_t: float = 0.07,
        nce_m: float = 0.5,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        context = self._require_context()
        if context.num_data is None:
            raise ValueError("CRD needs the training-set size (DistillContext.num_data) for its memory bank")
        if nce_k >= context.num_data:
            raise ValueError(f"CRD nce_k={nce_k} must be smaller than the training set ({context.num_data} samples)")
        self.embed_student = Embed(math.prod(context.student_shapes["embedding"][1:]), feat_dim)
        self.embed_teacher = Embed(math.prod(context.teacher_shapes["embedding"][1:]), feat_dim)
        self.memory = ContrastMemory(feat_dim, context.num_data, nce_k, nce_t, nce_m)
        self.crd_weight, self.ce_weight = crd_weight, ce_weight
        self.contrast_k = nce_k

    def crd_term(self, step: StepInputs) -> Tensor:
        if step.index is None:
            raise ValueError("CRD needs the dataset indices of the batch (StepInputs.index)")
        v_student = self.embed_student(step.features_student["embedding"])
        v_teacher = self.embed_teacher(step.features_teacher["embedding"])
        out_student, out_teacher = self.memory(v_student, v_teacher, step.index, step.contrast_index)
        n_data = self.memory.n_data
        return self.crd_weight * (nce_loss(out_student, n_data) + nce_loss(out_teacher, n_data))

    def forward(self, step: StepInputs) -> dict[str, Tensor]:
        return {"loss_ce": self.cross_entropy(step, self.ce_weight), "loss_crd": self.crd_term(step)}


@METHODS.register_module(name="crd_kd")
class CRDKD(CRD):
    """CRD + KD, as in the CRD paper's "CRD+KD" rows: CE 1, KD 1 (T = 4), CRD 0.8."""

    def __init__(self, kd_weight: float = 1.0, temperature: float = 4.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.kd_weight, self.temperature = kd_weight, temperature

    def forward(self, step: StepInputs) -> dict[str, Tensor]:
        logits_teacher = requires_teacher_logits(step)
        losses = super().forward(step)
        losses["loss_kd"] = self.kd_weight * kd_loss(step.logits_student, logits_teacher, self.temperature)
        return losses
