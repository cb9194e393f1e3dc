"""Data-loader workers draw fresh random streams every epoch, and a resumed run draws the same.

MMEngine's default ``worker_init_fn`` seeds each worker with ``seed + worker_id`` every time
workers start; with workers restarted each epoch, every epoch replayed the same augmentation
draws per worker slot. ``seed_data_worker`` seeds from (run seed, epoch, rank, worker id),
with the epoch bound by ``EpochSeeder`` before the epoch's workers start.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

from benchmark.store.checkpoints import allow_mmengine_checkpoint_globals
from benchmark.train.hooks import EpochSeeder, seed_data_worker

WORKERS, EPOCHS, BATCH, ITEMS = 2, 2, 2, 8


class RandomDraws(Dataset):
    """Each item is what the three RNGs of its worker draw (numpy, random, torch): augmentation stand-ins."""

    def __len__(self) -> int:
        return ITEMS

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"inputs": torch.tensor([np.random.rand(), random.random(), torch.rand(()).item()], dtype=torch.float64)}


class DrawRecorder(BaseModel):
    """Keeps every training batch per epoch; one parameter so that the optimiser and checkpoints work."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: dict[int, list[torch.Tensor]] = {}
        self.epoch = 0

    def forward(self, inputs, data_samples=None, mode: str = "tensor"):
        batch = inputs
        self.seen.setdefault(self.epoch, []).append(batch.clone())
        return {"loss": (self.weight - batch.sum()) ** 2}


class EpochOnModel(EpochSeeder):
    def before_train_epoch(self, runner) -> None:
        super().before_train_epoch(runner)
        runner.model.epoch = runner.epoch


def train(work_dir, resume_from: str | None = None) -> dict[int, torch.Tensor]:
    model = DrawRecorder()
    runner = Runner(
        model=model,
        work_dir=str(work_dir),
        train_dataloader=dict(
            batch_size=BATCH,
            num_workers=WORKERS,
            persistent_workers=False,
            sampler=dict(type="DefaultSampler", shuffle=False),
            dataset=RandomDraws(),
            collate_fn=dict(type="default_collate"),
            worker_init_fn=dict(type="seed_data_worker", run_seed=7),
        ),
        train_cfg=dict(by_epoch=True, max_epochs=EPOCHS),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.0)),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=1), logger=None),
        custom_hooks=[],
        randomness=dict(seed=7),
        load_from=resume_from,
        resume=resume_from is not None,
        log_level="ERROR",
        experiment_name=f"worker-seeds-{work_dir.name}",
        default_scope="mmengine",
    )
    runner.register_hook(EpochOnModel(7))
    with allow_mmengine_checkpoint_globals():  # MMEngine's own checkpoints, as the runner resumes them
        runner.train()
    return {epoch: torch.cat(batches) for epoch, batches in model.seen.items()}


def test_seed_data_worker_depends_on_seed_epoch_rank_and_worker():
    def draws(*args) -> tuple[float, float, float]:
        seed_data_worker(*args)
        return np.random.rand(), random.random(), torch.rand(()).item()

    base = draws(0, 7, 1, 0)
    assert draws(0, 7, 1, 0) == base  # the same (worker, seed, epoch, rank): the same stream
    others = [draws(1, 7, 1, 0), draws(0, 8, 1, 0), draws(0, 7, 2, 0), draws(0, 7, 1, 1)]
    for other in others:
        assert all(a != b for a, b in zip(base, other))


def test_each_epoch_draws_fresh_and_a_resumed_run_draws_the_same(tmp_path):
    full = train(tmp_path / "full")
    assert sorted(full) == [0, 1]
    for epoch in (0, 1):  # the two workers draw different streams within an epoch
        rows = full[epoch]
        assert len(rows) == ITEMS and len({tuple(row.tolist()) for row in rows}) == ITEMS
    # The bug this guards against: MMEngine's seeding made epoch 2 replay epoch 1's draws.
    assert not torch.isclose(full[0], full[1]).any()

    resumed = train(tmp_path / "resumed", resume_from=str(tmp_path / "full" / "epoch_1.pth"))
    assert sorted(resumed) == [1]  # only the second epoch ran
    assert torch.equal(resumed[1], full[1])  # the same draws as the uninterrupted run
