"""Find and load run records into one DataFrame; skip and count what cannot be used."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from benchmark.store.records import RECORD_FILE, TEACHER_ROW, RecordError, read_record

log = logging.getLogger("benchmark.aggregate")

RUNTIME_KEYS = ("data_wait_ms", "teacher_forward_ms", "student_forward_backward_ms", "distill_loss_ms")
# Keys of ``env`` that describe the runs' environment in the index (hostname is left out on purpose).
ENV_SKIP = ("hostname",)

# Values of ``teacher_source``: the teacher was the community checkpoint (RepDistiller /
# mdistiller ``cifar_teachers.tar``) or trained by the suite; "" = not recorded in the record
# itself (the tables then derive it from the teacher rows, see report.tables.teacher_kinds).
COMMUNITY, TRAINED = "community", "trained"
COMMUNITY_SOURCE_PREFIX = "community checkpoint"  # extra["source"] of a teacher row loaded from a checkpoint

NOT_REFERENCE = "not a reference recipe"  # the phrase a suite puts in such a recipe's notes

COLUMNS = (
    "path",
    "suite",
    "teacher",
    "student",
    "method",
    "recipe",
    "recipe_hash",
    "seed",
    "epochs",
    "batch_size",
    "lr",
    "last_top1",
    "best_top1",
    "best_epoch",
    "teacher_top1",
    "teacher_ckpt",
    "teacher_source",
    "wall_time_s",
    "images_per_s",
    "world_size",
    "not_reference",
    *RUNTIME_KEYS,
    "peak_memory_mb",
    "has_runtime",
    "ablation",
    "base_batch_size",
    "base_lr",
    "lr_rule",
    "curve_epoch",
    "curve_top1",
    "metric_names",
    "last_metrics",
    "best_metrics",
    "teacher_file",
)
# ``last_top1`` / ``best_top1`` hold top-1 (NaN for suites with other metrics); ``last_metrics`` /
# ``best_metrics`` every metric of the record's suite by name (top1/top5 for classification, bbox
# mAP, AP50, ... for COCO); ``curve_top1`` is the curve of the record's primary metric (top-1 for
# classification). :func:`with_metric` gives the frame with one metric in the top-1 columns.


@dataclass
class Skipped:
    path: str
    kind: str  # "corrupt" | "failed" | "running" | "duplicate"
    reason: str


@dataclass
class LoadResult:
    records: pd.DataFrame  # one row per usable (completed, unique) run, sorted by path
    skipped: list[Skipped] = field(default_factory=list)
    found: int = 0  # record.json files found
    env: dict[str, dict[str, int]] = field(default_factory=dict)  # env key -> {value: count}

    def count(self, kind: str) -> int:
        return sum(1 for s in self.skipped if s.kind == kind)


def find_record_files(work_dirs: Iterable[str | os.PathLike]) -> list[Path]:
    """Every ``record.json`` under the work dirs (recursively), sorted, each file once."""
    seen: set[Path] = set()
    found: list[Path] = []
    for work_dir in work_dirs:
        for root, dirs, files in os.walk(work_dir):
            dirs.sort()
            if RECORD_FILE in files:
                path = Path(root) / RECORD_FILE
                key = path.resolve()
                if key not in seen:
                    seen.add(key)
                    found.append(path)
    return sorted(found, key=lambda p: p.as_posix())


def _float(value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _str(value: Any, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def recorded_teacher_source(method: str, extra: dict[str, Any]) -> str:
    """What a record itself says of its teacher: "community", "trained" or "" (not said).

    ``extra["teacher_source"]`` when it holds one of the two values; else, for a teacher
    row (method ``teacher``), "community" when it was loaded from a community checkpoint
    (``extra["source"] = "community checkpoint <path>"``) and "trained" otherwise (a
    teacher row without that source is the teacher's own training run).
    """
    said = extra.get("teacher_source")
    if isinstance(said, str) and said.strip().lower() in (COMMUNITY, TRAINED):
        return said.strip().lower()
    if method == TEACHER_ROW:
        source = extra.get("source")
        return COMMUNITY if isinstance(source, str) and source.startswith(COMMUNITY_SOURCE_PREFIX) else TRAINED
    return ""


def _row(path: Path, rec) -> dict[str, Any]:
    """Flatten one completed record; raises TypeError/ValueError on malformed fields."""
    curve = rec.curve
    primary = rec.primary_metric
    epoch_arr = np.array([p.epoch for p in curve], dtype=np.float64)
    top1_arr = np.array([_float(p.value(primary)) for p in curve], dtype=np.float64)
    if epoch_arr.size and not np.all(np.isfinite(epoch_arr)):
        raise ValueError("non-finite epoch in curve")
    if epoch_arr.size > 1 and np.any(np.diff(epoch_arr) < 0):
        order = np.argsort(epoch_arr, kind="stable")
        epoch_arr, top1_arr = epoch_arr[order], top1_arr[order]
    runtime = rec.runtime if isinstance(rec.runtime, dict) else {}
    extra = rec.extra if isinstance(rec.extra, dict) else {}
    row: dict[str, Any] = {
        "path": path.as_posix(),
        "suite": _str(rec.suite),
        "teacher": _str(rec.teacher),
        "student": _str(rec.student),
        "method": _str(rec.method),
        # Runs from before per-method streams form their own rows (the same seed drew other weights).
        "recipe": (_str(rec.recipe, "unified") or "unified")
        + (" (pre-v3 streams)" if rec.predates_method_streams else ""),
        "recipe_hash": _str(rec.recipe_hash),
        "seed": _int(rec.seed),
        "epochs": _int(rec.epochs),
        "batch_size": _int(rec.batch_size),
        "lr": _float(rec.lr),
        "last_top1": _float(rec.last_top1),
        "best_top1": _float(rec.best_top1),
        "best_epoch": _float(rec.best_epoch),
        "teacher_top1": _float(rec.teacher_top1),
        "teacher_ckpt": _str(rec.teacher_checkpoint_sha256),
        "teacher_source": recorded_teacher_source(rec.method, extra),
        "wall_time_s": _float(rec.wall_time_s),
        "world_size": _int((rec.env if isinstance(rec.env, dict) else {}).get("world_size", 1)) or 1,
        "images_per_s": _float(rec.images_per_s),
        "has_runtime": bool(runtime) and all(k in runtime for k in RUNTIME_KEYS),
        "ablation": bool(extra.get("batch_size_ablation", False)),
        "base_batch_size": _float(extra.get("base_batch_size")),
        "base_lr": _float(extra.get("base_lr")),
        "lr_rule": str(extra.get("lr_rule", "") or ""),
        # The suite offers the method with its own stated choices (e.g. FitNet on ImageNet).
        "not_reference": any(NOT_REFERENCE in str(note) for note in ((extra.get("recipe") or {}).get("notes") or ())),
        "curve_epoch": epoch_arr,
        "curve_top1": top1_arr,
        "metric_names": tuple(_str(n) for n in rec.metric_names),
        "last_metrics": {_str(n): _float(rec.last_value(n)) for n in rec.metric_names},
        "best_metrics": {_str(n): _float(rec.best_value(n)) for n in rec.metric_names},
        "teacher_file": _str(extra.get("teacher_file")),
    }
    for key in (*RUNTIME_KEYS, "peak_memory_mb"):
        row[key] = _float(runtime.get(key))
    if not (row["suite"] and row["teacher"] and row["method"]):
        raise ValueError("empty suite, teacher or method")
    return row


def with_metric(records: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The records with ``metric`` in the ``last_top1`` / ``best_top1`` columns (the columns the
    tables and plots read); ``teacher_top1`` (the teacher's primary metric) is kept only for the
    records whose primary metric it is."""
    if records.empty or metric == "top1":
        return records

    def pick(column: str) -> list[float]:
        return [float(d.get(metric, math.nan)) if isinstance(d, dict) else math.nan for d in records[column]]

    primary = [bool(names) and names[0] == metric for names in records["metric_names"]]
    teacher = [t if keep else math.nan for t, keep in zip(records["teacher_top1"], primary)]
    return records.assign(last_top1=pick("last_metrics"), best_top1=pick("best_metrics"), teacher_top1=teacher)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def load_records(work_dirs: Iterable[str | os.PathLike]) -> LoadResult:
    """Load every usable record under ``work_dirs``.

    Corrupt, partial or unknown-schema files, failed and still-running runs, and
    duplicates of a run already loaded are skipped with one warning line each
    and counted in :attr:`LoadResult.skipped`.
    """
    paths = find_record_files(work_dirs)
    rows: list[dict[str, Any]] = []
    skipped: list[Skipped] = []
    env: dict[str, dict[str, int]] = {}
    identities: dict[tuple, str] = {}

    def skip(path: Path, kind: str, reason: str) -> None:
        reason = _one_line(reason)
        skipped.append(Skipped(path.as_posix(), kind, reason))
        log.warning("skipping %s (%s): %s", path.as_posix(), kind, reason)

    for path in paths:
        try:
            rec = read_record(path)
        except RecordError as exc:
            # RecordError messages start with the path; keep only the reason.
            reason = str(exc)
            prefix = f"{path}: "
            skip(path, "corrupt", reason[len(prefix) :] if reason.startswith(prefix) else reason)
            continue
        except (RecursionError, MemoryError, ValueError) as exc:  # pathological JSON
            skip(path, "corrupt", f"unreadable ({type(exc).__name__})")
            continue
        if rec.status == "failed":
            skip(path, "failed", f"run failed: {rec.failure or 'no reason recorded'}")
            continue
        if rec.status != "completed":
            skip(path, "running", f"run not finished (status {rec.status!r})")
            continue
        try:
            row = _row(path, rec)
        except (TypeError, ValueError, AttributeError) as exc:
            skip(path, "corrupt", f"malformed field ({exc})")
            continue
        identity = tuple(
            row[k]
            for k in (
                "suite",
                "teacher",
                "student",
                "method",
                "recipe",
                "recipe_hash",
                "seed",
                "epochs",
                "batch_size",
                "ablation",
            )
        )
        if identity in identities:
            skip(path, "duplicate", f"same run as {identities[identity]}")
            continue
        identities[identity] = row["path"]
        rows.append(row)
        if isinstance(rec.env, dict):
            for key, value in rec.env.items():
                if key in ENV_SKIP:
                    continue
                counts = env.setdefault(str(key), {})
                text = _one_line(value if isinstance(value, str) else repr(value)) or "(empty)"
                counts[text] = counts.get(text, 0) + 1

    frame = pd.DataFrame.from_records(rows, columns=list(COLUMNS)) if rows else pd.DataFrame(columns=list(COLUMNS))
    return LoadResult(records=frame.reset_index(drop=True), skipped=skipped, found=len(paths), env=env)
