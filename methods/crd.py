"""CRD: Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020.

https://arxiv.org/abs/1910.10699 — reference: RepDistiller (``crd/memory.py``,
``crd/criterion.py``).
"""

from __future__ import annotations

import inspect
import math
import weakref
from typing import Any, Literal, Mapping, get_args

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from . import distributed
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


Scoring = Literal["auto", "gather", "full"]
SCORING_MODES: tuple[str, ...] = get_args(Scoring)


def choose_scoring(batch: int, num_contrast: int, n_data: int, feat_dim: int) -> Literal["gather", "full"]:
    """The ``scoring='auto'`` rule: which of two identical computations is cheaper.

    ``gather`` copies ``B·(K+1)`` bank rows (``B·(K+1)·d`` elements, the reference's
    algorithm); ``full`` multiplies the batch with the whole bank (``B·N·d`` multiply-adds,
    streamed) and keeps a ``B × N`` score matrix and, in backward, a ``B × N`` dense gradient.
    ``full`` is chosen when both hold:

    * ``B·(K+1) ≥ N/2`` — the batch reads at least half as many rows as the bank has: a
      random row gather costs about twice a row streamed through the matmul;
    * ``2·N ≤ (K+1)·d`` — the two ``B × N`` matrices are no larger than the
      ``B × (K+1) × d`` gathered block: never more memory than the reference. With d = 128
      this also keeps ``N/(K+1)`` (multiply-adds per gathered element) ≤ 64, past which the
      gather wins again.

    Calibrated with ``benchmark.bench.crd_scoring`` (one CPU thread, float32, forward+backward,
    medians of interleaved runs): full/gather speed-up 11–15× at CIFAR-100 (B=64, K=16384,
    N=50,000, d=128 → ``full``), 3.5× at B=4, 1.6× at B=2, 0.75× at B=1 (→ ``gather``);
    1.2–1.6× at N=500,000 with B=16–32; 0.5–0.7× at ImageNet's N=1,281,167 (→ ``gather``
    for any batch: its ``B × N`` matrices would outgrow the gathered block).
    """
    full = 2 * batch * num_contrast >= n_data and 2 * n_data <= num_contrast * feat_dim
    return "full" if full else "gather"


class _BankSnapshot:
    """A bank as a pending backward must see it: the live tensor as it was when scored.

    The memory overwrites rows of its banks right after scoring. Instead of copying the
    bank (N·d) for backward, the memory hands every snapshot still waiting for its backward
    the rows it is about to overwrite (B·d); the first value seen for a row is the one the
    scores were computed with. Writes that bypass the memory (``load_state_dict``, user
    code) are caught by the tensor's version counter, and backward then refuses.
    """

    def __init__(self, bank: Tensor) -> None:
        self.bank = bank
        self.version = bank._version
        self._rows: list[Tensor] = []
        self._old: list[Tensor] = []

    @property
    def intact(self) -> bool:
        return self.bank._version == self.version

    def remember(self, rows: Tensor, old: Tensor) -> None:
        self._rows.append(rows)
        self._old.append(old)

    def matmul(self, dense: Tensor) -> Tensor:
        """``dense @ bank_at_scoring_time`` for a ``B × N`` matrix, without copying the bank."""
        if not self.intact:
            raise RuntimeError(
                "ContrastMemory: a memory bank was modified in place outside the memory between scoring "
                "and backward, so the gradient of the full-bank scoring path cannot be computed; "
                "use ContrastMemory(scoring='gather') if the banks must be written from outside"
            )
        bank = self.bank
        dense = dense.to(bank.dtype)
        if not self._rows:
            return dense @ bank
        rows, old = torch.cat(self._rows), torch.cat(self._old)
        unique, inverse = torch.unique(rows, return_inverse=True)
        order = torch.arange(rows.numel(), device=rows.device)
        first = torch.full_like(unique, rows.numel()).scatter_reduce_(0, inverse, order, "amin")
        overwritten = dense[:, unique]
        # Split, not corrected: the live values of overwritten rows never enter the sum.
        return dense.index_fill_(1, unique, 0) @ bank + overwritten @ old[first]


