"""The coco suite on MMDetection 3.3: distillation of Faster R-CNN detectors through the real runner.

The training tests run the real runner (``benchmark.train.execute``: MMEngine's Runner, the
suite's MMDetection config, CocoMetric) for 2 iterations and one validation, with the tiny
teacher/student Faster R-CNNs and data of tests/coco_tiny.py, so that they take seconds on a
CPU: every distillation method, a resume, the student alone and a missing teacher, a teacher's
evaluation, the repository's configs through MMEngine's Runner, CKD's contrast groups and the
MobileNetV2 student's backbone.
"""

from __future__ import annotations

import os

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.registry import DefaultScope

from benchmark.store.records import SCHEMA_VERSION, RunRecord, read_record
from tests.coco_tiny import (  # noqa: F401  (tiny: the module-scoped fixture)
    BATCH,
    CONFIGS,
    PROBLEM,
    ROIS_PER_IMAGE,
    needs_mmdet,
    tiny,
    tiny_spec,
)

# MMEngine resolves ``mmdet::`` paths through pkg_resources (setuptools < 81), which warns on each import.
pytestmark = pytest.mark.filterwarnings("ignore:pkg_resources is deprecated as an API:UserWarning")


# --------------------------------------------------------------------------- the detection stack


def test_the_detection_stack_is_installed():
    """In CI (and wherever benchmark/tools/install_detection.py ran) the stack must import."""
    if PROBLEM is not None and not os.environ.get("CI"):
        pytest.skip(f"fallback outside CI only: {PROBLEM}")
    assert PROBLEM is None, PROBLEM


class Probe(Hook):
    """Watches the teacher during training: its state, its mode, and the RoIs it scores."""

    priority = "LOWEST"

    def __init__(self) -> None:
        self.student_rois, self.teacher_rois, self.teacher_modes, self.groups = [], [], [], []

    def before_train(self, runner) -> None:
        model = runner.model
        self.model = model
        self.before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
        student_head, teacher_head = model.student.roi_head, model.teacher.roi_head
        student_loss, teacher_forward = student_head.bbox_loss, teacher_head._bbox_forward

        def keep_student(x, sampling_results):
            out = student_loss(x, sampling_results)
            self.student_rois.append(
                (
                    student_head.sampled.rois.detach().clone(),
                    student_head.sampled.labels.clone(),
                    [len(r.pos_priors) for r in sampling_results],
                )
            )
            return out

        def keep_teacher(x, rois):
            self.teacher_rois.append(rois.detach().clone())
            return teacher_forward(x, rois)

        student_head.bbox_loss, teacher_head._bbox_forward = keep_student, keep_teacher
        if model.method is not None:
            method_forward = model.method.forward

            def keep_groups(step):
                self.groups.append(step.groups)
                return method_forward(step)

            model.method.forward = keep_groups

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        teacher = runner.model.teacher
        self.teacher_modes.append(
            not any(m.training for m in teacher.modules()) and not any(p.requires_grad for p in teacher.parameters())
        )

    def after_train(self, runner) -> None:
        self.after = {k: v.clone() for k, v in runner.model.teacher.state_dict().items()}


TERMS = {"kd": "loss_kd", "dkd": "loss_dkd", "ckd": "loss_ckd", "fitnet": "loss_hint"}
MMDET_LOSSES = ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox")


