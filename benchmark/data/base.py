"""The item format every suite dataset shares, so the runner and losses see one shape."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from .contrast import ContrastSampler


class DistillItems(Dataset):
    """The item protocol shared by every suite's dataset (subclasses set ``classes``,
    ``targets`` and ``contrast``, and say how to read one image)."""

    classes: tuple[str, ...]
    targets: Sequence[int]
    contrast: Any = None  # a sampler with ``draw(index) -> int64 [K + 1]``, or None

    def image(self, index: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def metainfo(self) -> dict[str, Any]:
        """What mmengine's loops hand to evaluators as ``dataset_meta``."""
        return {"classes": self.classes}

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index < 0:  # keep 'index' and contrast column 0 canonical
            index += len(self)
        item: dict[str, Any] = {"inputs": self.image(index), "target": int(self.targets[index]), "index": index}
        if self.contrast is not None:
            item["contrast_index"] = torch.from_numpy(self.contrast.draw(index))
        return item


class DistillDataset(DistillItems):
    """Raw uint8 images with labels; items are dicts that mmengine's ``default_collate`` batches.

    Items: ``{'inputs': uint8 [3, H, W], 'target': int, 'index': int}`` plus
    ``'contrast_index': int64 [K + 1]`` when built with ``contrast_k=K``.
    Images are neither augmented nor normalised here: the batch preprocessor does
    that on the model's device, which keeps the workers cheap.
    """

    def __init__(
        self, images: torch.Tensor, targets: Sequence[int], classes: Sequence[str], contrast_k: int | None = None
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        if len(targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images.contiguous()
        self.targets: list[int] = [int(t) for t in targets]
        self.classes = tuple(classes)
        self.contrast_k = contrast_k
        self.contrast = None if contrast_k is None else ContrastSampler(self.targets, contrast_k)

    def image(self, index: int) -> torch.Tensor:
        return self.images[index]
