"""CIFAR-100: the 13 standard teacher→student pairs of the CRD / DKD papers.

Recipes:
- ``unified`` (default): the standard recipe for every method — SGD momentum 0.9,
  wd 5e-4, batch 64, lr 0.05 (0.01 for MobileNetV2 / ShuffleV1 / ShuffleV2 students),
  240 epochs, ×0.1 from epochs 151, 181, 211 (RepDistiller / mdistiller).
- ``paper``: each method's own published schedule. DKD: the unified schedule with the
  per-pair beta of mdistiller's ``configs/cifar100/dkd/*.yaml`` (pairs without a
  config there keep beta 8). CKD: the official CKD code's ``configs/cifar100/ckd/<pair>.yaml``
  (:data:`CKD_PAPER`): 480 epochs, cosine to 0 stepped per epoch, SGD momentum 0.9,
  wd 5e-4, CE weight 1, and per pair its batch size, lr, CL weight and τ; the two pairs
  without a config there (resnet110-resnet20, ResNet50-vgg8) keep the defaults and the
  recipe says so. KD, FitNet, CRD, CRD+KD: their papers use the unified schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class CKDSetting:
    """The per-pair settings of one official CKD config."""

    batch_size: int  # SOLVER.BATCH_SIZE
    lr: float  # SOLVER.LR, as written: the batch-32 configs do not follow a linear lr rule
    cl_weight: float  # weight of the contrastive (CL) term -> methods.ckd.CKD(cl_weight=...)
    temperature: float  # τ -> methods.ckd.CKD(temperature=...)


# Official CKD code (Zhu et al., 2024, a fork of mdistiller), configs/cifar100/ckd/<pair>.yaml.
# Every config there: 480 epochs, cosine to 0 stepped per epoch, SGD momentum 0.9,
# weight decay 5e-4, CE weight 1; these four values differ per pair.
CKD_PAPER_EPOCHS = 480
CKD_PAPER = {
    #                                 batch    lr  CL weight  τ
    "resnet56-resnet20": CKDSetting(64, 0.05, 10.0, 1.0),
    "resnet110-resnet32": CKDSetting(64, 0.05, 10.0, 1.0),
    "resnet32x4-resnet8x4": CKDSetting(64, 0.05, 100.0, 1.0),
    "wrn_40_2-wrn_16_2": CKDSetting(64, 0.05, 100.0, 1.0),
    "wrn_40_2-wrn_40_1": CKDSetting(32, 0.05, 50.0, 2.0),
    "vgg13-vgg8": CKDSetting(64, 0.05, 100.0, 1.0),
    "resnet32x4-ShuffleV1": CKDSetting(32, 0.01, 100.0, 1.0),
    "resnet32x4-ShuffleV2": CKDSetting(64, 0.01, 100.0, 1.0),
    "wrn_40_2-ShuffleV1": CKDSetting(32, 0.01, 100.0, 1.0),
    "vgg13-MobileNetV2": CKDSetting(32, 0.01, 50.0, 2.0),
    "ResNet50-MobileNetV2": CKDSetting(32, 0.01, 100.0, 1.0),
}
# Pairs with no config there (resnet110-resnet20, ResNet50-vgg8): the defaults of
# methods.ckd.CKD and the standard batch / lr.
CKD_DEFAULT_CL_WEIGHT, CKD_DEFAULT_TEMPERATURE = 10.0, 1.0


def standard_schedule(pair: Pair) -> Schedule:
    lr = 0.01 if pair.student in LOW_LR_STUDENTS else 0.05
    return Schedule(epochs=240, batch_size=64, lr=lr, kind="step", milestones=(150, 180, 210))


def ckd_paper_setting(pair: Pair) -> tuple[CKDSetting, bool]:
    """(settings, True) from the official config of ``pair``, else (the defaults, False)."""
    if pair.name in CKD_PAPER:
        return CKD_PAPER[pair.name], True
    standard = standard_schedule(pair)
    return CKDSetting(standard.batch_size, standard.lr, CKD_DEFAULT_CL_WEIGHT, CKD_DEFAULT_TEMPERATURE), False


def unified(pair: Pair, method: str, method_cfg: dict[str, Any]) -> ResolvedRecipe:
    return ResolvedRecipe("unified", standard_schedule(pair), {"type": method, **method_cfg})


def paper(pair: Pair, method: str, method_cfg: dict[str, Any]) -> ResolvedRecipe:
    schedule = standard_schedule(pair)
    notes: tuple[str, ...] = ()
    if method == "dkd":
        method_cfg.setdefault("beta", DKD_PAPER_BETA.get(pair.name, 8.0))
        notes = ("beta per pair from mdistiller configs/cifar100/dkd",)
    elif method == "ckd":
        setting, official = ckd_paper_setting(pair)
        schedule = Schedule(
            epochs=CKD_PAPER_EPOCHS,
            batch_size=setting.batch_size,
            lr=setting.lr,
            momentum=0.9,
            weight_decay=5e-4,
            kind="cosine",
        )
        method_cfg.update(cl_weight=setting.cl_weight, temperature=setting.temperature, ce_weight=1.0)
        values = (
            f"batch {setting.batch_size}, lr {setting.lr:g}, CL weight {setting.cl_weight:g}, "
            f"tau {setting.temperature:g}, CE weight 1"
        )
        if official:
            source = (
                f"official CKD code configs/cifar100/ckd/<pair>.yaml: {CKD_PAPER_EPOCHS} epochs, cosine to 0 "
                f"stepped per epoch, SGD momentum 0.9, wd 5e-4, {values} (lr as written, no linear rule)"
            )
        else:
            source = (
                f"no config for this pair in the official CKD code (configs/cifar100/ckd): its {CKD_PAPER_EPOCHS} "
                f"epochs, cosine, SGD momentum 0.9, wd 5e-4 with the defaults {values}"
            )
        notes = (
            source,
            "the last partial batch of an epoch is kept (drop_last=False), as in the official code",
            "the paper reports the best epoch: compare with tables/cifar100_best",
        )
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