@needs_mmdet
@pytest.mark.parametrize("method", ["kd", "dkd", "ckd", "fitnet"])
def test_distillation_trains_through_the_runner(method, tiny, tmp_path):  # noqa: F811
    from benchmark.detection.model import read_mmdet_checkpoint
    from benchmark.train import STUDENT_EXPORT, execute, new_record

    torch.set_num_threads(1)
    # CKD with its contrast in groups of one image's RoIs (the paper recipe's contrast_rois, scaled down).
    spec = tiny_spec(tiny, method, tmp_path / method, **({"contrast_rois": ROIS_PER_IMAGE} if method == "ckd" else {}))
    probe = Probe()
    record = execute(spec, 4, new_record(spec), resume=False, hooks=[probe])
    assert record.status == "completed", record.failure
    # 2 iterations of 2 images, then one validation with MMDetection's CocoMetric.
    assert len(probe.teacher_modes) == 2 and all(probe.teacher_modes)
    assert [p.epoch for p in record.curve] == [1]
    assert record.metric_names == ["mAP", "AP50", "AP75", "APs", "APm", "APl"]
    point = record.curve[0]
    assert point.top1 is None and set(point.metrics) == set(record.metric_names)
    assert all(v is None or 0.0 <= v <= 100.0 for v in point.metrics.values()) and point.metrics["mAP"] is not None
    assert record.best_epoch == 1 and record.last_value("AP50") == point.metrics["AP50"]
    # The teacher: parameters and BN buffers untouched, eval mode, no gradients.
    assert probe.before.keys() == probe.after.keys()
    assert any("running_mean" in k for k in probe.before)
    for key, value in probe.before.items():
        assert torch.equal(value, probe.after[key]), key
    # The teacher scored exactly the student's sampled RoIs (all images of the batch).
    if method != "fitnet":
        assert len(probe.teacher_rois) == len(probe.student_rois) == 2
        for (rois, labels, positives), teacher_rois in zip(probe.student_rois, probe.teacher_rois):
            assert torch.equal(rois, teacher_rois)
            assert rois.shape == (BATCH * ROIS_PER_IMAGE, 5) and set(rois[:, 0].tolist()) == {0.0, 1.0}
            assert labels.shape == (BATCH * ROIS_PER_IMAGE,) and int((labels < 80).sum()) == sum(positives)
    else:
        assert probe.teacher_rois == []  # FitNet needs the teacher's FPN only
    # CKD's contrast groups: the RoIs of each whole image; the other methods see one group of all RoIs.
    expected_groups = {"ckd": [(ROIS_PER_IMAGE,) * BATCH] * 2, "fitnet": []}.get(method, [None] * 2)
    assert probe.groups == expected_groups
    # Every distillation term is logged beside MMDetection's own losses.
    scalars = next((tmp_path / method / "mmengine").glob("*/vis_data/scalars.json")).read_text()
    for term in MMDET_LOSSES + (TERMS[method],):
        assert f'"{term}"' in scalars, term
    assert '"loss_ce"' not in scalars  # the student's CE is MMDetection's loss_cls, not a second term
    assert '"coco/bbox_mAP"' in scalars
    # The record on disk, the exported student (an MMDetection checkpoint), the timings.
    on_disk = read_record(tmp_path / method / "record.json")
    assert (
        on_disk.schema_version == SCHEMA_VERSION and on_disk.curve == record.curve and on_disk.env["mmdet"] == "3.3.0"
    )
    assert on_disk.extra["teacher_file"] == "tiny_t.pth"
    state = read_mmdet_checkpoint(tmp_path / method / STUDENT_EXPORT)
    assert not any(k.startswith("teacher.") for k in state) and "roi_head.bbox_head.fc_cls.weight" in state
    assert record.runtime["teacher_forward_ms"] > 0 and record.images_per_s > 0
    # Training checkpoints leave the teacher out (it is reloaded from its own file).
    checkpoint = torch.load(
        next((tmp_path / method / "mmengine").glob("epoch_*.pth")), map_location="cpu", weights_only=False
    )
    assert not any(k.startswith("teacher.") for k in checkpoint["state_dict"])
    assert any(k.startswith("student.") for k in checkpoint["state_dict"])


class Interrupt(Hook):
    priority = "LOWEST"

    def before_train_epoch(self, runner) -> None:
        if runner.epoch == 1:
            raise KeyboardInterrupt


@needs_mmdet
def test_resume_leaves_the_record_of_an_uninterrupted_run(tiny, tmp_path):  # noqa: F811
    from benchmark.train import execute, new_record

    torch.set_num_threads(1)

    def summary(record):
        return (
            [(p.epoch, p.metrics, p.loss) for p in record.curve],
            record.last_metrics,
            record.best_metrics,
            record.best_epoch,
        )

    straight = tiny_spec(tiny, "dkd", tmp_path / "straight", epochs=2)
    whole = execute(straight, 4, new_record(straight), resume=False)
    assert whole.status == "completed", whole.failure
    spec = tiny_spec(tiny, "dkd", tmp_path / "cut", epochs=2)
    with pytest.raises(KeyboardInterrupt):
        execute(spec, 4, new_record(spec), resume=False, hooks=[Interrupt()])
    interrupted = read_record(tmp_path / "cut" / "record.json")
    assert interrupted.status == "running" and [p.epoch for p in interrupted.curve] == [1]
    resumed = execute(spec, 4, interrupted, resume=True)
    assert resumed.status == "completed" and resumed.extra["attempts"] == 2
    assert summary(resumed) == summary(whole)


