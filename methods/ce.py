"""Cross-entropy baseline: the student trained alone (the "Student" row of every table)."""

from __future__ import annotations

from torch import Tensor

from .base import Distiller, StepInputs
from .registry import METHODS


@METHODS.register_module(name="ce")
class CrossEntropy(Distiller):
    """``L = w_ce · CE(z_s, y)``; no teacher is run."""

    display_name, table_order, detection = "Student", 1, "student_only"

    needs_teacher = False

    def __init__(self, ce_weight: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ce_weight = ce_weight

    def forward(self, step: StepInputs) -> dict[str, Tensor]:
        return {"loss_ce": self.cross_entropy(step, self.ce_weight)}
