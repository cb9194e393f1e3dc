"""CRD negative sampling: RepDistiller's ``CIFAR100InstanceSample`` in 'exact' mode.

Each training sample gets ``K + 1`` dataset indices: its own index (the positive,
column 0) and ``K`` negatives drawn uniformly from the samples of the *other*
classes, without replacement unless ``K`` exceeds that pool (then with
replacement, as RepDistiller does).

Speed. RepDistiller calls ``np.random.choice(pool, K, replace=False)`` on the legacy
``RandomState``, which permutes the whole pool (49,500 ids on CIFAR-100) for every
sample. ``Generator.choice(len(pool), K, replace=False)`` is the same distribution
(a uniformly random ordered K-subset) but only runs the last ``K`` steps of a
Fisher-Yates shuffle in C. On the development machine (2 shared CPU cores,
N=50,000, K=16,384) it took ~0.3 ms per sample against ~1.4 ms when idle, and stayed
~4x faster under load (~0.9 vs ~3.7 ms); re-measure with
``pytest -m bench -s tests/test_data.py::test_draw_time_report``. Argpartition of
random keys (~0.8 ms) and ``torch.randperm`` (~0.7 ms) were slower.

Randomness. Every DataLoader worker needs its own stream, reproducible under the
runner's seed. The stream is created lazily from the worker's torch seed
(``get_worker_info().seed``: torch's per-worker seed, derived from the main
process generator each epoch) or, outside workers, from ``torch.initial_seed()``.
The worker seed is read from ``get_worker_info`` rather than
``torch.initial_seed()`` because mmengine's default ``worker_init_fn`` re-seeds
torch in each worker with ``seed + worker_id``, which is the same every epoch.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import get_worker_info


class ContrastSampler:
    """Draws ``[own index, K negatives]`` for a sample of a dataset with ``targets``.

    Args:
        targets: class label of every sample, in dataset order.
        k: number of negatives per sample.
        rng: a fixed generator (tests, single-process use). Leave ``None`` in
            training: each process/worker then derives its own stream from torch's
            seed (a fixed generator would be copied into every worker, giving all
            workers the same stream).
    """

    def __init__(self, targets: Sequence[int] | np.ndarray, k: int, rng: np.random.Generator | None = None) -> None:
        self.targets = np.asarray(targets, dtype=np.int64)
        if self.targets.ndim != 1 or len(self.targets) == 0:
            raise ValueError("ContrastSampler needs a non-empty 1-D sequence of targets")
        if self.targets.min() < 0:
            raise ValueError("ContrastSampler needs non-negative class labels")
        if int(k) < 1:
            raise ValueError(f"contrast k must be a positive integer, got {k!r}")
        if len(np.unique(self.targets)) < 2:
            raise ValueError("contrastive sampling needs samples of at least two classes")
        self.k = int(k)
        self.pools = self._negative_pools(self.targets)
        self._fixed_rng = rng
        self._rng: np.random.Generator | None = None
        self._rng_seed: int | None = None

    @staticmethod
    def _negative_pools(targets: np.ndarray) -> list[np.ndarray]:
        """Per class, the indices of all samples of other classes.

        Class-major, ascending within a class: RepDistiller's ``cls_negative`` order.
        int32 halves the memory (100 pools x 49,500 ids on CIFAR-100: 20 MB).
        """
        dtype = np.int32 if len(targets) < 2**31 else np.int64
        by_class = np.argsort(targets, kind="stable").astype(dtype)
        ends = np.cumsum(np.bincount(targets))
        starts = ends - np.bincount(targets)
        return [np.concatenate((by_class[:start], by_class[end:])) for start, end in zip(starts, ends)]

    def _generator(self) -> np.random.Generator:
        """The stream of this process: re-derived whenever torch's seed for it changes."""
        if self._fixed_rng is not None:
            return self._fixed_rng
        worker = get_worker_info()
        seed = worker.seed if worker is not None else torch.initial_seed()
        if self._rng is None or seed != self._rng_seed:
            self._rng = np.random.default_rng(seed)
            self._rng_seed = seed
        return self._rng

    def draw(self, index: int) -> np.ndarray:
        """``int64[K + 1]``: ``index`` then K negatives of other classes."""
        pool = self.pools[self.targets[index]]
        replace = self.k > len(pool)
        picks = self._generator().choice(len(pool), self.k, replace=replace)
        out = np.empty(self.k + 1, dtype=np.int64)
        out[0] = index
        out[1:] = pool[picks]
        return out