@needs_mmdet
def test_student_alone_and_a_missing_teacher(tiny, tmp_path):  # noqa: F811
    from benchmark.store.checkpoints import CheckpointError
    from benchmark.train import build_config, execute, new_record

    torch.set_num_threads(1)
    spec = tiny_spec(tiny, "ce", tmp_path / "ce")
    record = execute(spec, 4, new_record(spec), resume=False)
    assert record.status == "completed" and record.runtime["teacher_forward_ms"] == 0
    cfg = build_config(tiny_spec(tiny, "kd", tmp_path / "kd"), 4)
    assert cfg.model.type == "DistillationDetector" and cfg.model.distill["type"] == "kd"
    assert cfg.val_evaluator.type == "CocoMetric" and cfg.train_dataloader.batch_size == BATCH
    # The paper recipe's form: lr steps in iterations after a 1000-iteration warm-up, multi-scale training.
    paper = tiny_spec(tiny, "dkd", tmp_path / "paper")
    paper.recipe.schedule.milestone_iters, paper.recipe.schedule.short_sides = (120_000, 160_000), (64, 80, 96)
    paper.recipe.schedule.warmup_iters = 1000
    cfg = build_config(paper, 4)
    assert cfg.param_scheduler == [
        dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=1000),
        dict(type="MultiStepLR", by_epoch=False, begin=0, milestones=[120_000, 160_000], gamma=0.1),
    ]
    resize = [t for t in cfg.train_dataloader.dataset.pipeline if "Resize" in t["type"]]
    assert resize == [dict(type="RandomChoiceResize", scales=[(128, 64), (128, 80), (128, 96)], keep_ratio=True)]
    broken = tiny_spec(tiny, "kd", tmp_path / "broken")
    broken.teacher_checkpoint = str(tmp_path / "absent.pth")
    with pytest.raises(CheckpointError, match="teacher checkpoint not found"):
        execute(broken, 4, new_record(broken), resume=False)


@needs_mmdet
def test_a_teacher_checkpoint_is_evaluated_with_the_coco_metric(tiny):  # noqa: F811
    """What the teacher stage records for a teacher given with --teachers (suite.evaluate_teacher)."""
    torch.set_num_threads(1)
    values = tiny["suite"].evaluate_teacher("tiny_t", tiny["checkpoint"], str(tiny["data"]), "cpu", num_workers=0)
    assert set(values) == {"mAP", "AP50", "AP75", "APs", "APm", "APl"} and values["mAP"] is not None
    record = RunRecord(
        suite="coco_tiny",
        pair="tiny_t-tiny_t",
        teacher="tiny_t",
        student="tiny_t",
        method="teacher",
        recipe="unified",
        recipe_hash="x",
        seed=0,
        epochs=1,
        batch_size=2,
        lr=0.01,
        metric_names=list(values),
        status="completed",
        extra={"source": "community checkpoint tiny_t.pth"},
    )
    record.record_evaluation(values)
    assert RunRecord.from_dict(record.to_dict()).last_value() == values["mAP"]


