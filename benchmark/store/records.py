"""Run records: the machine-readable result of one (suite, pair, method, recipe, seed) run.

One JSON file per run, ``record.json`` in the run's directory. The aggregator reads
them back; anything it cannot trust (partial, corrupt, unknown schema) raises
:class:`RecordError` here and is skipped and counted there.

Written atomically (temp file + rename) so a crash never leaves half a record.

Metrics: a record holds the metrics of its suite (``metric_names``, the first one is the
primary metric that picks the best epoch). Classification suites keep top-1 / top-5 in the
fields of schema 1 (``top1``/``top5`` of each curve point, ``last_top1`` … ``best_top5``);
other suites (COCO detection: bbox mAP, AP50, AP75, APs, APm, APl) keep theirs in the
``metrics`` dict of each curve point and in ``last_metrics`` / ``best_metrics``.
:meth:`EpochPoint.value` and :meth:`RunRecord.last_value` / :meth:`RunRecord.best_value`
read either. Schema 1 records (classification only) read unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 3
# 1: top-1/top-5 only (before detection suites); 2: the suite's metrics; 3: a classification run's
# method draws from its own random stream (student init, its step), apart from the data stream —
# what lockstep cohorts need; the same seed then draws other initial weights than under 1 and 2.
READABLE_VERSIONS = (1, 2, 3)
METHOD_STREAMS_SCHEMA = 3
RECORD_FILE = "record.json"
STATUSES = ("running", "completed", "failed")
# Method names used for the rows that are not distillation methods.
TEACHER_ROW = "teacher"  # the teacher network trained alone (CE), or a loaded checkpoint
STUDENT_ROW = "ce"  # the student trained alone with cross-entropy: the baseline row


CLASSIFICATION_METRICS = ("top1", "top5")  # held in the schema-1 fields
METRIC_LABELS = {"top1": "top-1", "top5": "top-5"}


class RecordError(ValueError):
    """A run record that cannot be used (corrupt, partial, unknown schema)."""


@dataclass(frozen=True)
class Metric:
    """One metric of a suite: its name in the record and where MMEngine's validation reports it.

    ``scale`` multiplies the reported value (MMDetection's CocoMetric reports fractions, the
    records hold percent); a reported value below ``undefined_below`` (COCO's -1: no ground
    truth of that size) is recorded as None; ``when_absent`` is recorded when the validation
    reports nothing at all (CocoMetric returns no metric when the model detected nothing on
    the whole split, i.e. every AP is 0); None means: no curve point then.
    """

    name: str
    key: str
    scale: float = 1.0
    undefined_below: float | None = None
    when_absent: float | None = None


CLASSIFICATION = (Metric("top1", "val/top1"), Metric("top5", "val/top5"))


def metric_label(name: str) -> str:
    return METRIC_LABELS.get(name, name)


def _number(value: Any) -> float:
    """For ordering: a missing or undefined value ranks below every number."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else -math.inf


@dataclass
class EpochPoint:
    epoch: int
    top1: float | None = None  # classification suites
    top5: float | None = None
    loss: float | None = None  # mean training loss of the epoch (sum of the weighted terms)
    metrics: dict[str, float | None] = field(default_factory=dict)  # other suites' metrics (e.g. bbox mAP)

    def value(self, name: str) -> float | None:
        if name in self.metrics:
            return self.metrics[name]
        return getattr(self, name) if name in CLASSIFICATION_METRICS else None


