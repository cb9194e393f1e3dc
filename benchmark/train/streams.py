"""Random streams of one run: the shared data stream and each method's own stream.

A run draws randomness for two different things:

- **the data stream** — sampler order and augmentation. MMEngine's ``DefaultSampler`` has its
  own generator (seed + epoch); the batch augmentation draws from torch's global generator,
  which :class:`~benchmark.train.hooks.EpochSeeder` re-seeds from (seed, epoch, rank) at every
  epoch start; data-loader workers are seeded from (seed, epoch, rank, worker).
- **the method's stream** — its student's and its connectors'/embeddings' initial weights, and
  whatever its training step draws (dropout, …). :class:`MethodStream` keeps it apart from the
  data stream: it is seeded from (seed, method, epoch, rank) and swapped in only while the
  method's own step runs.

So what a run draws does not depend on which other runs share its process (a cohort), and a
run trained alone draws exactly what it draws as a member of a cohort.
"""

from __future__ import annotations

import contextlib
import random
import zlib
from typing import Iterator

import numpy as np
import torch


def stream_seed(seed: int, name: str, *parts: int) -> int:
    """A 63-bit seed from the run seed, a stream name (the method) and integers (epoch, rank)."""
    entropy = [int(seed), zlib.crc32(name.encode()), *[int(p) for p in parts]]
    low, high = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return (int(high) << 31) ^ int(low)


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() else []


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch (CPU and initialised CUDA), numpy and ``random`` seeded from
    ``seed``; every global generator is restored afterwards (the data stream is untouched)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=_cuda_devices()):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class MethodStream:
    """The method's own torch generator state, swapped in while its training step runs.

    ``reset`` seeds it from (seed, method, epoch, rank) at each epoch start, so a resumed run
    continues exactly like an uninterrupted one without storing any generator state.
    """

    def __init__(self, seed: int, name: str) -> None:
        self.seed, self.name = int(seed), name
        self._cpu: torch.Tensor | None = None
        self._cuda: dict[int, torch.Tensor] = {}

    def reset(self, epoch: int, rank: int = 0) -> None:
        with torch.random.fork_rng(devices=_cuda_devices()):
            torch.manual_seed(stream_seed(self.seed, self.name, epoch, rank))
            self._cpu = torch.get_rng_state()
            self._cuda = {d: torch.cuda.get_rng_state(d) for d in _cuda_devices()}

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        if self._cpu is None:
            self.reset(epoch=0)
        outer_cpu = torch.get_rng_state()
        outer_cuda = {d: torch.cuda.get_rng_state(d) for d in _cuda_devices()}
        torch.set_rng_state(self._cpu)
        for device, state in self._cuda.items():
            torch.cuda.set_rng_state(state, device)
        try:
            yield
        finally:
            self._cpu = torch.get_rng_state()
            self._cuda = {d: torch.cuda.get_rng_state(d) for d in _cuda_devices()}
            torch.set_rng_state(outer_cpu)
            for device, state in outer_cuda.items():
                torch.cuda.set_rng_state(state, device)


__all__ = ["MethodStream", "seeded", "stream_seed"]
