"""Synthetic run records for the aggregator's tests and benchmark (no training involved)."""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path
from typing import Any

from benchmark.store.records import RECORD_FILE, STUDENT_ROW, TEACHER_ROW, EpochPoint, RunRecord, write_record
from methods import METHODS

ENV = {
    "python": "3.11.9",
    "torch": "2.13.0",
    "mmengine": "0.10.7",
    "torchvision": "0.28.0",
    "git_commit": "0123456789ab",
    "device": "cpu",
    "world_size": 1,
}


def curve_to(last: float, epochs: int, bump: float = 0.3, start: float = 10.0) -> list[EpochPoint]:
    """A plausible top-1 curve ending exactly at ``last`` with its best (``last + bump``) one epoch before."""
    points = []
    for epoch in range(1, epochs + 1):
        frac = 1.0 - math.exp(-3.0 * epoch / epochs)
        top1 = start + (last - start) * frac / (1.0 - math.exp(-3.0))
        if epoch == epochs:
            top1 = last
        elif epoch == epochs - 1:
            top1 = last + bump
        else:
            top1 = min(top1, last - 0.05)
        loss = round(3.0 * math.exp(-2.0 * epoch / epochs), 4)
        points.append(EpochPoint(epoch, round(top1, 2), round(min(99.99, top1 + 20.0), 2), loss))
    return points


def make_record(
    suite: str,
    teacher: str,
    student: str,
    method: str,
    seed: int,
    last: float,
    *,
    recipe: str = "unified",
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 0.05,
    status: str = "completed",
    bump: float = 0.3,
    teacher_top1: float | None = None,
    runtime: dict[str, float] | None = None,
    env: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    failure: str | None = None,
) -> RunRecord:
    record = RunRecord(
        suite=suite,
        pair=f"{teacher}-{student}",
        teacher=teacher,
        student=student,
        method=method,
        recipe=recipe,
        recipe_hash=hashlib.sha256(f"{recipe}|{epochs}|{batch_size}|{lr!r}".encode()).hexdigest()[:12],
        seed=seed,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        status=status,
        failure=failure,
        teacher_checkpoint_sha256=None if method == TEACHER_ROW else f"sha-{teacher}",
        teacher_top1=teacher_top1,
        wall_time_s=60.0 + seed,
        images_per_s=1000.0 + 10 * seed,
        runtime=runtime,
        env=dict(ENV if env is None else env),
        extra=dict(extra or {}),
    )
    if status == "completed":
        record.curve = curve_to(last, epochs, bump)
        record.finalise_curve()
    return record


def run_dir(root: Path, record: RunRecord) -> Path:
    return (
        root
        / record.suite
        / record.recipe
        / record.pair
        / record.method
        / (f"bs{record.batch_size}" if record.extra.get("batch_size_ablation") else "")
        / f"seed{record.seed}"
    )


def write(root: Path, record: RunRecord) -> Path:
    return write_record(record, run_dir(root, record))


def write_fast(root: Path, record: RunRecord) -> Path:
    """Like :func:`write` in write_record's format, without the temp file and fsync (bulk test data)."""
    directory = run_dir(root, record)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RECORD_FILE
    path.write_text(json.dumps(record.to_dict(), indent=1, sort_keys=True, allow_nan=False) + "\n")
    return path


def write_synthetic_sweep(root: Path, n_records: int = 1000, epochs: int = 240, seed: int = 0) -> int:
    """Exactly ``n_records`` records: 2 suites x 5 pairs x 8 rows x ~11 seeds, plus a batch-size ablation
    (3 methods x 4 batch sizes x 3 seeds per suite).

    Every main run has a per-iteration runtime; the curves have ``epochs`` points
    (240: the CRD schedule), so the files have the size of real records.
    """
    rng = random.Random(seed)
    # Every registered method in table order; made-up mean accuracies (71.0 for a method not listed).
    methods = [TEACHER_ROW] + sorted(METHODS.module_dict, key=lambda name: (METHODS.get(name).table_order, name))
    base = {
        TEACHER_ROW: 75.0,
        STUDENT_ROW: 70.0,
        "kd": 71.0,
        "fitnet": 70.5,
        "crd": 71.8,
        "crd_kd": 72.0,
        "dkd": 72.3,
        "ckd": 72.2,
    }
    base = {name: base.get(name, 71.0) for name in methods}
    pairs = [
        ("resnet56", "resnet20"),
        ("resnet110", "resnet32"),
        ("resnet32x4", "resnet8x4"),
        ("wrn_40_2", "wrn_16_2"),
        ("vgg13", "vgg8"),
    ]
    suites = ["cifar100", "synthetic"]
    ablation_sizes = (32, 128, 256, 512)
    ablation_methods = ("kd", "dkd", "ckd")
    written = 0
    for suite in suites:
        teacher, student = pairs[2]
        for method in ablation_methods:
            for size in ablation_sizes:
                for s in range(3):
                    if written >= n_records:
                        return written
                    last = round(base[method] + 0.8 - 0.3 * math.log2(size / 64) + rng.gauss(0.0, 0.2), 2)
                    extra = {"batch_size_ablation": True, "base_batch_size": 64, "base_lr": 0.05, "lr_rule": "linear"}
                    write_fast(
                        root,
                        make_record(
                            suite,
                            teacher,
                            student,
                            method,
                            s,
                            last,
                            epochs=epochs,
                            batch_size=size,
                            lr=0.05 * size / 64,
                            teacher_top1=76.0,
                            extra=extra,
                        ),
                    )
                    written += 1
    s = 0
    while written < n_records:  # seeds outermost: the last seed covers only part of the grid
        for suite in suites:
            for p, (teacher, student) in enumerate(pairs):
                for method in methods:
                    if written >= n_records:
                        return written
                    last = round(base[method] + p * 0.4 + rng.gauss(0.0, 0.25), 2)
                    distil = method not in (TEACHER_ROW, STUDENT_ROW)
                    runtime = {
                        "data_wait_ms": 2.0 + rng.random(),
                        "teacher_forward_ms": 5.0 + rng.random() if distil else 0.0,
                        "student_forward_backward_ms": 12.0 + rng.random(),
                        "distill_loss_ms": 1.0 + rng.random() if distil else 0.0,
                        "peak_memory_mb": 900.0 + 50 * rng.random(),
                    }
                    names = (teacher, teacher) if method == TEACHER_ROW else (teacher, student)  # as the runner
                    write_fast(
                        root,
                        make_record(
                            suite,
                            *names,
                            method,
                            s,
                            last,
                            epochs=epochs,
                            teacher_top1=None if method == TEACHER_ROW else 75.0 + p * 0.4,
                            runtime=runtime,
                        ),
                    )
                    written += 1
        s += 1
    return written