@needs_mmdet
def test_config_files_in_the_repo_build_with_mmengines_runner(tiny, tmp_path):  # noqa: F811
    """Every config parses; one pair config builds with Runner.from_cfg (MMDetection's own way)."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.runner import Runner

    from benchmark.detection.model import DistillationDetector, TruncatedMobileNetV2, model_config
    from methods.dkd import DKD

    files = sorted(p for p in CONFIGS.rglob("*.py") if "_base_" not in p.parts)
    assert len(files) == 2 + 3 * 5
    for path in files:
        cfg = Config.fromfile(path)
        if cfg.model.type == "DistillationDetector":
            assert model_config(cfg.model.student)["type"] == "FasterRCNN"
            assert model_config(cfg.model.teacher)["backbone"]["depth"] in (50, 101)
    cfg = Config.fromfile(CONFIGS / "dkd" / "faster-rcnn_r50-mobilenetv2_fpn_dkd_1x_coco.py")
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope("mmdet"):
        teacher = MODELS.build(model_config(cfg.model.teacher))
    checkpoint = tmp_path / "faster_rcnn_r50_fpn_1x_coco.pth"
    torch.save({"state_dict": teacher.state_dict(), "meta": {}}, checkpoint)
    del teacher
    cfg.model.teacher_checkpoint = str(checkpoint)
    cfg.work_dir = str(tmp_path / "work")
    runner = Runner.from_cfg(cfg)
    model = runner.model
    assert isinstance(model, DistillationDetector) and isinstance(model.method, DKD)
    assert (model.method.alpha, model.method.beta, model.method.temperature, model.method.warmup) == (1.0, 0.25, 1.0, 1)
    assert isinstance(model.student.backbone, TruncatedMobileNetV2) and not hasattr(model.student.backbone, "conv2")
    assert list(model.student.neck.in_channels) == [24, 32, 96, 320]
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert model.student.roi_head.train_cfg.sampler.num == 512 and model.student.roi_head.bbox_head.num_classes == 80


@needs_mmdet
def test_contrast_groups_are_whole_images(tiny, tmp_path):  # noqa: F811
    from mmdet.registry import MODELS

    from benchmark.train import build_config

    cfg = build_config(tiny_spec(tiny, "ckd", tmp_path, contrast_rois=2 * ROIS_PER_IMAGE), 4)
    model = MODELS.build(cfg.model)
    assert model.contrast_images == 2
    # 5 images (RoIs per image as the sampler drew them: one image came short): groups of 2, 2 and 1 images.
    image_of_roi = torch.tensor([0] * 32 + [1] * 30 + [2] * 32 + [3] * 32 + [4] * 32, dtype=torch.float32)
    rois = torch.cat([image_of_roi[:, None], torch.rand(len(image_of_roi), 4)], dim=1)
    assert model.contrast_groups(rois, 5) == (62, 64, 32)
    model.contrast_images = None  # contrast_rois None: one contrast over all RoIs
    assert model.contrast_groups(rois, 5) is None
    for distill, message in (
        ({**cfg.model.distill, "contrast_rois": 48}, "not a positive multiple of the 32 RoIs sampled"),
        ({"type": "dkd", "contrast_rois": 64}, "contrast_rois is a setting of CKD"),
    ):
        with pytest.raises(ValueError, match=message):  # refused before the teacher is built
            MODELS.build({**cfg.model, "distill": distill})


@needs_mmdet
def test_mobilenetv2_student_freezes_nothing_as_the_dkd_reference(tiny):  # noqa: F811
    """DKD-MV2-R50.yaml: FREEZE_AT 0. Every backbone parameter trains; BN keeps frozen statistics (norm_eval),
    its affine trainable (MMDetection's norm_cfg requires_grad=True)."""
    from mmdet.registry import MODELS

    from benchmark.detection.model import model_config
    from benchmark.suites.coco import NETWORKS

    cfg = model_config(dict(cfg_path=NETWORKS["frcnn_mobilenetv2"]))
    backbone_cfg = dict(cfg["backbone"], init_cfg=None)
    with DefaultScope.overwrite_default_scope("mmdet"):
        backbone = MODELS.build(backbone_cfg).train()
    assert backbone.frozen_stages == -1
    frozen = [name for name, p in backbone.named_parameters() if not p.requires_grad]
    assert frozen == []
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)  # norm_eval: running statistics stay frozen
    assert all(m.training for m in backbone.conv1.modules() if not isinstance(m, torch.nn.BatchNorm2d))  # stem trains


@needs_mmdet
def test_mobilenetv2_reads_torchvision_weights(tiny):  # noqa: F811
    import torchvision

    from benchmark.detection.model import TruncatedMobileNetV2

    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v2().eval()
    with torch.no_grad():  # non-trivial BN statistics
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    ours = TruncatedMobileNetV2(out_indices=(1, 2, 4, 6)).eval()  # returns itself (MMDetection's does not)
    result = ours.load_state_dict(reference.state_dict(), strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs = ours(x)
        expected = reference.features[:18](x)  # features[17]: the 320-channel stage
    assert [o.shape[1] for o in outs] == [24, 32, 96, 320]
    assert torch.allclose(outs[-1], expected, atol=1e-5)
