"""One run of the suite on MMEngine: config assembly, training, evaluation, run record.

``RunSpec`` names a run; :func:`build_config` turns it into an MMEngine ``Config`` from the
``_base_`` files in ``benchmark/configs`` (runtime, dataset, schedule) plus the run's own
values — or, for a suite that builds its own configs (``suite.build_config``, e.g. COCO
detection from the MMDetection-style files in ``benchmark/configs/coco``), from the suite —
and dumps it into the run directory; :func:`execute` trains it with MMEngine's
``Runner`` (resuming from the run's last checkpoint when asked), exports the student in
the community checkpoint format and writes the final run record.
"""
from __future__ import annotations

import os
import platform
import subprocess
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.dist import get_rank
from mmengine.runner import Runner, set_random_seed

import benchmark.data  # noqa: F401  (registers datasets and the preprocessor)
import benchmark.distill_model  # noqa: F401  (registers DistillationModel)
import benchmark.engine  # noqa: F401  (registers the metric and hooks)
import benchmark.launch  # noqa: F401  (registers the DDP wrapper)
from benchmark import faults
from benchmark.store.atomic import atomic_path
from benchmark.store.atomic import write_text as atomic_write_text
from benchmark.store.checkpoints import (
    allow_mmengine_checkpoint_globals,
    epoch_checkpoints,
    newest_loadable_checkpoint,
    save_community_checkpoint,
)
from benchmark.engine import NonFiniteLossError, RunRecordHook, StepTimingHook, peak_memory_mb, seed_data_worker
from benchmark.store.records import CLASSIFICATION, RECORD_FILE, Metric, RunRecord, read_record, write_record
from benchmark.suites import Pair, ResolvedRecipe, Suite
from methods import METHODS

CONFIG_DIR = Path(__file__).parent / "configs" / "_base_"
REPO_ROOT = Path(__file__).resolve().parent.parent
STUDENT_EXPORT = "student.pth"


@dataclass
class RunSpec:
    suite: Suite
    pair: Pair
    method: str  # registry name, or "teacher" for a teacher trained alone
    recipe: ResolvedRecipe
    seed: int
    run_dir: Path
    data_root: str | None = None
    teacher_checkpoint: str | None = None
    teacher_checkpoint_sha256: str | None = None
    teacher_top1: float | None = None
    device: str = "cpu"
    num_workers: int | None = None
    deterministic: bool = False
    log_level: str = "ERROR"  # MMEngine's own logging; "INFO" with --verbose
    extra: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1  # processes of one DDP run; the recipe's batch stays the global batch
    sync_bn: bool = False  # SyncBatchNorm in the student under DDP
    tensorboard: bool = False  # also log to TensorBoard (MMEngine's TensorboardVisBackend)

    @property
    def per_process_batch(self) -> int:
        return self.recipe.schedule.batch_size // self.world_size

    @property
    def student(self) -> str:
        return self.pair.teacher if self.method == "teacher" else self.pair.student


def _contrast_k(method_cfg: dict[str, Any]) -> int | None:
    """Negatives per sample the data side must draw for this method (CRD), else None."""
    return METHODS.get(method_cfg["type"]).negatives_per_sample(method_cfg)


def _schedule_config(spec: RunSpec) -> dict[str, Any]:
    schedule = spec.recipe.schedule
    base = Config.fromfile(CONFIG_DIR / "schedules" / f"{schedule.kind}.py").to_dict()
    base["optim_wrapper"]["optimizer"].update(lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay)
    base["train_cfg"]["max_epochs"] = schedule.epochs
    if schedule.kind == "step":
        base["param_scheduler"][0].update(milestones=list(schedule.milestones), gamma=schedule.gamma)
    elif schedule.kind == "cosine":
        base["param_scheduler"][0].update(T_max=schedule.epochs)
    return base


def build_config(spec: RunSpec, num_data: int | None, check_files: bool = True) -> Config:
    """The run's complete MMEngine config: the suite's part, then the one run-level overlay.

    ``check_files=False`` builds it without data or teacher files (``--dry-run --print-config``).
    """
    cfg = spec.suite.build_config(spec, num_data, check_files=check_files)
    if cfg is None:  # the standard classification config
        cfg = classification_config(spec, num_data)
    return apply_run_overlay(cfg, spec)