@dataclass
class RunRecord:
    suite: str
    pair: str  # "<teacher>-<student>", e.g. "resnet32x4-resnet8x4"
    teacher: str
    student: str
    method: str  # registry name, or TEACHER_ROW for a teacher's own run
    recipe: str  # "unified" | "paper" | ...
    recipe_hash: str  # sha256[:12] of the resolved recipe (schedule, optimiser, loss weights)
    seed: int
    epochs: int
    batch_size: int
    lr: float
    status: str = "running"
    failure: str | None = None  # one line, set when status == "failed"
    curve: list[EpochPoint] = field(default_factory=list)
    last_top1: float | None = None
    last_top5: float | None = None
    best_top1: float | None = None
    best_top5: float | None = None
    best_epoch: int | None = None
    teacher_checkpoint_sha256: str | None = None
    teacher_top1: float | None = None
    wall_time_s: float | None = None
    images_per_s: float | None = None
    # Per-iteration timing averaged after warm-up (ms) and peak memory (MB); filled by the timing hook.
    runtime: dict[str, float] | None = None
    # python, torch, mmengine, torchvision versions, git_commit, device, world_size, hostname
    env: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form (e.g. linear-lr rule for batch-size ablations)
    # The suite's metrics, the primary one first (it picks the best epoch); last/best values of
    # metrics other than top-1/top-5 (those keep their own fields above).
    metric_names: list[str] = field(default_factory=lambda: list(CLASSIFICATION_METRICS))
    last_metrics: dict[str, float | None] = field(default_factory=dict)
    best_metrics: dict[str, float | None] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def primary_metric(self) -> str:
        return self.metric_names[0] if self.metric_names else "top1"

    @property
    def is_classification(self) -> bool:
        return set(self.metric_names) <= set(CLASSIFICATION_METRICS)

    def last_value(self, name: str | None = None) -> float | None:
        """The last epoch's value of a metric (the primary one by default)."""
        name = name or self.primary_metric
        if name in self.last_metrics:
            return self.last_metrics[name]
        return getattr(self, f"last_{name}") if name in CLASSIFICATION_METRICS else None

    def best_value(self, name: str | None = None) -> float | None:
        """The value of a metric at the best epoch (by the primary metric)."""
        name = name or self.primary_metric
        if name in self.best_metrics:
            return self.best_metrics[name]
        return getattr(self, f"best_{name}") if name in CLASSIFICATION_METRICS else None

    @property
    def predates_method_streams(self) -> bool:
        """A classification run recorded before each method drew from its own stream (schema < 3):
        its seed drew other initial weights, so it never shares a table cell with newer runs."""
        return self.schema_version < METHOD_STREAMS_SCHEMA and set(self.metric_names) <= set(CLASSIFICATION_METRICS)

    def headline(self, best: bool = True) -> str:
        """For progress lines: ``top-1 last 71.20 best 72.05`` (``mAP last 30.10 best 30.10`` for
        COCO); without ``best``: ``top-1 last 71.20``."""

        def fmt(value: float | None) -> str:
            return "–" if value is None else f"{value:.2f}"

        text = f"{metric_label(self.primary_metric)} last {fmt(self.last_value())}"
        return text + (f" best {fmt(self.best_value())}" if best else "")

    def metric_text(self, point: EpochPoint | None = None) -> str:
        """The primary metric of the last epoch (or of ``point``): ``top-1 71.20``, ``mAP 37.40``."""
        value = self.last_value() if point is None else point.value(self.primary_metric)
        return f"{metric_label(self.primary_metric)} " + ("–" if value is None else f"{value:.2f}")

    def record_evaluation(self, values: dict[str, float | None]) -> None:
        """Last = best = one evaluation (a teacher checkpoint evaluated without training)."""
        for name in self.metric_names:
            value = values.get(name)
            if name in CLASSIFICATION_METRICS:
                setattr(self, f"last_{name}", value)
                setattr(self, f"best_{name}", value)
            else:
                self.last_metrics[name] = self.best_metrics[name] = value

    @property
    def evaluated_only(self) -> bool:
        """A teacher checkpoint evaluated on the test split: no training, so no curve."""
        return self.method == TEACHER_ROW and str(self.extra.get("source", "")).startswith("community checkpoint")

    def curve_problem(self) -> str | None:
        """Why the curve is not exactly epochs 1..E, each once and in order (None when it is)."""
        if self.evaluated_only:
            return None
        epochs = [p.epoch for p in self.curve]
        expected = list(range(1, self.epochs + 1))
        if epochs == expected:
            return None
        missing = sorted(set(expected) - set(epochs))
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            return f"a hole in its curve: epoch(s) {shown} of 1..{self.epochs} never validated"
        return f"a curve that is not epochs 1..{self.epochs} once each in order (got {epochs[:12]})"

    def finalise_curve(self) -> None:
        """Derive last/best statistics from the per-epoch curve (best epoch by the primary metric)."""
        if not self.curve:
            return
        last = self.curve[-1]
        if self.is_classification:
            best = max(self.curve, key=lambda p: (p.top1, -p.epoch))
            self.last_top1, self.last_top5 = last.top1, last.top5
            self.best_top1, self.best_top5, self.best_epoch = best.top1, best.top5, best.epoch
            return
        primary = self.primary_metric
        best = max(self.curve, key=lambda p: (_number(p.value(primary)), -p.epoch))
        self.last_metrics = {name: last.value(name) for name in self.metric_names}
        self.best_metrics = {name: best.value(name) for name in self.metric_names}
        self.best_epoch = best.epoch

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON data; fields of schema 2 that hold their defaults are left out, so a
        classification record reads exactly as in schema 1 apart from its ``schema_version``."""
        data = dataclasses.asdict(self)
        if data["metric_names"] == list(CLASSIFICATION_METRICS):
            del data["metric_names"]
        for name in ("last_metrics", "best_metrics"):
            if not data[name]:
                del data[name]
        classification = self.is_classification
        for point in data["curve"]:
            if not point["metrics"]:
                del point["metrics"]
            if not classification:  # a detection point holds its metrics only
                for name in CLASSIFICATION_METRICS:
                    if point[name] is None:
                        del point[name]
        if not classification:
            for name in ("last_top1", "last_top5", "best_top1", "best_top5"):
                if data[name] is None:
                    del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunRecord":
        if not isinstance(data, dict):
            raise RecordError("record is not a JSON object")
        version = data.get("schema_version")
        if isinstance(version, bool) or version not in READABLE_VERSIONS:
            readable = ", ".join(map(str, READABLE_VERSIONS))
            raise RecordError(f"unknown schema_version {version!r} (this code reads {readable})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise RecordError(f"unknown fields {sorted(unknown)}")
        try:
            curve = [EpochPoint(**p) for p in data.get("curve", [])]
            record = cls(**{**data, "curve": curve})
        except TypeError as exc:  # missing required field or malformed epoch point
            raise RecordError(f"malformed record: {exc}") from None
        if record.status not in STATUSES:
            raise RecordError(f"unknown status {record.status!r}")
        if (
            not isinstance(record.metric_names, list)
            or not record.metric_names
            or not all(isinstance(n, str) for n in record.metric_names)
        ):
            raise RecordError("metric_names must be a non-empty list of names")
        if not isinstance(record.last_metrics, dict) or not isinstance(record.best_metrics, dict):
            raise RecordError("last_metrics and best_metrics must be objects")
        if record.status == "completed":
            checks = (
                (f"last_{record.primary_metric}", record.last_value()),
                (f"best_{record.primary_metric}", record.best_value()),
            )
            for name, value in checks:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise RecordError(f"completed record without a finite {name}")
            problem = record.curve_problem()
            if problem:
                raise RecordError(f"completed record with {problem}")
        return record


def write_record(record: RunRecord, run_dir: str | os.PathLike) -> Path:
    """Write ``record.json`` atomically into ``run_dir``; returns its path."""
    from benchmark.store.atomic import write_text

    text = json.dumps(record.to_dict(), indent=1, sort_keys=True, allow_nan=False) + "\n"
    return write_text(Path(run_dir) / RECORD_FILE, text)


def read_record(path: str | os.PathLike) -> RunRecord:
    """Read one record; raises :class:`RecordError` on anything unusable."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordError(f"{path}: unreadable ({exc})") from None
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    try:
        return RunRecord.from_dict(data)
    except RecordError as exc:
        raise RecordError(f"{path}: {exc}") from None
