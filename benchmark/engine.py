"""MMEngine pieces of the suite: the top-k metric and the hooks around a run.

- :class:`TopKAccuracy`: top-1 / top-5 of the student on the validation split.
- :class:`EpochTracker`: tells the model the current epoch (counted from 1; DKD warm-up).
- :class:`NonFiniteLossGuard`: stops a run whose loss is NaN/inf (the run is recorded as failed).
- :class:`RunRecordHook`: per-epoch curve into the run record, written after every epoch.
- :class:`StepTimingHook`: per-iteration data wait / teacher forward / student forward+backward /
  distillation loss, peak memory and images/s, averaged after warm-up.
"""
from __future__ import annotations

import math
import resource
import sys
import time
from typing import Any, Callable, Sequence

import torch
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS, METRICS

from benchmark.records import EpochPoint, RunRecord


def unwrap(model: Any) -> Any:
    return model.module if is_model_wrapper(model) else model


@METRICS.register_module()
class TopKAccuracy(BaseMetric):
    """Top-k accuracy in percent, from the ``{'logits', 'target'}`` batches of ``predict`` mode."""

    default_prefix = "val"

    def __init__(self, topk: Sequence[int] = (1, 5), **kwargs) -> None:
        super().__init__(**kwargs)
        self.topk = tuple(topk)

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            logits, target = sample["logits"], sample["target"]
            k_max = min(max(self.topk), logits.shape[1])
            ranked = logits.topk(k_max, dim=1).indices
            hits = ranked.eq(target.view(-1, 1))
            self.results.append({f"top{k}": hits[:, : min(k, k_max)].any(1).sum().item() for k in self.topk} | {"n": len(target)})

    def compute_metrics(self, results: list) -> dict[str, float]:
        total = sum(r["n"] for r in results)
        return {f"top{k}": 100.0 * sum(r[f"top{k}"] for r in results) / total for k in self.topk}


@HOOKS.register_module()
class EpochTracker(Hook):
    priority = "VERY_HIGH"

    def before_train_epoch(self, runner) -> None:
        unwrap(runner.model).epoch = runner.epoch + 1


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@HOOKS.register_module()
class NonFiniteLossGuard(Hook):
    priority = "HIGH"

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not outputs:
            return
        for name, value in outputs.items():
            if torch.is_tensor(value) and value.numel() == 1 and not math.isfinite(value.item()):
                raise NonFiniteLossError(
                    f"{name} became {value.item()} at epoch {runner.epoch + 1}, iteration {batch_idx + 1}"
                )


@HOOKS.register_module()
class RunRecordHook(Hook):
    """Appends (epoch, top-1, top-5, mean loss) to the run record after each validation.

    The record is written after every epoch, so an interrupted run keeps its curve and a
    resumed one continues it (epochs already present are replaced, not duplicated).
    """

    priority = "LOW"

    def __init__(self, record: RunRecord, save: Callable[[RunRecord], Any], progress: Callable[[str], Any] | None = None) -> None:
        self.record, self.save, self.progress = record, save, progress
        self._loss_sum, self._loss_count = 0.0, 0
        self._epoch_start = time.perf_counter()

    def before_train_epoch(self, runner) -> None:
        self._loss_sum, self._loss_count = 0.0, 0
        self._epoch_start = time.perf_counter()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if outputs and "loss" in outputs:
            loss = outputs["loss"]
            self._loss_sum += float(loss.detach() if torch.is_tensor(loss) else loss)
            self._loss_count += 1

    def after_val_epoch(self, runner, metrics: dict[str, float] | None = None) -> None:
        if not metrics or "val/top1" not in metrics:
            return
        epoch = runner.epoch  # the train loop has already counted the finished epoch
        loss = self._loss_sum / self._loss_count if self._loss_count else None
        point = EpochPoint(epoch=epoch, top1=round(metrics["val/top1"], 4), top5=round(metrics["val/top5"], 4), loss=loss)
        self.record.curve = [p for p in self.record.curve if p.epoch < epoch] + [point]
        self.save(self.record)
        if self.progress:
            seconds = time.perf_counter() - self._epoch_start
            self.progress(f"epoch {epoch}/{runner.max_epochs}  top1 {point.top1:.2f}  loss {loss if loss is None else round(loss, 4)}  ({seconds:.1f}s)")


def peak_memory_mb(device: torch.device | str) -> tuple[float, str]:
    """Peak memory and what it measures: CUDA allocator peak, or the process's max RSS on CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, "cpu_max_rss"


@HOOKS.register_module()
class StepTimingHook(Hook):
    """Mean per-iteration timings (ms) after ``warmup`` iterations, into ``self.summary``.

    teacher forward / student forward / distillation loss come from the model (timed with
    CUDA synchronisation on GPU); student forward+backward = iteration time − teacher forward
    − distillation loss (it includes the optimiser step); data wait = time between the end
    of one iteration and the start of the next.
    """

    priority = "VERY_LOW"

    def __init__(self, warmup: int = 5) -> None:
        self.warmup = self._warmup = warmup
        self._sums: dict[str, float] = {}
        self._count = 0
        self._images = 0
        self._last_end: float | None = None
        self._start = 0.0
        self.summary: dict[str, float] = {}

    def before_train(self, runner) -> None:
        # Short runs (tests, smoke runs) still get measured iterations.
        self._warmup = min(self.warmup, runner.max_iters // 2)

    def _sync(self, runner) -> None:
        if torch.cuda.is_available() and next(unwrap(runner.model).parameters()).is_cuda:
            torch.cuda.synchronize()

    def before_train_epoch(self, runner) -> None:
        self._last_end = None  # the loader restart at an epoch boundary is not a data wait

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._sync(runner)
        self._start = time.perf_counter()
        self._data_wait = (self._start - self._last_end) if self._last_end is not None else None
        unwrap(runner.model).measure_time = runner.iter >= self._warmup

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._sync(runner)
        end = time.perf_counter()
        model = unwrap(runner.model)
        if model.measure_time and model.last_timing and self._data_wait is not None:
            total_ms = 1e3 * (end - self._start)
            timing = model.last_timing
            sample = {
                "data_wait_ms": 1e3 * self._data_wait,
                "teacher_forward_ms": timing["teacher_forward_ms"],
                "student_forward_backward_ms": total_ms - timing["teacher_forward_ms"] - timing["distill_loss_ms"],
                "distill_loss_ms": timing["distill_loss_ms"],
                "iteration_ms": total_ms,
            }
            for key, value in sample.items():
                self._sums[key] = self._sums.get(key, 0.0) + value
            self._count += 1
            self._images += len(data_batch["target"]) if data_batch and "target" in data_batch else 0
        self._last_end = end

    def after_train(self, runner) -> None:
        if not self._count:
            return
        self.summary = {key: round(total / self._count, 4) for key, total in self._sums.items()}
        seconds = (self._sums["iteration_ms"] + self._sums["data_wait_ms"]) / 1e3
        self.summary["images_per_s"] = round(self._images / seconds, 2) if seconds > 0 else float("nan")
        self.summary["measured_iterations"] = self._count
        device = next(unwrap(runner.model).parameters()).device
        self.summary["peak_memory_mb"], self.memory_kind = peak_memory_mb(device)
        self.summary["peak_memory_mb"] = round(self.summary["peak_memory_mb"], 1)
