"""One detection run's MMDetection config: the suite's network config files + the resolved recipe.

The student's config file (an MMDetection 1x config: COCO data, schedule, runtime) gives the
data pipeline and runtime; its ``model`` and the teacher's become a ``DistillationDetector``;
the recipe (``benchmark.suites.coco``) sets the schedule, batch, learning rate, image scales
and the method; the run sets the data root, workers, seed and work dir. The result is dumped
into the run directory and runs as it is with MMDetection's tooling too.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmengine.config import Config

from benchmark.errors import UsageError
from benchmark.store.checkpoints import CheckpointError

from . import detection_stack_problem
from .layout import SPLITS, check_layout, check_pretrained

if TYPE_CHECKING:  # pragma: no cover
    from benchmark.train import RunSpec

CUSTOM_IMPORTS = dict(imports=["benchmark.detection.model"], allow_failed_imports=False)


def load_network_config(ref: str) -> Config:
    """An MMDetection config file (a path, or ``mmdet::<path>`` in the installed MMDetection)."""
    from benchmark.detection.model import resolve_config_path

    return Config.fromfile(resolve_config_path(ref))


def _pretrained_of(model: dict) -> str | None:
    init = (model.get("backbone") or {}).get("init_cfg")
    if isinstance(init, dict) and init.get("type") == "Pretrained":
        return init.get("checkpoint")
    return None


def _resolve_pretrained(model: dict, network: str, check_files: bool = True) -> dict:
    """The student's ImageNet weights as a local file (one-line CheckpointError when absent)."""
    model = copy.deepcopy(model)
    reference = _pretrained_of(model)
    if reference and check_files:
        model["backbone"]["init_cfg"]["checkpoint"] = check_pretrained(reference, f"{network} backbone")
    return model


def _pipeline_resize(pipeline: list, scales: list[tuple[int, int]]) -> list:
    """Replace the pipeline's Resize by the recipe's scale(s): one → Resize, several → RandomChoiceResize."""
    out = []
    for step in pipeline:
        step = dict(step)
        if step.get("type") in ("Resize", "RandomChoiceResize", "RandomResize"):
            step = (
                dict(type="Resize", scale=scales[0], keep_ratio=True)
                if len(scales) == 1
                else dict(type="RandomChoiceResize", scales=scales, keep_ratio=True)
            )
        out.append(step)
    return out


def _param_schedulers(schedule: Any) -> list[dict]:
    warmup = dict(
        type="LinearLR", start_factor=schedule.warmup_ratio, by_epoch=False, begin=0, end=schedule.warmup_iters
    )
    if schedule.milestone_iters:  # steps in iterations (the paper recipe: Detectron2's SOLVER.STEPS)
        steps = dict(
            type="MultiStepLR", by_epoch=False, begin=0, milestones=list(schedule.milestone_iters), gamma=schedule.gamma
        )
    else:
        steps = dict(
            type="MultiStepLR",
            by_epoch=True,
            begin=0,
            end=schedule.epochs,
            milestones=list(schedule.milestones),
            gamma=schedule.gamma,
        )
    return ([warmup] if schedule.warmup_iters > 0 else []) + [steps]


def build_run_config(suite: Any, spec: "RunSpec", check_files: bool = True) -> Config:
    """The suite's part of one detection run's MMDetection config (raises one-line errors for the user).

    The run-level settings (workers, batch per process, DDP, AMP, channels-last, TensorBoard,
    seed, work dir) are applied afterwards by ``benchmark.train.config.apply_run_overlay``, as for
    every suite. ``check_files=False``: no data, teacher or pretrained file is looked at.
    """
    problem = detection_stack_problem()
    if problem:
        raise UsageError(problem)
    import benchmark.detection.model  # noqa: F401  (registers DistillationDetector & co.)

    data_root = check_layout(spec.data_root) if check_files else Path(spec.data_root or "data")
    schedule = spec.recipe.schedule
    student_net = spec.student  # the teacher's own network for a teacher trained alone
    cfg = load_network_config(suite.networks[student_net])
    student = _resolve_pretrained(cfg.model.to_dict(), student_net, check_files)
    method = dict(spec.recipe.method) if spec.method != "teacher" else {"type": "ce"}
    teacher = None
    if method["type"] != "ce":
        if not spec.teacher_checkpoint and check_files:
            raise CheckpointError(f"{spec.pair.name} {spec.method}: no teacher checkpoint given")
        teacher = load_network_config(suite.networks[spec.pair.teacher]).model.to_dict()
    cfg.custom_imports = CUSTOM_IMPORTS
    cfg.model = dict(
        type="DistillationDetector",
        student=student,
        teacher=teacher,
        teacher_checkpoint=(spec.teacher_checkpoint or "<teacher checkpoint>") if teacher else None,
        distill=method,
        data_preprocessor=copy.deepcopy(student["data_preprocessor"]),
    )

    # Schedule: the recipe's, expressed as MMDetection writes its 1x schedule.
    cfg.train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=schedule.epochs, val_interval=1)
    cfg.optim_wrapper = dict(
        type="OptimWrapper",
        optimizer=dict(type="SGD", lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay),
    )
    cfg.param_scheduler = _param_schedulers(schedule)
    cfg.auto_scale_lr = dict(
        enable=False, base_batch_size=schedule.batch_size
    )  # the recipe's lr is already for its batch

    # Data: the standard layout under the data root, the recipe's scales and batch.
    train_scales = [(schedule.max_size, side) for side in schedule.short_sides]
    test_scale = [(schedule.max_size, schedule.test_short_side)]
    for split, loader_name in (("train", "train_dataloader"), ("val", "val_dataloader")):
        loader = cfg[loader_name]
        ann_file, image_dir = SPLITS[split]
        loader.dataset.data_root = str(data_root)
        loader.dataset.ann_file = ann_file
        loader.dataset.data_prefix = dict(img=image_dir + "/")
        loader.dataset.pipeline = _pipeline_resize(
            loader.dataset.pipeline, train_scales if split == "train" else test_scale
        )
    cfg.test_dataloader = copy.deepcopy(cfg.val_dataloader)
    cfg.train_dataloader.batch_size = schedule.batch_size  # per process: the run overlay divides it
    for name in ("val_evaluator", "test_evaluator"):
        cfg[name] = dict(
            type="CocoMetric",
            ann_file=str(data_root / SPLITS["val"][0]),
            metric="bbox",
            format_only=False,
            backend_args=None,
        )

    # Runtime: checkpoints every epoch, two kept (resume), MMEngine logs at the run's level.
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=1, max_keep_ckpts=2, save_last=True)
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=50)
    # MMDetection names its visualizer 'visualizer'; MMEngine keeps one instance per name, so a second
    # run in the same process would log into the first run's folder. Unnamed, it takes the run's name.
    cfg.visualizer.pop("name", None)
    cfg.load_from, cfg.resume = None, False
    return cfg


__all__ = ["build_run_config", "load_network_config", "CUSTOM_IMPORTS"]
