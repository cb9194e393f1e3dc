"""ImageNet-1k: the two standard teacher→student pairs of the CRD / DKD ImageNet experiments.

Pairs: ResNet34 → ResNet18 (same family) and ResNet50 → MobileNetV1 (different), with the
zoo's torchvision-compatible models (``benchmark/models/imagenet.py``).

Recipes:
- ``unified`` (default): mdistiller's ``configs/imagenet/{r34_r18,r50_mv1}/*.yaml`` — SGD
  momentum 0.9, wd 1e-4, 100 epochs, ×0.1 from epochs 31, 61, 91 (mdistiller's
  ``LR_DECAY_STAGES: [30, 60, 90]`` counted from epoch 1, written as MMEngine milestones
  (30, 60, 90) of 0-based epochs, as the CIFAR recipe writes "from 151" as 150), batch 512 /
  lr 0.2 — except CRD and CRD+KD at batch 256 / lr 0.1 (mdistiller's crd.yaml). Method
  settings: KD T 1, CE 0.5, KD 0.5; DKD α 1, β 0.5 (R34→R18) / 2.0 (R50→MV1), T 1, warm-up 1
  epoch, CE 1; CRD weight 0.8, CE 1, d 128, K 16384, T 0.07, momentum 0.5 (CRD+KD adds KD
  with T 1 and weight 1 — mdistiller has no CRD+KD ImageNet config: this benchmark's CRD+KD
  with the ImageNet KD temperature); CKD CL 10, τ 1, CE 1.
- ``paper``: the same, except CKD with the official CKD code's ImageNet schedule
  (``configs/imagenet/*/ckd.yaml``): 200 epochs, cosine to 0 stepped per epoch, batch 512,
  lr 0.2, SGD momentum 0.9, wd 1e-4.

FitNet has no ImageNet recipe in the references (mdistiller's FitNet is CIFAR-only). It
is offered with this suite's choice, stated in its recipe notes: hint = the stride-8 stage
of both networks (ResNet ``layer2``; MobileNetV1 ``model.5``), regressor as on CIFAR
(28x28 on both sides: a 1x1 conv + BN + ReLU), CE 1 and hint weight 100.
"""

from __future__ import annotations

from typing import Any

from benchmark.errors import UsageError

from . import register_suite
from .base import Pair, ResolvedRecipe, Schedule, Suite

PAIRS = (
    Pair("resnet34_in1k", "resnet18_in1k"),
    Pair("resnet50_in1k", "mobilenetv1_in1k"),
)

# torchvision's ImageNet V1 weight files, the teachers of the CRD / DKD ImageNet tables
# (ResNet34 73.31 %, ResNet50 76.13 % top-1). ResNet50's default in torchvision is V2
# (80.86 %, resnet50-11ad3fa6.pth): a different, stronger teacher, deliberately not accepted.
TORCHVISION_V1_FILES = {"resnet34_in1k": "resnet34-b627a593.pth", "resnet50_in1k": "resnet50-0676ba61.pth"}


def imagenet_teacher_files(name: str) -> tuple[str, ...]:
    return (f"{name}.pth",) + ((TORCHVISION_V1_FILES[name],) if name in TORCHVISION_V1_FILES else ())


EPOCHS = 100
MILESTONES = (30, 60, 90)  # x0.1 from epochs 31, 61, 91 (mdistiller LR_DECAY_STAGES [30, 60, 90])
BATCH_SIZE, LR = 512, 0.2
CRD_BATCH_SIZE, CRD_LR = 256, 0.1  # mdistiller configs/imagenet/*/crd.yaml
WEIGHT_DECAY = 1e-4

# mdistiller configs/imagenet/<pair>/dkd.yaml, DKD.BETA.
DKD_BETA = {
    "resnet34_in1k-resnet18_in1k": 0.5,
    "resnet50_in1k-mobilenetv1_in1k": 2.0,
}

