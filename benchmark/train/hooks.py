"""MMEngine pieces of the suite: the top-k metric and the hooks around a run.

- :class:`TopKAccuracy`: top-1 / top-5 of the student on the validation split.
- :class:`EpochTracker`: tells the model the current epoch (counted from 1; DKD warm-up).
- :class:`NonFiniteLossGuard`: stops a run whose loss is NaN/inf (the run is recorded as failed).
- :class:`RunRecordHook`: per-epoch curve of the suite's metrics (top-1/top-5, or e.g. COCO bbox
  mAP) into the run record, written after every validation.
- :class:`StepTimingHook`: per-iteration data wait / teacher forward / student forward+backward /
  distillation loss, peak memory and images/s, averaged after warm-up.
"""

from __future__ import annotations

import contextlib
import math
import random
import resource
import sys
import time
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
import torch
from mmengine.dist import get_rank
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import MMDistributedDataParallel, is_model_wrapper
from mmengine.optim import OptimWrapper
from mmengine.registry import FUNCTIONS, HOOKS, METRICS, MODEL_WRAPPERS, OPTIM_WRAPPERS
from mmengine.runner import set_random_seed

from benchmark import faults
from benchmark.store.records import CLASSIFICATION, CLASSIFICATION_METRICS, EpochPoint, Metric, RunRecord, metric_label
from methods import distributed


def unwrap(model: Any) -> Any:
    return model.module if is_model_wrapper(model) else model


def topk_hits(logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int]) -> list[tuple[bool, ...]]:
    """Per image: whether the target is among the ``k`` highest logits, for each ``k`` of ``topk``."""
    k_max = min(max(topk), logits.shape[1])
    ranked = logits.topk(k_max, dim=1).indices
    hits = ranked.eq(target.view(-1, 1))
    return [tuple(row) for row in torch.stack([hits[:, : min(k, k_max)].any(1) for k in topk], dim=1).tolist()]


@METRICS.register_module()
class TopKAccuracy(BaseMetric):
    """Top-k accuracy in percent, from the ``{'logits', 'target'}`` batches of ``predict`` mode."""

    default_prefix = "val"

    def __init__(self, topk: Sequence[int] = (1, 5), **kwargs) -> None:
        super().__init__(**kwargs)
        self.topk = tuple(topk)

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        # One result per image: under DDP, MMEngine's sampler pads the validation split with
        # repeats so every process gets as many images, and ``collect_results`` trims the
        # gathered results to the dataset's size — which is only right at image granularity.
        for sample in data_samples:
            self.results.extend(topk_hits(sample["logits"], sample["target"], self.topk))

    def compute_metrics(self, results: list) -> dict[str, float]:
        total = len(results)
        return {f"top{k}": 100.0 * sum(row[i] for row in results) / total for i, k in enumerate(self.topk)}


@HOOKS.register_module()
class EpochTracker(Hook):
    priority = "VERY_HIGH"

    def before_train_epoch(self, runner) -> None:
        model = unwrap(runner.model)
        if hasattr(model, "begin_epoch"):  # classification models and cohorts: also their methods' streams
            model.begin_epoch(runner.epoch + 1, get_rank())
        else:
            model.epoch = runner.epoch + 1


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@HOOKS.register_module()
class NonFiniteLossGuard(Hook):
    priority = "HIGH"

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not outputs:
            return
        context = dict(epoch=runner.epoch + 1, iter=batch_idx + 1, method=method_of(runner), rank=distributed.rank())
        if faults.matches("nan_loss", **context) == "NAN":
            outputs["loss"] = torch.tensor(float("nan"))
        bad = [
            (name, value.item())
            for name, value in outputs.items()
            if torch.is_tensor(value) and value.numel() == 1 and not math.isfinite(value.item())
        ]
        where = f"at epoch {runner.epoch + 1}, iteration {batch_idx + 1}"
        if distributed.world_size() > 1:
            # Every rank learns whether any rank went non-finite, so all stop together and
            # none waits forever in the next collective. The flag carries the (highest) rank.
            flag = torch.tensor([float(distributed.rank() + 1) if bad else 0.0])
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            if flag.item():
                culprit = int(flag.item()) - 1
                detail = (
                    f"{bad[0][0]} became {bad[0][1]}"
                    if bad and culprit == distributed.rank()
                    else "the loss became non-finite"
                )
                raise NonFiniteLossError(f"{detail} on rank {culprit} {where}")
        elif bad:
            raise NonFiniteLossError(f"{bad[0][0]} became {bad[0][1]} {where}")


@OPTIM_WRAPPERS.register_module()
class CPUAutocastOptimWrapper(OptimWrapper):
    """bf16 autocast on CPU, for ``--amp`` where MMEngine's AmpOptimWrapper (CUDA only) cannot run.

    bf16 keeps fp32's exponent range, so no loss scaling is needed.
    """

    def __init__(self, dtype: str = "bfloat16", **kwargs) -> None:
        super().__init__(**kwargs)
        self.cast_dtype = getattr(torch, dtype)

    @contextlib.contextmanager
    def optim_context(self, model):
        with super().optim_context(model), torch.autocast("cpu", dtype=self.cast_dtype):
            yield


