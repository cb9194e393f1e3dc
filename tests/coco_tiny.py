"""The tiny COCO of the coco suite's training tests: generated data, tiny Faster R-CNNs, a teacher checkpoint.

Tiny teacher/student Faster R-CNNs (ResNet-18 layouts at 1/8 width, 96-pixel images, 32 sampled
RoIs per image) built from this repository's R-18 config, so that a run through the real runner
takes seconds on a CPU. The module-scoped fixture :func:`tiny` and :func:`tiny_spec` serve
tests/test_coco_training.py, tests/test_coco_options.py and tests/test_coco_ddp.py;
``needs_mmdet`` skips a test where the detection stack is missing (outside CI only).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from mmengine.registry import DefaultScope

from benchmark.detection import detection_stack_problem
from benchmark.suites import Pair, ResolvedRecipe
from tests.datagen_coco import write_tiny_coco

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "benchmark" / "configs" / "coco"
PROBLEM = detection_stack_problem()
needs_mmdet = pytest.mark.skipif(
    PROBLEM is not None and not os.environ.get("CI"), reason=f"fallback outside CI only: {PROBLEM}"
)
PAIR = Pair("tiny_t", "tiny_s")
ROIS_PER_IMAGE = 32
BATCH = 2


TINY = """\
_base_ = '{base}'
model = dict(
    backbone=dict(base_channels={width}, init_cfg=None),
    neck=dict(in_channels=[{width}, {w2}, {w4}, {w8}], out_channels=16),
    rpn_head=dict(in_channels=16, feat_channels=16),
    roi_head=dict(bbox_roi_extractor=dict(out_channels=16),
                  bbox_head=dict(in_channels=16, fc_out_channels=32)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=200, max_per_img=100),
                   rcnn=dict(sampler=dict(num={rois}))),
    test_cfg=dict(rpn=dict(nms_pre=100, max_per_img=50), rcnn=dict(score_thr=0.0, max_per_img=20)))
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny data, networks, teacher checkpoint and a suite holding them."""
    if PROBLEM is not None and not os.environ.get("CI"):
        pytest.skip(f"fallback outside CI only: {PROBLEM}")
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    from benchmark.suites.coco import DetectionSuite, unified

    register_all_modules(init_default_scope=False)
    root = tmp_path_factory.mktemp("coco")
    data = write_tiny_coco(root / "data", n_train=4, n_val=2)
    base = CONFIGS / "faster-rcnn_r18_fpn_1x_coco.py"
    networks = {}
    for name, width in (("tiny_t", 16), ("tiny_s", 8)):
        path = root / f"{name}.py"
        path.write_text(
            TINY.format(
                base=base.as_posix(), width=width, w2=2 * width, w4=4 * width, w8=8 * width, rois=ROIS_PER_IMAGE
            )
        )
        networks[name] = str(path)
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope("mmdet"):
        teacher = MODELS.build(Config.fromfile(networks["tiny_t"]).model)
    teacher.init_weights()
    checkpoint = root / "teachers" / "tiny_t.pth"
    checkpoint.parent.mkdir()
    torch.save({"state_dict": teacher.state_dict(), "meta": {"note": "tiny test teacher"}}, checkpoint)
    suite = DetectionSuite(
        name="coco_tiny",
        num_classes=80,
        pairs=(PAIR,),
        recipes={"unified": unified},
        dataset_base="unused",
        networks=networks,
    )
    return {"data": data, "networks": networks, "checkpoint": checkpoint, "suite": suite}


def tiny_spec(tiny, method: str, run_dir: Path, epochs: int = 1, **method_cfg):
    from benchmark.suites.coco import METHOD_SETTINGS, DetectionSchedule
    from benchmark.train import RunSpec

    schedule = DetectionSchedule(
        epochs=epochs,
        batch_size=BATCH,
        lr=0.01,
        momentum=0.9,
        weight_decay=1e-4,
        kind="step",
        milestones=(max(1, epochs - 1),),
        warmup_iters=1,
        short_sides=(96,),
        max_size=128,
        test_short_side=96,
    )
    recipe = ResolvedRecipe("unified", schedule, {"type": method, **METHOD_SETTINGS[method], **method_cfg})
    return RunSpec(
        suite=tiny["suite"],
        pair=PAIR,
        method=method,
        recipe=recipe,
        seed=0,
        run_dir=run_dir,
        data_root=str(tiny["data"]),
        teacher_checkpoint=None if method == "ce" else str(tiny["checkpoint"]),
        teacher_checkpoint_sha256=None if method == "ce" else "test",
        num_workers=0,
    )
