"""The aggregator on a suite with several metrics (COCO: mAP, AP50, AP75, APs, APm, APl).

Synthetic detection records of two pairs: the tables are byte-identical to their golden files
in tests/golden/aggregate/ (``UPDATE_GOLDEN=1``, as in tests/test_aggregate.py), mark the best
and the inseparable rows and take every metric at the epoch of the best mAP; a schema-1 record
(top-1 only, before detection suites) still loads.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from benchmark.aggregate import aggregate
from benchmark.report import synthetic
from benchmark.report.load import load_records
from benchmark.report.synthetic import make_record
from tests.aggregate_fixtures import GOLDEN, P1, UPDATE

# --------------------------------------------------------------------------- a suite with several metrics (COCO)

COCO_PAIRS = (("frcnn_r101", "frcnn_r18"), ("frcnn_r50", "frcnn_mobilenetv2"))
# Last-epoch bbox mAP per seed; AP50 / AP75 follow from it. Pair 1: DKD best, KD inseparable; pair 2: KD best.
COCO_VALUES = {
    COCO_PAIRS[0]: {
        "ce": [30.1, 30.4, 30.2],
        "kd": [31.9, 32.3, 32.0],
        "dkd": [32.2, 32.4, 32.1],
        "fitnet": [30.9, 31.0, 31.2],
    },
    COCO_PAIRS[1]: {"ce": [28.0, 28.3, 28.1], "kd": [29.6, 29.7, 29.8], "ckd": [29.0, 29.3, 29.1]},
}
COCO_TEACHERS = {
    "frcnn_r101": ("faster_rcnn_r101_fpn_1x_coco_20200130-f513f705.pth", 39.4),
    "frcnn_r50": ("faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth", 37.4),
}
COCO_NAMES = ["mAP", "AP50", "AP75", "APs", "APm", "APl"]


def coco_record(pair, method: str, seed: int, last: float, epochs: int = 3):
    from benchmark.store.records import EpochPoint, RunRecord

    teacher_file, teacher_ap = COCO_TEACHERS[pair[0]]
    distilled = method != "ce"
    record = RunRecord(
        suite="coco",
        pair=f"{pair[0]}-{pair[1]}",
        teacher=pair[0],
        student=pair[1],
        method=method,
        recipe="unified",
        recipe_hash=hashlib.sha256(f"coco|{method}".encode()).hexdigest()[:12],
        seed=seed,
        epochs=epochs,
        batch_size=16,
        lr=0.02,
        metric_names=list(COCO_NAMES),
        teacher_checkpoint_sha256=hashlib.sha256(teacher_file.encode()).hexdigest() if distilled else None,
        teacher_top1=teacher_ap if distilled else None,
        wall_time_s=3600.0 + seed,
        images_per_s=20.0 + seed,
        env=dict(synthetic.ENV, mmdet="3.3.0", mmcv="2.1.0"),
        extra={"teacher_source": "community", "teacher_file": teacher_file} if distilled else {},
    )
    for epoch in range(1, epochs + 1):
        ap = round(
            last - 0.6 * (epochs - epoch) + (0.8 if epoch == epochs - 1 else 0.0), 2
        )  # best: the epoch before the last
        record.curve.append(
            EpochPoint(
                epoch=epoch,
                loss=round(1.5 - 0.1 * epoch, 4),
                metrics={
                    "mAP": ap,
                    "AP50": round(ap + 19.5, 2),
                    "AP75": round(ap + 1.8, 2),
                    "APs": round(ap - 13.0, 2),
                    "APm": round(ap + 2.5, 2),
                    "APl": round(ap + 10.0, 2),
                },
            )
        )
    record.finalise_curve()
    record.status = "completed"
    return record


@pytest.fixture(scope="module")
def coco_agg(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    for pair, methods in COCO_VALUES.items():
        for method, values in methods.items():
            for seed, last in enumerate(values):
                synthetic.write(root / "work", coco_record(pair, method, seed, last))
    summary = aggregate([root / "work"], root / "tables", root / "reports")
    return summary, root


@pytest.mark.parametrize("name", [f"coco_{stat}.{ext}" for stat in ("last", "best") for ext in ("md", "tex", "csv")])
def test_coco_golden_tables(coco_agg, name):
    """AP / AP50 / AP75 per pair and method; byte-identical to the golden files."""
    _, root = coco_agg
    produced = (root / "tables" / name).read_bytes()
    golden = GOLDEN / name
    if UPDATE:
        golden.write_bytes(produced)
    assert golden.is_file(), f"missing golden {golden}; run with UPDATE_GOLDEN=1"
    assert produced == golden.read_bytes(), f"{name} differs from its golden file; UPDATE_GOLDEN=1 to accept"


def test_coco_tables_marks_and_best_epoch(coco_agg):
    summary, root = coco_agg
    assert summary.loaded == sum(len(v) for m in COCO_VALUES.values() for v in m.values())
    last = (root / "tables" / "coco_last.csv").read_text().splitlines()
    assert last[0].split(",")[:3] == ["suite", "statistic", "metric"]
    dkd = next(line for line in last if line.startswith("coco,last,mAP,unified,3,frcnn_r101,frcnn_r18,dkd,"))
    assert dkd.split(",")[8] == "32.2333" and dkd.split(",")[13] == "True"  # mean; best of the pair
    md = (root / "tables" / "coco_best.md").read_text()
    assert "Best epoch: the highest mAP (AP50 and AP75 are those of the same epoch)" in md
    # The best epoch is the one before the last (by mAP), and AP50 is taken from that epoch.
    best = (root / "tables" / "coco_best.csv").read_text()
    assert "coco,best,AP50,unified,3,frcnn_r101,frcnn_r18,dkd,51.9333" in best
    assert "Δ vs published numbers: not offered" in md and "Detectron2" in md
    assert "39.40 (1)‡" in md and "community " in md


def test_detection_records_read_and_old_schema(tmp_path):
    """A schema-1 record (top-1 only, before detection suites) still loads."""
    record = make_record("fixture", *P1, "kd", 0, 70.0).to_dict()
    record["schema_version"] = 1
    path = tmp_path / "old" / "record.json"
    path.parent.mkdir()
    path.write_text(json.dumps(record))
    loaded = load_records([tmp_path])
    assert len(loaded.records) == 1 and loaded.records["last_top1"].iloc[0] == 70.0
