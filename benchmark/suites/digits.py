"""digits: scikit-learn's ``load_digits`` (real handwritten digits) in the CIFAR pipeline.

8×8 images brought to 32×32×3 with a fixed stratified split (``benchmark/data/digits.py``),
a small plain-CNN pair (``benchmark/models/small_cnn.py``) and a short step schedule, so that the teacher, every method × 3 seeds
and the tables run in minutes on a laptop CPU. It exercises the whole pipeline on real
data; its accuracies say nothing about CIFAR-100 or ImageNet.
"""

from __future__ import annotations

from typing import Any

from . import register_suite
from .base import Pair, ResolvedRecipe, Schedule, Suite

PAIRS = (Pair("small_cnn_w32", "small_cnn_w8"),)


def short(pair: Pair, method: str, method_cfg: dict[str, Any]) -> ResolvedRecipe:
    schedule = Schedule(epochs=10, batch_size=64, lr=0.05, kind="step", milestones=(6, 8))
    return ResolvedRecipe("unified", schedule, {"type": method, **method_cfg})


SUITE = register_suite(
    Suite(
        name="digits",
        num_classes=10,
        pairs=PAIRS,
        recipes={"unified": short},
        dataset_base="digits",
        # 1,437 training images: CRD draws 256 negatives (≈1,290 per class are available)
        # and DKD warms up over 2 of the 10 epochs instead of 20 of 240.
        method_defaults={"crd": {"nce_k": 256}, "crd_kd": {"nce_k": 256}, "dkd": {"warmup": 2}},
        needs_data_root=False,
        cpu_threads=1,
        description="scikit-learn digits (embedded real data), CPU-sized",
    )
)