@FUNCTIONS.register_module()
def seed_data_worker(worker_id: int, run_seed: int, epoch: int = 0, rank: int = 0) -> None:
    """Seeds ``random``, numpy and torch in one data-loader worker from (run seed, epoch, rank, worker id).

    MMEngine's default ``worker_init_fn`` seeds a worker with ``seed + worker_id`` (+ rank), the
    same at every epoch; with workers restarted each epoch every worker slot then replays one
    random stream (ImageNet's crops and flips, MMDetection's numpy-drawn flips and scales).
    torchvision's loader, as the references used it, draws fresh streams each epoch. The epoch
    is bound by :class:`EpochSeeder` (below) before the epoch's workers start, so a
    resumed run draws exactly what an uninterrupted one draws.
    """
    state = np.random.SeedSequence([run_seed, epoch, rank, worker_id]).generate_state(2, dtype=np.uint32)
    random.seed(int(state[0]))
    np.random.seed(int(state[0]))
    torch.manual_seed(int(state[1]))


class EpochSeeder(Hook):
    """Re-seeds every RNG at each epoch start from (run seed, epoch).

    The random state then depends only on where training is, not on how it got there,
    so a resumed run continues exactly like an uninterrupted one.
    """

    priority = "VERY_HIGH"

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def before_train_epoch(self, runner) -> None:
        # Under DDP each rank draws its own augmentations and CRD negatives (distinct, reproducible).
        set_random_seed(self.seed * 100_003 + runner.epoch + 1_000_003 * get_rank())
        # The epoch's data-loader workers start after this hook: bind (seed, epoch, rank) for them.
        loader = runner.train_loop.dataloader
        if loader.num_workers > 0:
            loader.worker_init_fn = partial(seed_data_worker, run_seed=self.seed, epoch=runner.epoch, rank=get_rank())


@MODEL_WRAPPERS.register_module()
class DeviceAwareDistributedDataParallel(MMDistributedDataParallel):
    """MMEngine's DDP wrapper, also on CPU (gloo), where ``device_ids`` must be None."""

    def __init__(self, module: torch.nn.Module, device_ids: Any = None, **kwargs) -> None:
        on_cpu = all(not p.is_cuda for p in module.parameters())
        super().__init__(module=module, device_ids=None if on_cpu else device_ids, **kwargs)


RUN_STATE_KEY = "kd_run_state"  # our part of every training checkpoint


def method_of(runner) -> str | None:
    """The registry name of the run's method (for fault-injection contexts)."""
    with_method = getattr(unwrap(runner.model), "method_name", None)
    return with_method or (runner.cfg.get("model", {}).get("method", {}) or {}).get("type")


def methods_of(runner) -> list[str | None]:
    """The methods training in this runner: a cohort's active members, else the run's one."""
    model = unwrap(runner.model)
    return list(model.active) if hasattr(model, "active") else [method_of(runner)]


def metric_values(metrics: dict[str, float] | None, specs: Sequence[Metric]) -> dict[str, float | None] | None:
    """The suite's metrics (record names, scaled) from MMEngine's validation results; None when
    the validation reported none of them and the suite has no value for that case."""
    metrics = metrics or {}
    if not any(m.key in metrics for m in specs) and any(m.when_absent is None for m in specs):
        return None
    values: dict[str, float | None] = {}
    for metric in specs:
        raw = metrics.get(metric.key)
        if raw is None:
            values[metric.name] = metric.when_absent
        elif metric.undefined_below is not None and float(raw) < metric.undefined_below:
            values[metric.name] = None
        else:
            values[metric.name] = round(float(raw) * metric.scale, 4)
    return values


