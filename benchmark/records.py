"""Run records: the machine-readable result of one (suite, pair, method, recipe, seed) run.

One JSON file per run, ``record.json`` in the run's directory. The aggregator reads
them back; anything it cannot trust (partial, corrupt, unknown schema) raises
:class:`RecordError` here and is skipped and counted there.

Written atomically (temp file + rename) so a crash never leaves half a record.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
RECORD_FILE = "record.json"
STATUSES = ("running", "completed", "failed")
# Method names used for the rows that are not distillation methods.
TEACHER_ROW = "teacher"  # the teacher network trained alone (CE), or a loaded checkpoint
STUDENT_ROW = "ce"  # the student trained alone with cross-entropy: the baseline row


class RecordError(ValueError):
    """A run record that cannot be used (corrupt, partial, unknown schema)."""


@dataclass
class EpochPoint:
    epoch: int
    top1: float
    top5: float
    loss: float | None = None  # mean training loss of the epoch (sum of the weighted terms)


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
    schema_version: int = SCHEMA_VERSION

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
        """Derive last/best statistics from the per-epoch curve."""
        if not self.curve:
            return
        last = self.curve[-1]
        best = max(self.curve, key=lambda p: (p.top1, -p.epoch))
        self.last_top1, self.last_top5 = last.top1, last.top5
        self.best_top1, self.best_top5, self.best_epoch = best.top1, best.top5, best.epoch

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunRecord":
        if not isinstance(data, dict):
            raise RecordError("record is not a JSON object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise RecordError(f"unknown schema_version {version!r} (this code reads {SCHEMA_VERSION})")
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
        if record.status == "completed":
            for name in ("last_top1", "best_top1"):
                value = getattr(record, name)
                if not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise RecordError(f"completed record without a finite {name}")
            problem = record.curve_problem()
            if problem:
                raise RecordError(f"completed record with {problem}")
        return record


def write_record(record: RunRecord, run_dir: str | os.PathLike) -> Path:
    """Write ``record.json`` atomically into ``run_dir``; returns its path."""
    from benchmark.atomic import write_text

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