# Per method: the method's arguments in this suite (mdistiller's ImageNet configs and
# CFG defaults; names as in methods/*.py).
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "ce": {},
    "kd": {"temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5},
    "dkd": {"alpha": 1.0, "temperature": 1.0, "warmup": 1, "ce_weight": 1.0},  # + beta per pair
    "crd": {"crd_weight": 0.8, "ce_weight": 1.0, "feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "nce_m": 0.5},
    "crd_kd": {
        "crd_weight": 0.8,
        "ce_weight": 1.0,
        "kd_weight": 1.0,
        "temperature": 1.0,
        "feat_dim": 128,
        "nce_k": 16384,
        "nce_t": 0.07,
        "nce_m": 0.5,
    },
    "ckd": {"cl_weight": 10.0, "temperature": 1.0, "ce_weight": 1.0},
    "fitnet": {"hint_weight": 100.0, "ce_weight": 1.0},
}

FITNET_NOTES = (
    "not a reference recipe: FitNet has no ImageNet configuration in the references "
    "(mdistiller runs FitNet on CIFAR-100 only)",
    "FitNet on ImageNet (this suite's choice): hint = the stride-8 stage output of both networks "
    "(ResNet layer2; MobileNetV1 model.5, 256x28x28), regressor as on CIFAR (28x28 on both sides: "
    "1x1 conv + BN + ReLU to the teacher's channels), CE 1, hint weight 100 as on CIFAR "
    "(RepDistiller's FitNet weight, kept so the method is the same one in every suite; "
    "untuned for ImageNet)",
)

CKD_PAPER_EPOCHS = 200


def standard_schedule(method: str) -> Schedule:
    if method in ("crd", "crd_kd"):
        batch_size, lr = CRD_BATCH_SIZE, CRD_LR
    else:
        batch_size, lr = BATCH_SIZE, LR
    return Schedule(
        epochs=EPOCHS,
        batch_size=batch_size,
        lr=lr,
        momentum=0.9,
        weight_decay=WEIGHT_DECAY,
        kind="step",
        milestones=MILESTONES,
    )


def method_config(pair: Pair, method: str, method_cfg: dict[str, Any]) -> dict[str, Any]:
    """The method's registry config: this suite's settings, then the suite's method defaults.

    A registered method without ImageNet settings is refused rather than run with its CIFAR
    defaults (their temperature, weights and negatives were tuned for CIFAR-100).
    """
    if method not in METHOD_SETTINGS:
        raise UsageError(
            f"method {method} has no ImageNet settings in this suite (loss weights, temperature, "
            f"schedule); suite imagenet runs: {', '.join(METHOD_SETTINGS)}"
        )
    settings = dict(METHOD_SETTINGS[method])
    if method == "dkd":
        if pair.name not in DKD_BETA:
            raise KeyError(f"suite 'imagenet' has no DKD beta for pair {pair.name!r}; its pairs: {', '.join(DKD_BETA)}")
        settings["beta"] = DKD_BETA[pair.name]
    return {"type": method, **settings, **method_cfg}


def _notes(method: str) -> tuple[str, ...]:
    if method == "fitnet":
        return FITNET_NOTES
    if method == "crd_kd":
        return (
            "no CRD+KD ImageNet config in mdistiller: CRD's settings and schedule plus KD at the "
            "ImageNet temperature 1, weight 1",
        )
    return ()


def unified(pair: Pair, method: str, method_cfg: dict[str, Any]) -> ResolvedRecipe:
    return ResolvedRecipe("unified", standard_schedule(method), method_config(pair, method, method_cfg), _notes(method))


def paper(pair: Pair, method: str, method_cfg: dict[str, Any]) -> ResolvedRecipe:
    schedule, notes = standard_schedule(method), _notes(method)
    if method == "ckd":
        schedule = Schedule(
            epochs=CKD_PAPER_EPOCHS,
            batch_size=BATCH_SIZE,
            lr=LR,
            momentum=0.9,
            weight_decay=WEIGHT_DECAY,
            kind="cosine",
        )
        notes = (
            "official CKD code configs/imagenet/<pair>/ckd.yaml: 200 epochs, cosine to 0 stepped per epoch, "
            "SGD momentum 0.9, wd 1e-4, batch 512, lr 0.2, CL weight 10, tau 1, CE weight 1",
        )
    return ResolvedRecipe("paper", schedule, method_config(pair, method, method_cfg), notes)


SUITE = register_suite(
    Suite(
        name="imagenet",
        num_classes=1000,
        pairs=PAIRS,
        recipes={"unified": unified, "paper": paper},
        dataset_base="imagenet",
        teacher_files=imagenet_teacher_files,
        teachers_in_torch_hub=True,
        trains_missing_teachers=False,
        description="ImageNet-1k, 2 standard pairs (ResNet34→ResNet18, ResNet50→MobileNetV1)",
    )
)