class _PendingSnapshots:
    """Weak references to the snapshots of graphs not yet freed; a fresh, empty registry
    on copy and pickle (a copied memory has banks of its own that no graph refers to)."""

    def __init__(self) -> None:
        self._refs: list[weakref.ref[_BankSnapshot]] = []

    def __deepcopy__(self, memo: dict) -> _PendingSnapshots:
        return _PendingSnapshots()

    def __reduce__(self) -> tuple:
        return (_PendingSnapshots, ())

    def __len__(self) -> int:
        return len(self._live())

    def _live(self) -> list[_BankSnapshot]:
        snapshots = [ref() for ref in self._refs]
        self._refs = [ref for ref, snap in zip(self._refs, snapshots) if snap is not None]
        return [snap for snap in snapshots if snap is not None]

    def track(self, bank: Tensor) -> _BankSnapshot:
        snapshot = _BankSnapshot(bank)
        self._live()
        self._refs.append(weakref.ref(snapshot))
        return snapshot

    def overwrite_rows(self, bank: Tensor, rows: Tensor, old: Tensor, new: Tensor) -> None:
        """``bank[rows] = new`` (``old`` = the current ``bank[rows]``), keeping pending snapshots valid."""
        waiting = [snap for snap in self._live() if snap.bank is bank and snap.intact]
        if waiting:
            rows = rows.clone()  # the caller's index tensor may be reused
        for snap in waiting:
            snap.remember(rows, old)
        bank.index_copy_(0, rows, new)
        for snap in waiting:
            snap.version = bank._version


class _FullBankScores(torch.autograd.Function):
    """``s[i, j] = ⟨bank[c_ij], v_i⟩`` as ``(v @ bankᵀ).gather(1, c)``; gradient to ``v`` only.

    Backward is ``∂L/∂v = scatter(∂L/∂s into B × N) @ bank_at_scoring_time``: the bank is
    never saved (it is updated in place right after scoring), a snapshot supplies the
    pre-update rows.
    """

    @staticmethod
    def forward(ctx: Any, v: Tensor, bank: Tensor, contrast_idx: Tensor, snapshot: _BankSnapshot) -> Tensor:
        ctx.save_for_backward(contrast_idx)
        ctx.snapshot, ctx.v_dtype = snapshot, v.dtype
        return torch.mm(v, bank.t()).gather(1, contrast_idx)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
        (contrast_idx,) = ctx.saved_tensors
        snapshot: _BankSnapshot = ctx.snapshot
        dense = grad.new_zeros(grad.shape[0], snapshot.bank.shape[0]).scatter_add_(1, contrast_idx, grad)
        return snapshot.matmul(dense).to(ctx.v_dtype), None, None, None


