"""The coco suite: distillation of Faster R-CNN detectors on MMDetection 3.3; the tests that need no MMDetection.

The CLI (the dry-run plan, CRD refused, a missing dataset), the recipes and CKD's contrast size,
CKD's loss over groups of RoIs, detection run records (and the old schema) and the aggregated
tables. The training tests on the detection stack are in tests/test_coco_training.py.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
from pathlib import Path

import pytest
import torch

from benchmark.store.records import RecordError, RunRecord
from benchmark.suites import get_suite
from tests import forked_cli
from tests.coco_tiny import REPO

# MMEngine resolves ``mmdet::`` paths through pkg_resources (setuptools < 81), which warns on each import.
pytestmark = pytest.mark.filterwarnings("ignore:pkg_resources is deprecated as an API:UserWarning")


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