@HOOKS.register_module()
class RunRecordHook(Hook):
    """Appends (epoch, the suite's metrics, mean loss) to the run record after each validation.

    ``metrics`` says where each of the suite's metrics is in MMEngine's validation results
    (default: ``val/top1``, ``val/top5`` of :class:`TopKAccuracy`).

    The record is written after every validation, so an interrupted run keeps its curve.
    What a resumed run needs to leave exactly the record of an uninterrupted one travels
    with each checkpoint (``RUN_STATE_KEY``): the wall time spent up to it and the mean
    loss of the epoch it closes. On resume, curve points after the checkpoint's epoch are
    dropped (they will be recomputed identically), and an epoch whose checkpoint was
    written but whose validation never ran (a kill between the two) is validated first.
    """

    priority = "LOW"  # before CheckpointHook (VERY_LOW) in after_train_epoch

    def __init__(
        self,
        record: RunRecord,
        save: Callable[[RunRecord], Any],
        progress: Callable[[str], Any] | None = None,
        metrics: Sequence[Metric] = CLASSIFICATION,
    ) -> None:
        self.record, self.save, self.progress = record, save, progress
        self.metrics = tuple(metrics)
        self._loss_sum, self._loss_count = 0.0, 0
        self._epoch_loss: float | None = None
        self._epoch_start = self._attempt_start = time.perf_counter()
        self._wall_base = 0.0  # seconds of training before this attempt (from the checkpoint)

    def wall_time(self) -> float:
        """Seconds of training behind the current state, summed over attempts."""
        return round(self._wall_base + time.perf_counter() - self._attempt_start, 3)

    def write(self) -> None:
        self.record.wall_time_s = self.wall_time()
        self.save(self.record)  # a no-op on ranks other than 0

    def needs_validation(self, epoch: int) -> bool:
        """Resumed from epoch ``epoch``'s checkpoint, but that epoch was never validated."""
        return epoch > 0 and epoch not in {p.epoch for p in self.record.curve}

    def before_train(self, runner) -> None:
        if self.needs_validation(runner.epoch):
            runner.val_loop.run()

    def before_train_epoch(self, runner) -> None:
        self._loss_sum, self._loss_count = 0.0, 0
        self._epoch_start = time.perf_counter()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if outputs and "loss" in outputs:
            loss = outputs["loss"]
            self._loss_sum += float(loss.detach() if torch.is_tensor(loss) else loss)
            self._loss_count += 1

    def after_train_epoch(self, runner) -> None:
        self._epoch_loss = self._loss_sum / self._loss_count if self._loss_count else None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint.setdefault(RUN_STATE_KEY, {}).update(wall_time_s=self.wall_time(), epoch_loss=self._epoch_loss)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get(RUN_STATE_KEY) or {}
        self._wall_base = float(state.get("wall_time_s") or 0.0)
        self._attempt_start = time.perf_counter()
        self._epoch_loss = state.get("epoch_loss")
        epoch = int(checkpoint["meta"]["epoch"])
        self.record.curve = [p for p in self.record.curve if p.epoch <= epoch]

    def point(self, epoch: int, metrics: dict[str, float] | None) -> EpochPoint | None:
        """The curve point of one validation; None when it reported none of the suite's metrics."""
        values = metric_values(metrics, self.metrics)
        if values is None:
            return None
        if {m.name for m in self.metrics} <= set(CLASSIFICATION_METRICS):
            return EpochPoint(epoch=epoch, top1=values.get("top1"), top5=values.get("top5"), loss=self._epoch_loss)
        return EpochPoint(epoch=epoch, loss=self._epoch_loss, metrics=values)

    def after_val_epoch(self, runner, metrics: dict[str, float] | None = None) -> None:
        epoch = runner.epoch  # the train loop has already counted the finished epoch
        point = self.point(epoch, metrics)
        if point is None:
            return
        self.record.curve = [p for p in self.record.curve if p.epoch < epoch] + [point]
        self.write()
        if self.progress:
            seconds = time.perf_counter() - self._epoch_start
            loss = point.loss if point.loss is None else round(point.loss, 4)
            primary = self.metrics[0].name
            value = point.value(primary)
            shown = "–" if value is None else f"{value:.2f}"
            label = "top1" if primary == "top1" else metric_label(primary)
            self.progress(f"epoch {epoch}/{runner.max_epochs}  {label} {shown}  loss {loss}  ({seconds:.1f}s)")
        faults.fire("after_validation", epoch=epoch, method=method_of(runner))


@HOOKS.register_module()
class FaultPoints(Hook):
    """Calls :func:`benchmark.faults.fire` at the points the reliability tests interrupt."""

    priority = "LOWEST"  # after CheckpointHook: the epoch's checkpoint is on disk

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        for method in methods_of(runner):
            faults.fire("mid_epoch", epoch=runner.epoch + 1, iter=batch_idx + 1, method=method)

    def after_train_epoch(self, runner) -> None:
        for method in methods_of(runner):
            faults.fire("after_checkpoint", epoch=runner.epoch + 1, method=method)


def batch_images(data_batch: Any) -> int:
    """Images in one training batch: ``target`` of the classification batches, else ``inputs``
    (MMDetection's batches: a list of images and their data samples)."""
    if not isinstance(data_batch, dict):
        return 0
    for key in ("target", "inputs"):
        if key in data_batch:
            return len(data_batch[key])
    return 0


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
            timing = model.last_timing
            # A cohort member's iteration: the shared data and teacher pass plus its own step.
            total_ms = timing.get("iteration_ms", 1e3 * (end - self._start))
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
            self._images += batch_images(data_batch)
        self._last_end = end

    # The sums travel with each checkpoint, so a resumed run reports images/s and timings
    # over all its training iterations, not only those of its last attempt.
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint.setdefault(RUN_STATE_KEY, {})["timing"] = {
            "sums": dict(self._sums),
            "count": self._count,
            "images": self._images,
        }

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        timing = (checkpoint.get(RUN_STATE_KEY) or {}).get("timing") or {}
        self._sums = {key: float(value) for key, value in (timing.get("sums") or {}).items()}
        self._count, self._images = int(timing.get("count", 0)), int(timing.get("images", 0))

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