def classification_config(spec: RunSpec, num_data: int | None) -> Config:
    """The suite's part of a classification run: dataset, schedule, the distillation model."""
    cfg = Config.fromfile(CONFIG_DIR / "default_runtime.py")
    dataset = Config.fromfile(CONFIG_DIR / "datasets" / f"{spec.suite.dataset_base}.py").to_dict()
    cfg.merge_from_dict(dataset)
    cfg.merge_from_dict(_schedule_config(spec))

    method_cfg = {"type": "ce"} if spec.method == "teacher" else dict(spec.recipe.method)
    contrast_k = _contrast_k(method_cfg)
    if spec.suite.needs_data_root:
        for split in ("train_dataloader", "val_dataloader"):
            cfg[split].dataset.data_root = spec.data_root
    if contrast_k is not None:
        cfg.train_dataloader.dataset.contrast_k = contrast_k
    cfg.model = dict(
        type="DistillationModel",
        student=spec.student,
        teacher=None if spec.method == "teacher" else spec.pair.teacher,
        teacher_checkpoint=spec.teacher_checkpoint,
        method=method_cfg,
        num_classes=spec.suite.num_classes,
        num_data=num_data,
        data_preprocessor=cfg.pop("data_preprocessor"),
    )
    cfg.pop("data_root", None)
    cfg.pop("num_classes", None)
    return cfg


def apply_run_overlay(cfg: Config, spec: RunSpec) -> Config:
    """What the command line sets for one run, applied the same way to every suite's config.

    Workers, the per-process batch, DDP (wrapper, backend, SyncBN), bf16 autocast,
    channels-last, TensorBoard, the seed, the log level and the work dir. A suite builder
    never sets these itself, so no option can be recorded without being applied.
    """
    schedule = spec.recipe.schedule
    if schedule.batch_size % spec.world_size:
        raise ValueError(f"batch {schedule.batch_size} is not divisible by {spec.world_size} processes")
    for split in ("train_dataloader", "val_dataloader", "test_dataloader"):
        loader = cfg.get(split)
        if loader is None:
            continue
        if spec.num_workers is not None:
            loader.num_workers = spec.num_workers
        # Fresh workers every epoch, each seeded from (run seed, epoch, rank, worker id): a
        # resumed run draws the augmentations of an uninterrupted one, and no epoch replays
        # another's random stream (MMEngine's default re-seeds workers identically each epoch).
        loader.persistent_workers = False
        loader.worker_init_fn = dict(type="seed_data_worker", run_seed=spec.seed)
    cfg.train_dataloader.batch_size = spec.per_process_batch
    if spec.world_size > 1:
        cfg.env_cfg.dist_cfg = dict(backend="gloo" if spec.device == "cpu" else "nccl")
        # The teacher is frozen before wrapping, so DDP needs no find_unused_parameters.
        cfg.model_wrapper_cfg = dict(type="DeviceAwareDistributedDataParallel", broadcast_buffers=False,
                                     find_unused_parameters=False)
        if spec.sync_bn:
            cfg.sync_bn = "torch"
    amp = spec.recipe.options.get("amp")
    if amp:
        # MMEngine's AmpOptimWrapper needs CUDA; on CPU the same bf16 autocast through ours.
        cfg.optim_wrapper.type = "AmpOptimWrapper" if spec.device != "cpu" else "CPUAutocastOptimWrapper"
        cfg.optim_wrapper.dtype = amp
    if spec.recipe.options.get("channels_last"):
        cfg.model.channels_last = True
    if spec.tensorboard:
        # Keep the suite's visualizer class (MMDetection's DetLocalVisualizer), add the backend.
        visualizer = dict(cfg.get("visualizer") or dict(type="Visualizer"))
        visualizer["vis_backends"] = [dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")]
        cfg.visualizer = visualizer
    cfg.randomness = dict(seed=spec.seed, deterministic=spec.deterministic)
    cfg.log_level = spec.log_level
    cfg.work_dir = str(spec.run_dir / "mmengine")
    cfg.recipe = spec.recipe.to_dict()
    return cfg


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


def environment(device: str) -> dict[str, Any]:
    import mmengine
    import torchvision

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else (platform.processor() or platform.machine())
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "mmengine": mmengine.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "device": f"{device} ({name})",
        "world_size": 1,  # set from the run spec by new_record
        "threads": torch.get_num_threads(),
    }


