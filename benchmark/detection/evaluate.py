"""A detector checkpoint's COCO metrics on val2017 (for a teacher given with ``--teachers``).

The network's MMDetection config with the suite's test pipeline, the checkpoint loaded strictly
as tensors only, MMEngine's test loop and MMDetection's CocoMetric — the same evaluation as
every epoch of a run. Returns the suite's metrics by record name (e.g. ``{'mAP': 39.4, ...}``).
"""

from __future__ import annotations

import copy
import os
import uuid
from pathlib import Path
from typing import Any

from mmengine.config import Config


def evaluate_detector(
    suite: Any,
    name: str,
    checkpoint: str | os.PathLike,
    data_root: str | None,
    device: str,
    work_dir: str | os.PathLike,
    num_workers: int | None = None,
) -> dict[str, float | None]:
    import torch
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner

    from benchmark.detection.config import load_network_config
    from benchmark.detection.layout import SPLITS, check_layout
    from benchmark.detection.model import load_teacher
    from benchmark.errors import UsageError
    from benchmark.train.hooks import metric_values

    from . import detection_stack_problem

    problem = detection_stack_problem()
    if problem:
        raise UsageError(problem)
    root = check_layout(data_root, ("val",))
    cfg = load_network_config(suite.networks[name])
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.get("backbone", {}).pop("init_cfg", None)  # the checkpoint holds every weight
    with DefaultScope.overwrite_default_scope("mmdet"):
        model = MODELS.build(model_cfg)
    load_teacher(model, checkpoint)
    model.eval().to(device)
    loader = copy.deepcopy(
        cfg.val_dataloader.to_dict() if isinstance(cfg.val_dataloader, Config) else dict(cfg.val_dataloader)
    )
    ann_file, image_dir = SPLITS["val"]
    loader["dataset"].update(data_root=str(root), ann_file=ann_file, data_prefix=dict(img=image_dir + "/"))
    loader["persistent_workers"] = False
    if num_workers is not None:
        loader["num_workers"] = num_workers
    evaluator = dict(type="CocoMetric", ann_file=str(Path(root) / ann_file), metric="bbox", format_only=False)
    runner = Runner(
        model=model,
        work_dir=str(work_dir),
        test_dataloader=loader,
        test_evaluator=evaluator,
        test_cfg=dict(type="TestLoop"),
        default_scope="mmdet",
        log_level="ERROR",
        experiment_name=f"evaluate_{name}_{uuid.uuid4().hex[:8]}",
    )
    with torch.no_grad():
        metrics = runner.test()
    return metric_values(metrics, suite.metrics) or {}


__all__ = ["evaluate_detector"]
