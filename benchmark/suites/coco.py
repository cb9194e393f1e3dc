"""coco: COCO 2017 object detection — Faster R-CNN FPN students distilled from Faster R-CNN FPN teachers.

Pairs (teacher → student, the DKD / CKD / ReviewKD detection pairs): R-101 → R-18, R-101 → R-50,
R-50 → MobileNetV2. Networks are MMDetection 3.3 configs: MMDetection's own R-50 / R-101 1x
configs, and this repository's R-18 and MobileNetV2 1x configs (``benchmark/configs/coco``; MMDetection
has none). Teachers: MMDetection model-zoo checkpoints (``--teachers DIR``: ``<name>.pth`` or the
zoo's file name, e.g. ``faster_rcnn_r101_fpn_1x_coco_20200130-f513f705.pth``); the DKD paper's
teachers were Detectron2 models, which do not load here, so no Δ against its detection numbers
is offered. A teacher is trained by the suite (MMDetection's 1x recipe) only with
``--train-teachers``. Students start from torchvision's ImageNet weights (``torchvision://<name>``, read from
torch's hub cache as MMDetection does).

Methods on the RoI classification logits of the student's sampled RoIs (the same pure loss
functions as for classification): KD (T 1, weight 1 — no reference config exists for plain KD on
RoI logits), DKD (α 1, β 0.25, T 1, no warm-up: mdistiller ``detection/model/config.py``), CKD
(weight 0.1, τ 1: the official CKD code's ``detection/``, where CKD is only released combined with
ReviewKD — here CKD alone; contrast size ``contrast_rois``, see the recipes); FitNet on
the FPN outputs (one 1×1-conv regressor per level, MSE, weight 1: this suite's choice). CRD is
not defined for detection in any reference: ``--methods crd`` stops with one line.

Recipes:
- ``unified`` (default): MMDetection's 1x schedule — 12 epochs, SGD momentum 0.9, wd 1e-4,
  lr 0.02 at 16 images per batch (linear rule for another batch: ``--batch-sizes``), ×0.1 at
  epochs 8 and 11, linear warm-up over 500 iterations from 0.001, single scale 1333×800.
  CKD contrasts all sampled RoIs of the batch (``contrast_rois`` None): 16 × 512 = 8,192 on one
  process; under ``--nproc`` all ranks' RoIs with ``--ckd-contrast global`` (the default: the same
  contrast as one process), each process's own with ``local``.
- ``paper``: mdistiller's DKD detection schedule (Detectron2) translated to MMDetection —
  8 images per batch, lr 0.01, 180k iterations with ×0.1 at iterations 120k and 160k, linear
  warm-up over 1000 iterations from 0.001, multi-scale training short side 640–800 (step 32,
  max 1333), test 800. 180k iterations of 8 images are 12.28 epochs of train2017 (117,266
  images with boxes); the run is 12 epochs (≈175.9k iterations, −2.3 %) so that every epoch is
  validated and checkpointed like every run of this benchmark; the lr steps stay at 120k/160k.
  CKD contrasts groups of 1,024 RoIs (``contrast_rois``: 2 whole images × 512 RoIs), the RoIs
  of one GPU in the references' runs: the official CKD ``detection/model/rcnn.py`` computes its
  InfoNCE over one GPU's sampled proposals, and the detection code it builds on (ReviewKD,
  mdistiller) trains 8 images on 4 GPUs (2 per GPU); CKD's own configs (IMS_PER_BATCH 8) name
  2 GPUs in a comment, i.e. 2,048. Groups are per process and nothing is gathered, so the
  contrast is the same on 1 or N processes (as long as N divides the batch into whole groups).

Metrics: MMDetection's CocoMetric (bbox) on val2017 after every epoch: mAP, AP50, AP75, APs,
APm, APl (percent); the best epoch is chosen by mAP; the tables show AP / AP50 / AP75.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmark.errors import UsageError
from benchmark.store.records import Metric
from methods import METHODS as REGISTERED

from . import register_suite
from .base import Pair, ResolvedRecipe, Schedule, Suite

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "coco"

# Network name -> its MMDetection config (a Faster R-CNN FPN 1x config on COCO 2017).
NETWORKS = {
    "frcnn_r101": "mmdet::faster_rcnn/faster-rcnn_r101_fpn_1x_coco.py",
    "frcnn_r50": "mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py",
    "frcnn_r18": str(CONFIGS / "faster-rcnn_r18_fpn_1x_coco.py"),
    "frcnn_mobilenetv2": str(CONFIGS / "faster-rcnn_mobilenetv2_fpn_1x_coco.py"),
}
# The MMDetection model-zoo checkpoints of the teachers (box AP on val2017 in the zoo: 39.4, 37.4).
TEACHER_FILES = {
    "frcnn_r101": "faster_rcnn_r101_fpn_1x_coco_20200130-f513f705.pth",
    "frcnn_r50": "faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth",
}
PAIRS = (
    Pair("frcnn_r101", "frcnn_r18"),
    Pair("frcnn_r101", "frcnn_r50"),
    Pair("frcnn_r50", "frcnn_mobilenetv2"),
)
METHODS = ("ce", "kd", "dkd", "ckd", "fitnet")

METRICS = tuple(
    Metric(name, f"coco/bbox_{key}", scale=100.0, undefined_below=0.0, when_absent=0.0)
    for name, key in (
        ("mAP", "mAP"),
        ("AP50", "mAP_50"),
        ("AP75", "mAP_75"),
        ("APs", "mAP_s"),
        ("APm", "mAP_m"),
        ("APl", "mAP_l"),
    )
)
TABLE_METRICS = ("mAP", "AP50", "AP75")

METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "ce": {},
    "kd": {"temperature": 1.0, "kd_weight": 1.0},
    "dkd": {"alpha": 1.0, "beta": 0.25, "temperature": 1.0, "warmup": 1},
    # contrast_rois None: one contrast over all RoIs (of all ranks under DDP with --ckd-contrast global).
    "ckd": {"temperature": 1.0, "cl_weight": 0.1, "contrast_rois": None},
    "fitnet": {"hint_weight": 1.0},
}
# The paper recipe's CKD contrast: 2 images x 512 RoIs, the RoIs of one GPU in the references' runs.
PAPER_CONTRAST_ROIS = 1024
PAPER_METHOD_SETTINGS: dict[str, dict[str, Any]] = {"ckd": {"contrast_rois": PAPER_CONTRAST_ROIS}}
COMMON_NOTES = (
    "student: a plain MMDetection Faster R-CNN (all of its losses; its RoI cross-entropy loss_cls is the CE "
    "of the method, whose own CE term is off)",
    "RoI methods: on the 81-column RoI classification logits (80 classes + background) of the student's "
    "sampled RoIs (512 per image, 25 % foreground, ground truth added), scored by the teacher's RoI head "
    "on the teacher's features of the same batch",
)
METHOD_NOTES = {
    "kd": ("KD: T 1, weight 1 — no reference config exists for plain KD on RoI logits (this suite's choice)",),
    "dkd": ("DKD: alpha 1, beta 0.25, T 1, no warm-up (mdistiller detection/model/config.py)",),
    "ckd": (
        "CKD: weight 0.1, tau 1 (official CKD code, detection/; released there only combined with ReviewKD "
        "— here CKD alone)",
    ),
    "fitnet": (
        "FitNet: hints on the 5 FPN outputs, one 1x1-conv regressor per level, MSE averaged over levels, "
        "weight 1 — no reference config for FitNet on FPN (this suite's choice: the unscaled MSE, untuned)",
    ),
}
# How each recipe sizes the CKD contrast (recorded in the recipe as contrast_rois).
CONTRAST_NOTES = {
    "unified": "CKD contrast over all sampled RoIs of the batch (contrast_rois None: 16 x 512 = 8,192 on one "
    "process; under --nproc all ranks' RoIs, gathered with their gradient, with --ckd-contrast global, "
    "each process's own with local)",
    "paper": f"CKD contrast within groups of {PAPER_CONTRAST_ROIS} RoIs (contrast_rois: 2 whole images x 512 RoIs, "
    "InfoNCE per group, averaged), the RoIs of one GPU in the references' runs (official CKD "
    "detection/model/rcnn.py: the InfoNCE over one GPU's proposals; ReviewKD / mdistiller: 8 images on "
    "4 GPUs; CKD's own configs name 2 GPUs, i.e. 2,048); groups are per process, nothing is gathered "
    "(--ckd-contrast does not apply)",
}
PAPER_NOTES = (
    "paper recipe: mdistiller's DKD detection schedule (Detectron2: 8 images per batch, lr 0.01, 180k iterations, "
    "x0.1 at 120k and 160k, 1000 warm-up iterations, short side 640-800) in MMDetection; run as 12 epochs "
    "(about 175.9k iterations of train2017's 117,266 images with boxes, -2.3 %) with the lr steps at iterations "
    "120k/160k; MMDetection's model definitions kept (trainable BN affine, frozen BN statistics; Detectron2 "
    "uses FrozenBN and no weight decay on norm layers)",
)


# The COCO tables' footnote: where this suite differs from the references (DKD / CKD / ReviewKD detection code).
TABLE_NOTES = (
    "Teachers: MMDetection model-zoo Faster R-CNN FPN 1x checkpoints (frcnn_r101: "
    f"{TEACHER_FILES['frcnn_r101']}, box AP 39.4 in the zoo; frcnn_r50: {TEACHER_FILES['frcnn_r50']}, 37.4) "
    "unless the Teacher source row says otherwise. The references' teachers were Detectron2 3x models (R-101 42.0, "
    "R-50 40.2 box AP in Detectron2's zoo; not loadable here): stronger teachers, trained 3x longer, so no Δ "
    "against the DKD paper's detection numbers is offered.",
    "Norm layers: MMDetection's BatchNorm with frozen statistics (norm_eval) and a trainable affine in every "
    "student backbone; the references use Detectron2's FrozenBN (statistics and affine frozen). Frozen stages as "
    "the references: ResNet students stem + stage 1 (Detectron2 FREEZE_AT 2), MobileNetV2 nothing (FREEZE_AT 0).",
    "CKD contrast: unified over all sampled RoIs of the batch (16 x 512; under --nproc all ranks' RoIs with "
    f"--ckd-contrast global); paper within groups of {PAPER_CONTRAST_ROIS} RoIs (2 whole images x 512, per "
    "process, averaged over groups): one GPU's RoIs in the references' 4-GPU x 2-image runs.",
)


@dataclass
class DetectionSchedule(Schedule):
    """A detection schedule: MMDetection's step schedule with its warm-up and image scales."""

    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    milestone_iters: tuple[int, ...] = ()  # lr steps in iterations (instead of ``milestones`` in epochs)
    short_sides: tuple[int, ...] = (800,)  # training short side(s); several = multi-scale (one per image)
    max_size: int = 1333
    test_short_side: int = 800

    def with_epochs(self, epochs: int) -> "DetectionSchedule":
        scaled = tuple(max(1, round(m * epochs / self.epochs)) for m in self.milestones)
        scaled_iters = tuple(max(1, round(m * epochs / self.epochs)) for m in self.milestone_iters)
        return DetectionSchedule(
            **{**asdict(self), "epochs": epochs, "milestones": scaled, "milestone_iters": scaled_iters}
        )

    def with_batch_size(self, batch_size: int) -> "DetectionSchedule":
        return DetectionSchedule(
            **{**asdict(self), "batch_size": batch_size, "lr": self.lr * batch_size / self.batch_size}
        )