def suite_metrics(suite: Suite) -> tuple[Metric, ...]:
    """The suite's metrics (``suite.metrics``), top-1/top-5 for the classification suites."""
    return tuple(suite.metrics or CLASSIFICATION)


def new_record(spec: RunSpec) -> RunRecord:
    schedule = spec.recipe.schedule
    metrics = suite_metrics(spec.suite)
    extra = dict(spec.extra, recipe=spec.recipe.to_dict(),
                 **({"per_process_batch": spec.per_process_batch, "sync_bn": spec.sync_bn} if spec.world_size > 1 else {}))
    if metrics != CLASSIFICATION and spec.teacher_checkpoint:
        extra.setdefault("teacher_file", Path(spec.teacher_checkpoint).name)  # which checkpoint, for the tables
    return RunRecord(
        suite=spec.suite.name,
        pair=spec.pair.name,
        teacher=spec.pair.teacher,
        student=spec.student,
        method=spec.method,
        recipe=spec.recipe.name,
        recipe_hash=spec.recipe.hash,
        seed=spec.seed,
        epochs=schedule.epochs,
        batch_size=schedule.batch_size,
        lr=schedule.lr,
        teacher_checkpoint_sha256=spec.teacher_checkpoint_sha256,
        teacher_top1=spec.teacher_top1,
        env={**environment(spec.device), "world_size": spec.world_size, **_suite_env(spec.suite)},
        extra=extra,
        metric_names=[m.name for m in metrics],
    )


def _suite_env(suite: Suite) -> dict[str, Any]:
    """Versions of the suite's own stack (e.g. mmdet, mmcv for detection) for the record's env."""
    return suite.stack_versions()


class AtomicCheckpointRunner(Runner):
    """MMEngine's Runner whose checkpoints appear atomically.

    MMEngine writes ``epoch_<k>.pth`` in place, so a kill during ``torch.save`` (or a full
    disk) leaves a torn file under the final name. Here each checkpoint is written to a
    hidden temporary file in the same directory, fsync'ed and renamed into place.
    """

    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs) -> None:
        if get_rank() != 0:  # MMEngine saves on the main process only
            return
        final = Path(out_dir) / filename
        with atomic_path(final) as tmp:
            super().save_checkpoint(str(tmp.parent), tmp.name, *args, **kwargs)


def _set_aside_old_checkpoints(work_dir: Path, say: Callable[[str], Any]) -> None:
    """A run that starts over must never resume later from an earlier attempt's checkpoint."""
    old = epoch_checkpoints(work_dir)
    for _epoch, path in old:
        os.replace(path, path.with_name(path.name + ".abandoned"))
    if old:
        say(f"    earlier checkpoints in {work_dir} renamed *.abandoned (this run starts over)")


def execute(
    spec: RunSpec,
    num_data: int,
    record: RunRecord,
    resume: bool,
    progress: Callable[[str], Any] | None = None,
    hooks: Sequence[Hook] = (),
    say: Callable[[str], Any] = print,
) -> RunRecord:
    """Train one run to the end, or continue it; returns its completed or failed record.

    With ``resume``, training continues from the newest checkpoint that loads (torn ones
    are set aside); without one, or without ``resume``, the run starts over with a fresh
    record. ``hooks`` are extra MMEngine hooks (e.g. an interruption in tests).
    """
    cfg = build_config(spec, num_data)
    work_dir = Path(cfg.work_dir)
    checkpoint = newest_loadable_checkpoint(work_dir, say) if resume else None
    if checkpoint is None:
        if resume:
            say(f"    no checkpoint of {spec.run_dir} loads: the run starts over")
        _set_aside_old_checkpoints(work_dir, say)
        attempts = record.extra.get("attempts", 0)
        record = new_record(spec)
        record.extra["attempts"] = attempts
    record.extra["attempts"] = record.extra.get("attempts", 0) + 1
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(spec.run_dir / "config.py", cfg.pretty_text)
    record.status, record.failure = "running", None
    write_record(record, spec.run_dir)
    checkpoint_path = str(checkpoint[1]) if checkpoint else None
    if spec.world_size == 1:
        return train(spec, cfg, record, checkpoint_path, progress, hooks)
    from benchmark.launch import train_distributed

    train_distributed(spec, num_data, record, checkpoint_path, show_progress=progress is not None)
    return read_record(spec.run_dir / RECORD_FILE)


