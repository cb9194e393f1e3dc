"""One run in this process — or one rank of a DDP run — on MMEngine's Runner, and its record.

Rule: ``train/`` trains one run and never imports ``sweep/``; its files go through ``store/``.
"""

from __future__ import annotations

import platform
import subprocess
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from mmengine.config import Config
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.runner import Runner

from benchmark import faults
from benchmark.store.atomic import atomic_path
from benchmark.store.checkpoints import allow_mmengine_checkpoint_globals, save_community_checkpoint
from benchmark.store.records import CLASSIFICATION, Metric, RunRecord, write_record
from benchmark.suites import Suite

from .config import RunSpec
from .hooks import EpochSeeder, NonFiniteLossError, RunRecordHook, StepTimingHook, peak_memory_mb

REPO_ROOT = Path(__file__).resolve().parents[2]
STUDENT_EXPORT = "student.pth"


def environment(device: str) -> dict[str, Any]:
    import mmengine
    import torchvision

    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    name = (
        torch.cuda.get_device_name(0)
        if device.startswith("cuda") and torch.cuda.is_available()
        else (platform.processor() or platform.machine())
    )
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
    extra = dict(
        spec.extra,
        recipe=spec.recipe.to_dict(),
        **({"per_process_batch": spec.per_process_batch, "sync_bn": spec.sync_bn} if spec.world_size > 1 else {}),
    )
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


GUARD_HOOKS = ["EpochTracker", "NonFiniteLossGuard", "FaultPoints"]


def build_runner(
    spec: RunSpec,
    cfg: Config,
    checkpoint: str | None,
    custom_hooks: Sequence[str] = GUARD_HOOKS,
    runner_class: type[Runner] = AtomicCheckpointRunner,
    name: str | None = None,
) -> Runner:
    """MMEngine's Runner for ``cfg`` (one run, or a cohort whose settings ``spec`` shares).

    Built explicitly (not Runner.from_cfg) so every run gets a unique experiment name:
    MMEngine keys its global logger / message hub / visualiser by that name.

    The runner's copy of the config is not yapf-formatted: MMEngine prints it at its log, its
    dump and in every checkpoint (0.04 s for a digits run, 0.4 s for a cohort or a detector, each
    time). The same Python, indented; the run directory's ``config.py`` is the formatted one."""
    runner_cfg = Config(cfg.to_dict(), cfg_text=cfg.text, filename=cfg.filename, format_python_code=False)
    return runner_class(
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
        custom_hooks=[dict(type=hook) for hook in custom_hooks],
        load_from=checkpoint,
        resume=checkpoint is not None,
        launcher="pytorch" if spec.world_size > 1 else "none",
        env_cfg=cfg.env_cfg,
        log_level=cfg.log_level,
        randomness=cfg.randomness,
        visualizer=cfg.get("visualizer"),
        log_processor=cfg.get("log_processor"),
        default_scope=cfg.get("default_scope") or "mmengine",
        experiment_name=f"{spec.suite.name}_{spec.pair.name}_{name or spec.method}_s{spec.seed}_{uuid.uuid4().hex[:8]}",
        cfg=runner_cfg,
    )


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
    runner = build_runner(spec, cfg, checkpoint)
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
    model = runner.model.module if hasattr(runner.model, "module") else runner.model
    return complete(spec, record, record_hook, timing, model, main_process)


def complete(
    spec: RunSpec,
    record: RunRecord,
    record_hook: RunRecordHook,
    timing: StepTimingHook,
    model: Any,
    main_process: bool = True,
) -> RunRecord:
    """After training: check the curve, add the runtime, export the student, mark the record completed."""
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
        # The suite's own format (detection: an MMDetection checkpoint), else the community one.
        if spec.suite.export_student(model, spec.run_dir / STUDENT_EXPORT, record) is None:
            save_community_checkpoint(
                model.student,
                spec.run_dir / STUDENT_EXPORT,
                epoch=spec.recipe.schedule.epochs,
                accuracy=record.last_top1,
            )
    record_hook.write()
    return record


__all__ = [
    "STUDENT_EXPORT",
    "AtomicCheckpointRunner",
    "build_runner",
    "complete",
    "environment",
    "new_record",
    "suite_metrics",
    "train",
]
