"""Run options on the coco suite, end to end: --amp trains under bf16 autocast, --channels-last in NHWC.

The tiny networks and data of ``tests/coco_tiny.py``; one iteration through the real runner.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from mmengine.hooks import Hook

from benchmark.store.records import read_record
from tests.coco_tiny import tiny, tiny_spec  # noqa: F401  (the module-scoped fixture)

pytestmark = pytest.mark.filterwarnings("ignore:pkg_resources is deprecated as an API:UserWarning")


class StepProbe(Hook):
    """What the first training iteration ran with: the optimizer wrapper, the logits' dtype, the weights' layout."""

    priority = "LOWEST"

    def __init__(self) -> None:
        self.seen: dict = {}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self.seen:
            return
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        with runner.optim_wrapper.optim_context(model):
            batch = model.data_preprocessor(data_batch, True)
            student = model.student
            feats = student.extract_feat(batch["inputs"])
        conv = next(m for m in student.backbone.modules() if isinstance(m, torch.nn.Conv2d))
        self.seen = {
            "wrapper": type(runner.optim_wrapper).__name__,
            "feature_dtype": feats[0].dtype,
            "channels_last": conv.weight.is_contiguous(memory_format=torch.channels_last)
            and not conv.weight.is_contiguous(),
            "losses": {k: float(v) for k, v in outputs.items()},
        }


def test_coco_amp_and_channels_last_are_applied(tiny, tmp_path):  # noqa: F811
    """Both options in one run (one tiny training costs seconds): bf16 autocast, NHWC weights."""
    from benchmark.train import execute, new_record

    spec = tiny_spec(tiny, "kd", tmp_path / "run")
    options = {"amp": "bfloat16", "channels_last": True}
    spec.recipe = dataclasses.replace(spec.recipe, options=options)
    probe = StepProbe()
    record = execute(spec, 4, new_record(spec), resume=False, hooks=[probe], say=lambda line: None)
    assert record.status == "completed", record.failure
    assert probe.seen["wrapper"] == "CPUAutocastOptimWrapper" and probe.seen["feature_dtype"] == torch.bfloat16
    assert probe.seen["channels_last"]
    assert all(torch.isfinite(torch.tensor(v)) for v in probe.seen["losses"].values())
    assert read_record(spec.run_dir / "record.json").extra["recipe"]["options"] == options


def test_fp32_island_casts_only_inside_autocast():
    from benchmark.detection.model import _fp32_island

    seen = []
    island = _fp32_island(lambda x, pair: seen.append((x.dtype, pair[0].dtype, torch.is_autocast_enabled("cpu"))))
    island(torch.ones(2, dtype=torch.bfloat16), (torch.ones(1, dtype=torch.bfloat16), 3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        island(torch.ones(2, dtype=torch.bfloat16), (torch.ones(1, dtype=torch.bfloat16), 3))
    assert seen == [(torch.bfloat16, torch.bfloat16, False), (torch.float32, torch.float32, False)]