def train(
    spec: RunSpec,
    cfg: Config,
    record: RunRecord,
    checkpoint: str | None,
    progress: Callable[[str], Any] | None = None,
    hooks: Sequence[Hook] = (),
) -> RunRecord:
    """Train (or continue from ``checkpoint``) in this process — one rank of a DDP run when
    a process group is initialised — and complete the record. Only rank 0 writes files."""
    main_process = get_rank() == 0
    save = (lambda rec: write_record(rec, spec.run_dir)) if main_process else (lambda rec: None)
    # Built explicitly (not Runner.from_cfg) so every run gets a unique experiment name:
    # MMEngine keys its global logger / message hub / visualiser by that name.
    runner = AtomicCheckpointRunner(
        model=cfg.model,
        work_dir=cfg.work_dir,
        train_dataloader=cfg.train_dataloader,
        val_dataloader=cfg.val_dataloader,
        train_cfg=cfg.train_cfg,
        val_cfg=cfg.val_cfg,
        optim_wrapper=cfg.optim_wrapper,
        param_scheduler=cfg.param_scheduler,
        val_evaluator=cfg.val_evaluator,
        default_hooks=cfg.default_hooks,
        custom_hooks=[dict(type="EpochTracker"), dict(type="NonFiniteLossGuard"), dict(type="FaultPoints")],
        load_from=checkpoint,
        resume=checkpoint is not None,
        launcher="pytorch" if spec.world_size > 1 else "none",
        env_cfg=cfg.env_cfg,
        log_level=cfg.log_level,
        randomness=cfg.randomness,
        visualizer=cfg.get("visualizer"),
        log_processor=cfg.get("log_processor"),
        default_scope=cfg.get("default_scope") or "mmengine",
        experiment_name=f"{spec.suite.name}_{spec.pair.name}_{spec.method}_s{spec.seed}_{uuid.uuid4().hex[:8]}",
        cfg=cfg,
    )
    timing = StepTimingHook()
    record_hook = RunRecordHook(record, save, progress if main_process else None, metrics=suite_metrics(spec.suite))
    runner.register_hook(EpochSeeder(spec.seed))
    runner.register_hook(record_hook)
    runner.register_hook(timing)
    for hook in hooks:
        runner.register_hook(hook)
    if spec.device != "cpu":
        runner.model.to(spec.device)

    try:
        with allow_mmengine_checkpoint_globals():
            runner.train()
    except NonFiniteLossError as exc:
        record.status, record.failure = "failed", str(exc)
        record_hook.write()
        return record
    faults.fire("before_finalise", method=spec.method)

    problem = record.curve_problem()
    if problem:  # never call a run completed whose curve misses an epoch
        record.status, record.failure = "failed", f"training ended with {problem}"
        record_hook.write()
        return record
    if timing.summary:
        record.images_per_s = timing.summary.pop("images_per_s")
        if spec.world_size > 1:  # every rank measured its own share of the global batch
            record.images_per_s = round(record.images_per_s * spec.world_size, 2)
        record.runtime = timing.summary
        record.extra["peak_memory_kind"] = getattr(timing, "memory_kind", None)
    else:
        record.runtime = {"peak_memory_mb": round(peak_memory_mb(spec.device)[0], 1)}
    record.finalise_curve()
    record.status = "completed"
    if main_process:
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        # The suite's own format (detection: an MMDetection checkpoint), else the community one.
        if spec.suite.export_student(model, spec.run_dir / STUDENT_EXPORT, record) is None:
            save_community_checkpoint(model.student, spec.run_dir / STUDENT_EXPORT, epoch=spec.recipe.schedule.epochs, accuracy=record.last_top1)
    record_hook.write()
    return record


__all__ = ["RunSpec", "build_config", "execute", "new_record", "environment", "suite_metrics", "STUDENT_EXPORT"]
