"""What every distillation method sees and returns.

A method is an ``nn.Module`` (it may own trainable parts: regressors, embedding heads,
memory banks) with a plain ``forward(step) -> dict`` of ALREADY WEIGHTED loss terms,
named ``loss_*`` so MMEngine logs each one and sums them into the training loss.
Class attributes declare what the training step must provide.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Mapping

from torch import Tensor, nn


@dataclass(frozen=True)
class DistillContext:
    """Facts about the run a method may need to build itself."""

    num_classes: int
    num_data: int | None = None  # size of the training set (CRD's memory bank)
    # Shapes (batch first) of the features at the taps a method asks for, probed on a dummy batch.
    student_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    teacher_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass
class StepInputs:
    """One training step's worth of what a method may consume."""

    logits_student: Tensor
    target: Tensor
    logits_teacher: Tensor | None = None
    epoch: int = 1  # counted from 1, as DKD's warm-up expects
    features_student: Mapping[str, Tensor] = field(default_factory=dict)
    features_teacher: Mapping[str, Tensor] = field(default_factory=dict)
    index: Tensor | None = None  # dataset indices of the batch's samples
    contrast_index: Tensor | None = None  # B x (K+1) indices, column 0 = own index (CRD)
    # Row counts of consecutive contrast groups of this process (detection: the RoIs of whole
    # images, CKD's contrast_rois); None: one group of all rows.
    groups: tuple[int, ...] | None = None


class Distiller(nn.Module):
    """Base class of every method in the registry."""

    feature_taps: ClassVar[tuple[str, ...]] = ()  # feature tap names needed from both networks
    needs_teacher: ClassVar[bool] = True
    needs_index: ClassVar[bool] = False
    contrast_k: int | None = None  # negatives per sample the data side must draw (CRD), else None

    # Facts the tables, the detection suite and the benchmarks read from the registry.
    display_name: ClassVar[str] = ""  # how tables name the method ("" = its registry name)
    table_order: ClassVar[int] = 1000  # rows sort by it (the Teacher row always comes first)
    # On two-stage detectors: "roi_logits" (the loss on the RoI classification logits of the
    # student's sampled RoIs), "fpn_features" (hints on the FPN outputs), "student_only" (no
    # teacher), or "undefined" (``detection_note`` says why).
    detection: ClassVar[str] = "undefined"
    detection_note: ClassVar[str] = "has no detection form in this suite"

    @classmethod
    def negatives_per_sample(cls, config: Mapping[str, object]) -> int | None:
        """Negatives per sample the data side must draw for a run of this config (CRD's K), else None."""
        return None

    def __init__(self, context: DistillContext | None = None) -> None:
        super().__init__()
        self.context = context

    def forward(self, step: StepInputs) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def cross_entropy(step: StepInputs, weight: float) -> Tensor:
        return weight * nn.functional.cross_entropy(step.logits_student, step.target)

    def _require_context(self) -> DistillContext:
        if self.context is None:
            raise ValueError(f"{type(self).__name__} needs a DistillContext (feature shapes / dataset size) to build")
        return self.context


def requires_teacher_logits(step: StepInputs) -> Tensor:
    if step.logits_teacher is None:
        raise ValueError("this method needs the teacher's logits, but the step has none")
    return step.logits_teacher


__all__ = ["DistillContext", "StepInputs", "Distiller", "requires_teacher_logits"]
