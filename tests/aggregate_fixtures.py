"""The fixture run records of the aggregator tests, and the paths and switches those tests share.

:func:`build_fixture_records` writes the records committed in tests/fixtures/records/: two
fixture pairs (one with teacher runs, a batch-size ablation and runtime), a CIFAR-100 suite with
published numbers and a community teacher, and the corrupt / future-schema / failed / running
records that must be skipped and counted. ``tests/test_aggregate.py`` checks that the committed
files are its output; GOLDEN holds the golden tables that tests/test_aggregate.py and
tests/test_aggregate_coco.py compare byte for byte (``UPDATE_GOLDEN=1`` rewrites both, see
tests/test_aggregate.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from benchmark.report import synthetic
from benchmark.report.synthetic import make_record
from benchmark.store.records import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "records"
GOLDEN = ROOT / "tests" / "golden" / "aggregate"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

P1 = ("resnet56", "resnet20")  # has teacher runs, the batch-size ablation and runtime
P2 = ("wrn_40_2", "wrn_16_2")  # no teacher runs: the teacher column comes from teacher_top1
CIFAR = ("resnet32x4", "resnet8x4")  # has published numbers (CRD / DKD papers); teacher trained by the suite
CIFAR_COMMUNITY = ("resnet56", "resnet20")  # has published numbers; the community teacher checkpoint

# Last-epoch top-1 per seed. P1: DKD best, CRD inseparable (p = 0.35), KD separated (p = 0.02).
# P2: CKD best, DKD inseparable (p = 0.10), CRD separated (p = 0.014).
FIXTURE_VALUES = {
    P1: {
        "teacher": [72.10, 72.40, 72.25],
        "ce": [69.00, 69.30, 68.85],
        "kd": [70.50, 70.80, 70.20],
        "crd": [71.00, 71.60, 70.70],
        "dkd": [71.40, 71.55, 71.30],
        "ckd": [70.00, 70.10, 69.95],
    },
    P2: {
        "ce": [73.00, 73.20, 73.10],
        "kd": [74.50, 74.70, 74.60],
        "crd": [75.10, 75.30, 75.20],
        "dkd": [75.00, 75.40, 74.90],
        "ckd": [75.50, 75.60, 75.45],
    },
}
CIFAR_VALUES = {
    "teacher": [79.30, 79.50, 79.45],
    "ce": [72.40, 72.60, 72.55],
    "kd": [73.50, 73.70, 73.40],
    "fitnet": [73.20],
    "dkd": [76.00, 76.20, 76.10],
    "ckd": [76.30, 76.10, 76.40],
}
# CIFAR_COMMUNITY's teacher: one teacher row evaluated from the community file (no curve).
CIFAR_COMMUNITY_VALUES = {"teacher": [72.34], "ce": [69.10, 69.30], "kd": [70.40, 70.70]}
COMMUNITY_SHA = hashlib.sha256(b"community resnet56_vanilla/ckpt_epoch_240.pth").hexdigest()
RUNTIME = {
    "data_wait_ms": 1.5,
    "teacher_forward_ms": 3.0,
    "student_forward_backward_ms": 9.0,
    "distill_loss_ms": 0.5,
    "peak_memory_mb": 812.0,
}


def _runtime(method: str, seed: int) -> dict[str, float]:
    rt = dict(RUNTIME)
    if method == "ce":
        rt["teacher_forward_ms"] = rt["distill_loss_ms"] = 0.0
    if method in ("crd", "ckd"):
        rt["distill_loss_ms"] = 2.0 if method == "crd" else 1.0
    rt["data_wait_ms"] += 0.1 * seed
    return rt


def build_fixture_records(root: Path) -> None:
    """Write the fixture records (the committed tests/fixtures/records/ is this function's output)."""
    for pair, methods in FIXTURE_VALUES.items():
        for method, values in methods.items():
            for seed, last in enumerate(values):
                paper = method == "ckd"  # the mixed-recipe subset: CKD with its paper recipe (10 epochs)
                # Teacher runs are recorded as the runner does: pair "<teacher>-<teacher>".
                names = (pair[0], pair[0]) if method == "teacher" else pair
                synthetic.write(
                    root,
                    make_record(
                        "fixture",
                        *names,
                        method,
                        seed,
                        last,
                        recipe="paper" if paper else "unified",
                        epochs=10 if paper else 8,
                        teacher_top1=None if method == "teacher" else (72.25 if pair == P1 else 75.61),
                        runtime=_runtime(method, seed) if pair == P1 and method != "teacher" else None,
                        env={**synthetic.ENV, "git_commit": "c0ffee000002"} if paper else None,
                    ),
                )
    # Batch-size ablation (linear lr rule, base 64 / 0.05 from the main runs above).
    for method, offset in (("kd", 0.0), ("dkd", 0.9)):
        for size, drop in ((32, -0.2), (128, 0.3), (256, 0.9)):
            for seed in range(2):
                extra = {"batch_size_ablation": True, "base_batch_size": 64, "base_lr": 0.05, "lr_rule": "linear"}
                synthetic.write(
                    root,
                    make_record(
                        "fixture",
                        *P1,
                        method,
                        seed,
                        round(70.5 + offset - drop + 0.1 * seed, 2),
                        batch_size=size,
                        lr=0.05 * size / 64,
                        teacher_top1=72.25,
                        extra=extra,
                    ),
                )
    # A suite with published numbers: Δ against the CRD / DKD papers.
    for method, values in CIFAR_VALUES.items():
        for seed, last in enumerate(values):
            names = (CIFAR[0], CIFAR[0]) if method == "teacher" else CIFAR
            # Teacher rows trained by the suite (no source): the Δ of this pair are marked not comparable.
            synthetic.write(
                root,
                make_record(
                    "cifar100",
                    *names,
                    method,
                    seed,
                    last,
                    epochs=8,
                    teacher_top1=None if method == "teacher" else 79.42,
                ),
            )
    # A pair whose teacher is the community checkpoint, recorded as benchmark/teachers.py does: the
    # file's sha256, a source, no curve; the distillation runs carry the same sha256 (the KD runs also
    # say extra["teacher_source"], the CE runs leave it to be derived from the sha256).
    for method, values in CIFAR_COMMUNITY_VALUES.items():
        for seed, last in enumerate(values):
            names = (CIFAR_COMMUNITY[0], CIFAR_COMMUNITY[0]) if method == "teacher" else CIFAR_COMMUNITY
            record = make_record(
                "cifar100",
                *names,
                method,
                seed,
                last,
                epochs=8,
                teacher_top1=None if method == "teacher" else 72.34,
                extra={"teacher_source": "community"} if method == "kd" else None,
            )
            record.teacher_checkpoint_sha256 = COMMUNITY_SHA
            if method == "teacher":
                record.curve, record.best_top1, record.best_epoch, record.teacher_top1 = [], last, None, last
                record.last_top5 = record.best_top5 = record.wall_time_s = record.images_per_s = None
                record.extra["source"] = "community checkpoint teachers/resnet56_vanilla/ckpt_epoch_240.pth"
            synthetic.write(root, record)
    # What must be skipped and counted.
    bad = root / "fixture" / "unified" / "resnet56-resnet20"
    corrupt = bad / "kd" / "seed3" / "record.json"
    corrupt.parent.mkdir(parents=True, exist_ok=True)
    corrupt.write_text('{"suite": "fixture", "pair": "resnet56-resnet20", "curve": [{"epoch": 1, "to')
    future = make_record("fixture", *P1, "dkd", 3, 71.0).to_dict()
    future["schema_version"] = SCHEMA_VERSION + 1  # a schema from the future
    path = bad / "dkd" / "seed3" / "record.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(future, indent=1, sort_keys=True) + "\n")
    synthetic.write(
        root,
        make_record(
            "fixture",
            *P2,
            "crd",
            3,
            0.0,
            status="failed",
            teacher_top1=75.61,
            failure="RuntimeError: loss is NaN at epoch 3",
        ),
    )
    synthetic.write(root, make_record("fixture", *P2, "kd", 3, 0.0, status="running", teacher_top1=75.61))
