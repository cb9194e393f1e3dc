"""Batch augmentation and normalisation on the model's device.

Workers hand out raw uint8 images; this module does torchvision's per-image CIFAR
recipe (``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``, ``ToTensor()``,
``Normalize``) for a whole batch at once: one gather instead of a PIL call per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from mmengine.model import BaseDataPreprocessor
from mmengine.registry import MODELS


def random_crop_flip(images: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Per sample: zero-pad by ``padding``, crop back to H x W at a uniform offset, flip with p=0.5.

    The same distribution as torchvision's ``RandomCrop(size, padding)`` followed by
    ``RandomHorizontalFlip()``, with each sample's offsets and flip independent.
    Randomness comes from torch's global CPU generator whatever the device, so a
    seed gives the same crops on CPU and GPU.
    """
    batch, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))  # constant 0, like RandomCrop's fill
    top = torch.randint(0, 2 * padding + 1, (batch,))
    left = torch.randint(0, 2 * padding + 1, (batch,))
    flip = torch.rand(batch) < 0.5
    rows = top[:, None] + torch.arange(height)
    columns = torch.arange(width).expand(batch, width)
    columns = torch.where(flip[:, None], columns.flip(1), columns) + left[:, None]  # flip = read the crop mirrored
    # One gather over flattened padded planes (4x faster than 4-D advanced indexing on CPU).
    source = rows[:, :, None] * (width + 2 * padding) + columns[:, None, :]
    source = source.view(batch, 1, height * width).to(device).expand(-1, channels, -1)
    return padded.flatten(2).gather(2, source).view(batch, channels, height, width)


def _as_batch(value: Any) -> Any:
    """Stack what ``pseudo_collate`` leaves as lists, so either collate works."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return torch.stack(list(value))
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
        return torch.tensor(value, dtype=torch.long)
    return value


@MODELS.register_module()
class DistillDataPreprocessor(BaseDataPreprocessor):
    """Moves a batch to the model's device, augments it when training, normalises ``inputs``.

    Args:
        mean: per-channel mean in 0..1 units (e.g. ``CIFAR100_MEAN``).
        std: per-channel std in 0..1 units.
        augment: random crop (zero padding ``padding``) + horizontal flip, applied
            only for ``training=True`` batches. Off by default: flips are wrong for
            some data (digits), so configs opt in.
        padding: crop padding in pixels (4 in the CIFAR recipe).
        non_blocking: passed to ``BaseDataPreprocessor``.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool = False,
        padding: int = 4,
        non_blocking: bool = False,
    ) -> None:
        super().__init__(non_blocking=non_blocking)
        if len(mean) != len(std):
            raise ValueError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        self.augment = augment
        self.padding = padding
        # Non-persistent: they follow the model's device but stay out of checkpoints.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data({key: _as_batch(value) for key, value in data.items()})
        images = data["inputs"]
        if images.dtype != torch.uint8:
            raise TypeError(f"DistillDataPreprocessor expects uint8 0..255 inputs, got {images.dtype}")
        if training and self.augment:
            images = random_crop_flip(images, self.padding)
        data["inputs"] = (images.float() / 255 - self.mean) / self.std
        return data
