"""CIFAR-100: the 13 standard teacher→student pairs of the CRD / DKD papers.

Recipes:
- ``unified`` (default): the standard recipe for every method — SGD momentum 0.9,
  wd 5e-4, batch 64, lr 0.05 (0.01 for MobileNetV2 / ShuffleV1 / ShuffleV2 students),
  240 epochs, ×0.1 from epochs 151, 181, 211 (RepDistiller / mdistiller).
- ``paper``: each method's own published schedule. DKD: the unified schedule with the
  per-pair beta of mdistiller's ``configs/cifar100/dkd/*.yaml`` (pairs without a
  config there keep beta 8). CKD: 480 epochs, cosine to 0 stepped per epoch; its
  per-pair batch / lr / CL weight / τ were not available to us, so the defaults
  (batch 64, lr 0.05 or 0.01, CL weight 10, τ 1) are used and the recipe says so.
  KD, FitNet, CRD, CRD+KD: their papers use the unified schedule.
"""
from __future__ import annotations

from typing import Any

from . import register_suite
from .base import LOW_LR_STUDENTS, Pair, ResolvedRecipe, Schedule, Suite

PAIRS = tuple(
    Pair(t, s)
    for t, s in [
        # same architecture family
        ("resnet56", "resnet20"),
        ("resnet110", "resnet20"),
        ("resnet110", "resnet32"),
        ("resnet32x4", "resnet8x4"),
        ("wrn_40_2", "wrn_16_2"),
        ("wrn_40_2", "wrn_40_1"),
        ("vgg13", "vgg8"),
        # different architecture
        ("vgg13", "MobileNetV2"),
        ("ResNet50", "MobileNetV2"),
        ("ResNet50", "vgg8"),
        ("resnet32x4", "ShuffleV1"),
        ("resnet32x4", "ShuffleV2"),
        ("wrn_40_2", "ShuffleV1"),
    ]
)

# mdistiller configs/cifar100/dkd/<pair>.yaml, DKD.BETA (absent there -> default 8.0).
DKD_PAPER_BETA = {
    "resnet56-resnet20": 2.0,
    "resnet110-resnet32": 2.0,
    "wrn_40_2-wrn_16_2": 6.0,
    "wrn_40_2-wrn_40_1": 6.0,
    "vgg13-vgg8": 6.0,
    "vgg13-MobileNetV2": 6.0,
}


def standard_schedule(pair: Pair) -> Schedule:
    lr = 0.01 if pair.student in LOW_LR_STUDENTS else 0.05
    return Schedule(epochs=240, batch_size=64, lr=lr, kind="step", milestones=(150, 180, 210))


def unified(pair: Pair, method: str, method_cfg: dict[str, Any]) -> ResolvedRecipe:
    return ResolvedRecipe("unified", standard_schedule(pair), {"type": method, **method_cfg})


def paper(pair: Pair, method: str, method_cfg: dict[str, Any]) -> ResolvedRecipe:
    schedule = standard_schedule(pair)
    notes: tuple[str, ...] = ()
    if method == "dkd":
        method_cfg.setdefault("beta", DKD_PAPER_BETA.get(pair.name, 8.0))
        notes = ("beta per pair from mdistiller configs/cifar100/dkd",)
    elif method == "ckd":
        schedule = Schedule(epochs=480, batch_size=schedule.batch_size, lr=schedule.lr, kind="cosine")
        notes = ("480 epochs cosine; per-pair batch/lr/CL weight/tau unavailable here, defaults used",)
    return ResolvedRecipe("paper", schedule, {"type": method, **method_cfg}, notes)


SUITE = register_suite(
    Suite(
        name="cifar100",
        num_classes=100,
        pairs=PAIRS,
        recipes={"unified": unified, "paper": paper},
        dataset_base="cifar100",
        description="CIFAR-100, 13 standard pairs (7 same-architecture, 6 different-architecture)",
    )
)