class ContrastMemory(nn.Module):
    """Two memory banks of embeddings (one per network) scored against the batch.

    ``out_student[i, j] = exp(⟨memory_teacher[contrast_idx[i, j]], v_student[i]⟩ / T) / Z_s``
    and symmetrically for the teacher, each ``B × (K+1)`` with column 0 the positive.
    ``Z = mean(out) · n_data`` is estimated on the first call and then fixed (it is a
    buffer, so checkpoints keep it). After scoring, rows ``idx`` of each bank become
    ``normalize(m · old + (1 − m) · v)``. Banks are initialised uniform in
    ±1/sqrt(feat_dim/3), the student's bank drawn first, as in the reference.

    ``scoring`` picks how the dot products are computed — the same numbers either way:
    ``'gather'`` copies the ``B·(K+1)`` bank rows and uses a bmm (the reference);
    ``'full'`` multiplies the batch with the whole bank and gathers the needed columns,
    far cheaper when K is a sizeable fraction of N (CIFAR-100 settings: 12–15× on one CPU thread);
    ``'auto'`` decides per call with :func:`choose_scoring`. Gradients flow to ``v`` only,
    computed with the bank rows as they were when scored, never the updated ones.
    """

    def __init__(
        self,
        feat_dim: int,
        n_data: int,
        nce_k: int,
        nce_t: float = 0.07,
        nce_m: float = 0.5,
        scoring: Scoring = "auto",
    ) -> None:
        super().__init__()
        if scoring not in SCORING_MODES:
            raise ValueError(f"ContrastMemory scoring must be one of {SCORING_MODES}, got {scoring!r}")
        self.feat_dim, self.n_data, self.nce_k, self.scoring = feat_dim, n_data, nce_k, scoring
        # [K, T, Z_student, Z_teacher, momentum] in one buffer of the default dtype, laid
        # out as the reference's ``params``: T and m pass through that dtype exactly as
        # there (0.07 is rounded to float32 in a float32 build), and a Z below zero
        # means "not estimated yet". Being a buffer, Z is saved in checkpoints.
        self.register_buffer("params", torch.tensor([nce_k, nce_t, -1, -1, nce_m]))
        self.nce_t, self.nce_m = self.params[1].item(), self.params[4].item()
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_student", torch.rand(n_data, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_teacher", torch.rand(n_data, feat_dim).mul_(2 * stdv).add_(-stdv))
        self._pending = _PendingSnapshots()

    @property
    def z_student(self) -> Tensor:
        return self.params[2]

    @property
    def z_teacher(self) -> Tensor:
        return self.params[3]

    def scoring_for(self, batch: int, num_contrast: int | None = None) -> Literal["gather", "full"]:
        """The path a call with this batch size (and ``K+1`` columns) takes."""
        if self.scoring != "auto":
            return self.scoring  # type: ignore[return-value]
        num_contrast = self.nce_k + 1 if num_contrast is None else num_contrast
        return choose_scoring(batch, num_contrast, self.n_data, self.feat_dim)

    def _draw_contrast_index(self, idx: Tensor) -> Tensor:
        """The reference's fallback without data-side sampling: uniform over all samples."""
        contrast_idx = torch.randint(self.n_data, (idx.shape[0], self.nce_k + 1), device=idx.device)
        contrast_idx[:, 0] = idx
        return contrast_idx

    def _dots(self, memory: Tensor, v: Tensor, contrast_idx: Tensor, path: str) -> Tensor:
        batch = v.shape[0]
        if path == "gather":
            weight = memory.index_select(0, contrast_idx.reshape(-1)).detach().view(batch, -1, self.feat_dim)
            return torch.bmm(weight, v.view(batch, self.feat_dim, 1)).squeeze(2)
        contrast_idx = contrast_idx.long()
        if torch.is_grad_enabled() and v.requires_grad:
            return _FullBankScores.apply(v, memory.detach(), contrast_idx, self._pending.track(memory))
        return torch.mm(v, memory.detach().t()).gather(1, contrast_idx)

    def _score(self, memory: Tensor, v: Tensor, contrast_idx: Tensor, path: str) -> Tensor:
        return self._dots(memory, v, contrast_idx, path).div(self.nce_t).exp()

    def _normalised(self, out: Tensor, slot: int) -> Tensor:
        z = self.params[slot].item()
        if z < 0:
            # Under DDP the mean is over the global batch: Z is the same on every rank and
            # equal to that of one process over the global batch.
            self.params[slot] = (
                out.detach().mean() if distributed.world_size() == 1 else distributed.global_mean(out)
            ) * self.n_data
            z = self.params[slot].item()
        return out / z

    @torch.no_grad()
    def _update(self, memory: Tensor, v: Tensor, idx: Tensor) -> None:
        old = memory.index_select(0, idx)
        mixed = old.mul(self.nce_m).add_(v.detach() * (1 - self.nce_m))
        self._pending.overwrite_rows(memory, idx, old, mixed.div(mixed.pow(2).sum(1, keepdim=True).pow(0.5)))

    def forward(
        self, v_student: Tensor, v_teacher: Tensor, idx: Tensor, contrast_idx: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if contrast_idx is None:
            contrast_idx = self._draw_contrast_index(idx)
        path = self.scoring_for(v_student.shape[0], contrast_idx.shape[1])
        out_student = self._score(self.memory_teacher, v_student, contrast_idx, path)
        out_teacher = self._score(self.memory_student, v_teacher, contrast_idx, path)
        out_student = self._normalised(out_student, 2)
        out_teacher = self._normalised(out_teacher, 3)
        if distributed.world_size() > 1:
            # One bank for the whole run: every rank applies the global batch's update, so the
            # banks stay identical on all ranks and equal to a one-process run's.
            idx, v_student, v_teacher = (distributed.all_gather_cat(t.detach()) for t in (idx, v_student, v_teacher))
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
    ``scoring`` is passed to :class:`ContrastMemory` (``'auto'``: full-bank matmul on
    CIFAR-sized banks, the reference's row gather on ImageNet-sized ones).
    """

    display_name, table_order = "CRD", 30
    detection_note = "is not defined for detection in any reference (it needs a memory bank of per-image embeddings)"

    @classmethod
    def negatives_per_sample(cls, config: Mapping[str, object]) -> int | None:
        return int(config.get("nce_k", inspect.signature(CRD.__init__).parameters["nce_k"].default))

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
        scoring: Scoring = "auto",
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
        self.memory = ContrastMemory(feat_dim, context.num_data, nce_k, nce_t, nce_m, scoring)
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

    display_name, table_order = "CRD+KD", 40

    def __init__(self, kd_weight: float = 1.0, temperature: float = 4.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.kd_weight, self.temperature = kd_weight, temperature

    def forward(self, step: StepInputs) -> dict[str, Tensor]:
        logits_teacher = requires_teacher_logits(step)
        losses = super().forward(step)
        losses["loss_kd"] = self.kd_weight * kd_loss(step.logits_student, logits_teacher, self.temperature)
        return losses