def unified_schedule() -> DetectionSchedule:
    return DetectionSchedule(
        epochs=12,
        batch_size=16,
        lr=0.02,
        momentum=0.9,
        weight_decay=1e-4,
        kind="step",
        milestones=(8, 11),
        gamma=0.1,
        warmup_iters=500,
    )


def paper_schedule() -> DetectionSchedule:
    return DetectionSchedule(
        epochs=12,
        batch_size=8,
        lr=0.01,
        momentum=0.9,
        weight_decay=1e-4,
        kind="step",
        milestones=(),
        gamma=0.1,
        warmup_iters=1000,
        milestone_iters=(120_000, 160_000),
        short_sides=(640, 672, 704, 736, 768, 800),
    )


def teacher_files(name: str) -> tuple[str, ...]:
    """A teacher's file under ``--teachers DIR``: ``<name>.pth``, or the model zoo's file name."""
    return (f"{name}.pth",) + ((TEACHER_FILES[name],) if name in TEACHER_FILES else ())


def _method(method: str, method_cfg: dict[str, Any], recipe_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    if method not in METHODS:
        # The method's own word on why (its class's detection_note).
        why = REGISTERED.get(method).detection_note if method in REGISTERED.module_dict else "is not registered"
        raise UsageError(f"method {method} {why}; suite coco runs: {', '.join(METHODS)}")
    return {"type": method, **METHOD_SETTINGS[method], **(recipe_settings or {}).get(method, {}), **method_cfg}


def _notes(method: str, recipe: str) -> tuple[str, ...]:
    notes = (COMMON_NOTES if method != "ce" else COMMON_NOTES[:1]) + METHOD_NOTES.get(method, ())
    return notes + ((CONTRAST_NOTES[recipe],) if method == "ckd" else ())


def unified(pair: Pair, method: str, method_cfg: dict[str, Any]) -> ResolvedRecipe:
    return ResolvedRecipe("unified", unified_schedule(), _method(method, method_cfg), _notes(method, "unified"))


def paper(pair: Pair, method: str, method_cfg: dict[str, Any]) -> ResolvedRecipe:
    return ResolvedRecipe(
        "paper",
        paper_schedule(),
        _method(method, method_cfg, PAPER_METHOD_SETTINGS),
        _notes(method, "paper") + PAPER_NOTES,
    )


@dataclass
class DetectionSuite(Suite):
    """A suite whose runs are MMDetection detectors; the runner and the sweep use these hooks."""

    networks: dict[str, str] = field(default_factory=dict)  # network name -> MMDetection config file
    methods: tuple[str, ...] = METHODS  # methods this suite defines
    metrics: tuple[Metric, ...] = METRICS  # recorded after every validation; the first picks the best epoch
    table_metrics: tuple[str, ...] = TABLE_METRICS
    metric_title: str = "bbox AP (%) on COCO val2017"
    table_notes: tuple[str, ...] = ()

    def build_config(self, spec, num_data: int | None, check_files: bool = True):
        """The suite's part of a run's MMDetection config (``benchmark.train.build_config`` calls this)."""
        from benchmark.detection.config import build_run_config

        return build_run_config(self, spec, check_files)

    def num_train_samples(self, data_root: str | None) -> int:
        """Checks the COCO 2017 layout (one-line DatasetNotFoundError) and counts the training images."""
        from benchmark.detection.layout import check_layout, count_images

        return count_images(check_layout(data_root), "train")

    def export_student(self, model, path: Path, record) -> Path:
        """The trained student as an MMDetection checkpoint (``{'state_dict', 'meta'}``), atomically."""

        from benchmark.store.atomic import atomic_path
        from benchmark.store.checkpoints import save_deterministic

        meta = {
            "epoch": record.epochs,
            "suite": self.name,
            "network": record.student,
            "metrics": {name: record.last_value(name) for name in record.metric_names},
        }
        with atomic_path(path) as tmp:
            save_deterministic({"state_dict": model.student.state_dict(), "meta": meta}, tmp)
        return Path(path)

    def evaluate_teacher(
        self,
        name: str,
        checkpoint: str | os.PathLike,
        data_root: str | None,
        device: str,
        num_workers: int | None = None,
    ) -> dict[str, float | None]:
        """The teacher checkpoint's metrics on val2017 by record name (MMDetection's test loop, CocoMetric;
        its logs go to a temporary folder)."""
        import tempfile

        from benchmark.detection.evaluate import evaluate_detector

        with tempfile.TemporaryDirectory(prefix="kd-teacher-eval-") as work_dir:
            return evaluate_detector(self, name, checkpoint, data_root, device, work_dir, num_workers)

    def stack_versions(self) -> dict[str, str]:
        versions = {}
        for module in ("mmdet", "mmcv"):
            try:
                versions[module] = __import__(module).__version__
            except Exception:  # noqa: BLE001 - recorded as absent
                versions[module] = "not installed"
        return versions


SUITE = register_suite(
    DetectionSuite(
        name="coco",
        num_classes=80,
        pairs=PAIRS,
        recipes={"unified": unified, "paper": paper},
        # An absolute path: the teacher stage builds the training split from
        # <configs/_base_/datasets>/<dataset_base>.py, which here is the COCO layout check.
        dataset_base=str(CONFIGS / "_base_" / "coco_layout"),
        description="COCO 2017 detection, Faster R-CNN FPN, 3 pairs (R-101→R-18, R-101→R-50, R-50→MobileNetV2), MMDetection 3.3",
        networks=NETWORKS,
        teacher_files=teacher_files,
        # COCO teachers are MMDetection checkpoints; training one (12 epochs of R-101) only with --train-teachers.
        trains_missing_teachers=False,
        table_notes=TABLE_NOTES,
        solo_reason="COCO runs train alone: the teacher's RoI pass runs on each student's own proposals, "
        "so only its backbone/FPN forward could be shared",
    )
)
