"""The coco suite: distillation of Faster R-CNN detectors on MMDetection 3.3, on a tiny generated COCO.

The training tests run the real runner (``benchmark.train.execute``: MMEngine's Runner, the
suite's MMDetection config, CocoMetric) for 2 iterations and one validation, with tiny
teacher/student Faster R-CNNs (ResNet-18 layouts at 1/8 width, 96-pixel images, 32 sampled
RoIs per image) built from this repository's R-18 config, so that they take seconds on a CPU.
The CLI tests need no MMDetection.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from pathlib import Path

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.registry import DefaultScope

from benchmark.detection import detection_stack_problem
from benchmark.store.records import SCHEMA_VERSION, RecordError, RunRecord, read_record
from benchmark.suites import Pair, ResolvedRecipe, get_suite
from tests import forked_cli
from tests.datagen_coco import write_tiny_coco

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "benchmark" / "configs" / "coco"
PROBLEM = detection_stack_problem()
needs_mmdet = pytest.mark.skipif(
    PROBLEM is not None and not os.environ.get("CI"), reason=f"fallback outside CI only: {PROBLEM}"
)
# MMEngine resolves ``mmdet::`` paths through pkg_resources (setuptools < 81), which warns on each import.
pytestmark = pytest.mark.filterwarnings("ignore:pkg_resources is deprecated as an API:UserWarning")
PAIR = Pair("tiny_t", "tiny_s")
ROIS_PER_IMAGE = 32
BATCH = 2


def run_cli(*args: str, cwd: Path = REPO, in_process: bool = True) -> subprocess.CompletedProcess:
    """The CLI's exit code and output: its ``main`` in this process (a new process spends most of its
    time importing torch), or ``in_process=False`` in a process of its own as a user runs it (for the
    one-line error checks; forked with torch and MMEngine imported, ``tests/forked_cli.py``)."""
    if in_process:
        from benchmark.run import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
        return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
    return forked_cli.run_cli(*args, cwd=cwd)


# --------------------------------------------------------------------------- CLI (no MMDetection needed)


def test_dry_run_prints_the_plan(tmp_path):
    out = run_cli("--suite", "coco", "--methods", "kd,dkd,ckd,fitnet", "--dry-run", "--work-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "3 pair(s) x 5 method(s) x 3 seed(s) = 45 run(s)" in out.stdout
    for text in (
        "frcnn_r101-frcnn_r18 dkd seed0",
        "frcnn_r101-frcnn_r50 ckd",
        "frcnn_r50-frcnn_mobilenetv2 fitnet",
        "12 ep, bs 16, lr 0.02",
        "alpha 1, beta 0.25, temperature 1, warmup 1",
        "cl_weight 0.1, contrast_rois None",
    ):
        assert text in out.stdout, text
    paper = run_cli(
        "--suite",
        "coco",
        "--methods",
        "dkd,ckd",
        "--recipe",
        "paper",
        "--dry-run",
        "--seeds",
        "1",
        "--work-dir",
        str(tmp_path),
    )
    assert paper.returncode == 0 and "12 ep, bs 8, lr 0.01" in paper.stdout, paper.stdout + paper.stderr
    assert "cl_weight 0.1, contrast_rois 1024" in paper.stdout


@pytest.mark.parametrize("method", ["crd", "crd_kd"])
def test_crd_is_refused_with_one_line(method, tmp_path):
    out = run_cli("--suite", "coco", "--methods", method, "--dry-run", "--work-dir", str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "not defined for detection" in out.stderr, out.stderr


def test_missing_dataset_stops_with_one_line(tmp_path):
    out = run_cli(
        "--suite",
        "coco",
        "--methods",
        "ce",
        "--no-baseline",
        "--seeds",
        "1",
        "--data-root",
        str(tmp_path / "nowhere"),
        "--work-dir",
        str(tmp_path / "w"),
        "--no-aggregate",
        in_process=False,  # as a user sees it: one line, no traceback
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.count("\n") == 1 and "instances_train2017.json is missing" in out.stderr, out.stderr


def test_recipes():
    from benchmark.suites.coco import METHODS, DetectionSchedule

    suite = get_suite("coco")
    unified = suite.resolve("unified", suite.pairs[0], "dkd")
    assert unified.method == {"type": "dkd", "alpha": 1.0, "beta": 0.25, "temperature": 1.0, "warmup": 1}
    s = unified.schedule
    assert (s.epochs, s.batch_size, s.lr, s.weight_decay, s.milestones, s.warmup_iters, s.short_sides) == (
        12,
        16,
        0.02,
        1e-4,
        (8, 11),
        500,
        (800,),
    )
    paper = suite.resolve("paper", suite.pairs[0], "ckd").schedule
    assert (paper.batch_size, paper.lr, paper.milestone_iters, paper.warmup_iters, paper.short_sides) == (
        8,
        0.01,
        (120_000, 160_000),
        1000,
        (640, 672, 704, 736, 768, 800),
    )
    # The batch is recorded and the lr follows the linear rule (--batch-sizes); --epochs scales the steps.
    adjusted = unified.adjusted(None, 8)
    assert isinstance(adjusted.schedule, DetectionSchedule) and (
        adjusted.schedule.batch_size,
        adjusted.schedule.lr,
    ) == (8, 0.01)
    assert suite.resolve("paper", suite.pairs[0], "kd").adjusted(6, None).schedule.milestone_iters == (60_000, 80_000)
    assert set(METHODS) == {"ce", "kd", "dkd", "ckd", "fitnet"}
    assert suite.teacher_files("frcnn_r101") == ("frcnn_r101.pth", "faster_rcnn_r101_fpn_1x_coco_20200130-f513f705.pth")


def test_ckd_contrast_size_is_a_recipe_setting():
    """unified: one contrast over all RoIs (None); paper: groups of 1,024 RoIs (2 images x 512 per GPU in the
    references' runs); both recorded in the recipe (its hash) and said in its notes."""
    suite = get_suite("coco")
    unified = suite.resolve("unified", suite.pairs[2], "ckd")
    paper = suite.resolve("paper", suite.pairs[2], "ckd")
    assert unified.method == {"type": "ckd", "temperature": 1.0, "cl_weight": 0.1, "contrast_rois": None}
    assert paper.method == {"type": "ckd", "temperature": 1.0, "cl_weight": 0.1, "contrast_rois": 1024}
    assert paper.to_dict()["method"]["contrast_rois"] == 1024 and paper.hash != unified.hash
    assert any("all sampled RoIs of the batch" in note for note in unified.notes)
    assert any("groups of 1024 RoIs" in note and "2 whole images x 512" in note for note in paper.notes)
    assert "contrast_rois" not in suite.resolve("paper", suite.pairs[2], "dkd").method  # a CKD setting only


def test_grouped_ckd_loss_is_the_mean_of_per_group_losses():
    """contrast_rois: InfoNCE within each group (its own negatives only), averaged over the groups."""
    from methods import build_method
    from methods.base import StepInputs
    from methods.ckd import ckd_loss, grouped_ckd_loss

    g = torch.Generator().manual_seed(0)
    student = torch.randn(10, 81, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(10, 81, generator=g, dtype=torch.float64)
    groups = (4, 4, 2)  # e.g. whole images of 4 RoIs, the last group short
    grouped = grouped_ckd_loss(student, teacher, groups, temperature=0.5)
    parts = zip(student.split(list(groups)), teacher.split(list(groups)))
    expected = torch.stack([ckd_loss(s, t, 0.5) for s, t in parts]).mean()
    assert torch.equal(grouped, expected)  # the same operations in the same order
    assert not torch.isclose(grouped, ckd_loss(student, teacher, 0.5))  # not the one contrast over all rows
    method = build_method({"type": "ckd", "temperature": 0.5, "cl_weight": 0.1, "ce_weight": 0.0})
    terms = method(StepInputs(student, torch.zeros(10, dtype=torch.long), teacher, groups=groups))
    assert torch.equal(terms["loss_ckd"], 0.1 * expected)
    assert torch.equal(grouped_ckd_loss(student, teacher, (4, 0, 4, 2), temperature=0.5), grouped)  # empty: no group
    with pytest.raises(ValueError, match="contrast groups of 9 rows for 10 rows"):
        grouped_ckd_loss(student, teacher, (4, 5))


def test_detection_records_and_the_old_schema():
    """Schema 2 holds the suite's metrics; a schema-1 (top-1 only) record still reads."""
    from benchmark.store.records import EpochPoint

    record = RunRecord(
        suite="coco",
        pair="a-b",
        teacher="a",
        student="b",
        method="kd",
        recipe="unified",
        recipe_hash="x",
        seed=0,
        epochs=2,
        batch_size=16,
        lr=0.02,
        metric_names=["mAP", "AP50", "AP75", "APs", "APm", "APl"],
    )
    values = (
        {"mAP": 20.0, "AP50": 40.0, "AP75": 19.0, "APs": None, "APm": 21.0, "APl": 30.0},
        {"mAP": 19.5, "AP50": 41.0, "AP75": 18.0, "APs": None, "APm": 20.0, "APl": 29.0},
    )
    record.curve = [EpochPoint(epoch=i + 1, loss=1.0, metrics=v) for i, v in enumerate(values)]
    record.finalise_curve()
    record.status = "completed"
    assert (record.best_epoch, record.last_value(), record.best_value(), record.best_value("AP50")) == (
        1,
        19.5,
        20.0,
        40.0,
    )
    assert record.last_top1 is None and record.headline() == "mAP last 19.50 best 20.00"
    again = RunRecord.from_dict(record.to_dict())
    assert again == record and again.curve[0].value("APs") is None
    old = {**record.to_dict()}
    old.update(schema_version=1, metric_names=["top1", "top5"], last_metrics={}, best_metrics={})
    old["curve"] = [
        {"epoch": 1, "top1": 70.0, "top5": 90.0, "loss": 1.0},
        {"epoch": 2, "top1": 71.0, "top5": 91.0, "loss": 0.9},
    ]
    old.update(last_top1=71.0, last_top5=91.0, best_top1=71.0, best_top5=91.0, best_epoch=2)
    for key in ("metric_names", "last_metrics", "best_metrics"):
        del old[key]
    v1 = RunRecord.from_dict(old)
    assert v1.schema_version == 1 and v1.last_value() == 71.0 and v1.curve[1].value("top1") == 71.0
    broken = record.to_dict()
    broken["last_metrics"] = {"mAP": None}
    with pytest.raises(RecordError, match="finite last_mAP"):
        RunRecord.from_dict(broken)


# --------------------------------------------------------------------------- the detection stack


def test_the_detection_stack_is_installed():
    """In CI (and wherever benchmark/tools/install_detection.py ran) the stack must import."""
    if PROBLEM is not None and not os.environ.get("CI"):
        pytest.skip(f"fallback outside CI only: {PROBLEM}")
    assert PROBLEM is None, PROBLEM


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
def test_distillation_trains_through_the_runner(method, tiny, tmp_path):
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
def test_resume_leaves_the_record_of_an_uninterrupted_run(tiny, tmp_path):
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
def test_student_alone_and_a_missing_teacher(tiny, tmp_path):
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
def test_a_teacher_checkpoint_is_evaluated_with_the_coco_metric(tiny):
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
def test_config_files_in_the_repo_build_with_mmengines_runner(tiny, tmp_path):
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
def test_contrast_groups_are_whole_images(tiny, tmp_path):
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
def test_mobilenetv2_student_freezes_nothing_as_the_dkd_reference(tiny):
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
def test_mobilenetv2_reads_torchvision_weights(tiny):
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


# --------------------------------------------------------------------------- tables


def test_coco_tables_from_detection_records(tmp_path):
    """AP / AP50 / AP75 per pair and method, mean ± std over seeds, the same marks; no Δ."""
    from benchmark.aggregate import aggregate
    from benchmark.store.records import EpochPoint, write_record

    work = tmp_path / "work"
    values = {"ce": [30.0, 30.4], "kd": [31.0, 31.2], "dkd": [32.0, 32.3]}
    for method, maps in values.items():
        for seed, m in enumerate(maps):
            record = RunRecord(
                suite="coco",
                pair="frcnn_r101-frcnn_r18",
                teacher="frcnn_r101",
                student="frcnn_r18",
                method=method,
                recipe="unified",
                recipe_hash="h" + method,
                seed=seed,
                epochs=2,
                batch_size=16,
                lr=0.02,
                metric_names=["mAP", "AP50", "AP75", "APs", "APm", "APl"],
                teacher_checkpoint_sha256=None if method == "ce" else "ab" * 32,
                teacher_top1=None if method == "ce" else 39.4,
                extra={}
                if method == "ce"
                else {
                    "teacher_source": "community",
                    "teacher_file": "faster_rcnn_r101_fpn_1x_coco_20200130-f513f705.pth",
                },
            )
            record.curve = [
                EpochPoint(
                    epoch=e,
                    loss=1.0,
                    metrics={
                        "mAP": m - 2 + e,
                        "AP50": m + 20 - 2 + e,
                        "AP75": m + 1,
                        "APs": None,
                        "APm": m,
                        "APl": m + 5,
                    },
                )
                for e in (1, 2)
            ]
            record.finalise_curve()
            record.status = "completed"
            write_record(record, work / method / f"seed{seed}")
    summary = aggregate([work], tmp_path / "tables", tmp_path / "reports")
    assert summary.loaded == 6 and summary.suites == ["coco"]
    md = (tmp_path / "tables" / "coco_last.md").read_text()
    assert "frcnn_r101→frcnn_r18 AP50" in md and "**32.15 ± 0.21 (2)**" in md and "Δ" not in md.split("Notes:")[0]
    assert "39.40 (1)‡" in md and "Detectron2" in md and "faster_rcnn_r101_fpn_1x_coco_20200130-f513f705.pth" in md
    # The footnote says where the suite differs from the references: teachers, norm layers, CKD's contrast size.
    from benchmark.suites.coco import TABLE_NOTES

    notes = md.split("Notes:")[1]
    for note in TABLE_NOTES:
        assert f"- {note}" in notes, note
    for text in ("Detectron2 3x models", "FrozenBN", "MobileNetV2 nothing (FREEZE_AT 0)", "groups of 1024 RoIs"):
        assert text in notes, text
    csv = (tmp_path / "tables" / "coco_best.csv").read_text().splitlines()
    assert csv[0].startswith("suite,statistic,metric,recipe")
    assert any(line.startswith("coco,best,AP50,unified,2,frcnn_r101,frcnn_r18,dkd,52.1500") for line in csv)
    assert (tmp_path / "tables" / "coco_last.tex").read_text().count(r"\multicolumn{3}{c}") >= 2
    assert "AP / AP50 / AP75" in (tmp_path / "reports" / "index.md").read_text()
