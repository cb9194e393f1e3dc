"""The complete MMEngine config of one run: the suite's part, then the one run-level overlay.

Rule: a suite builds what is its own (dataset, schedule, networks, method); everything the
command line sets for a run (workers, batch per process, DDP, AMP, channels-last, TensorBoard,
seed, work dir) is applied here, after it, the same way for every suite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmengine.config import Config

from benchmark.suites import Pair, ResolvedRecipe, Suite
from methods import METHODS

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "_base_"


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
    base["optim_wrapper"]["optimizer"].update(
        lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay
    )
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
        # The student's and the method's own random stream, apart from the data stream.
        stream_seed=spec.seed,
        stream_name=spec.method,
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
        cfg.model_wrapper_cfg = dict(
            type="DeviceAwareDistributedDataParallel", broadcast_buffers=False, find_unused_parameters=False
        )
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


__all__ = ["CONFIG_DIR", "RunSpec", "apply_run_overlay", "build_config", "classification_config"]
