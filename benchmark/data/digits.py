"""scikit-learn's handwritten digits as a tiny CIFAR-shaped suite that runs anywhere.

Real data shipped inside scikit-learn (1,797 8x8 images, values 0..16, 10 classes),
so the whole pipeline can be exercised end to end without a download. Images are
upscaled to 32x32 (bilinear) and replicated to 3 channels so CIFAR architectures
and the same preprocessor apply unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.registry import DATASETS

from .base import DistillDataset

SPLITS = ("train", "test")
TEST_PERCENT = 20
SPLIT_SEED = 0
IMAGE_SIZE = 32
DIGITS_MAX = 16  # load_digits pixel values are counts 0..16

# Per-channel statistics of the train split in 0..1 units, computed by
# ``digits_train_statistics()`` (tests recompute them).
DIGITS_MEAN = (0.305264, 0.305264, 0.305264)
DIGITS_STD = (0.323587, 0.323587, 0.323587)


def split_indices(targets: np.ndarray) -> dict[str, np.ndarray]:
    """The fixed stratified split: per class, 20% test (rounded), the rest train.

    Random keys from ``default_rng(0)`` order each class; ``random()`` doubles and a
    stable argsort are used instead of ``permutation`` because they do not depend on
    numpy's bounded-integer algorithm, so the split is the same on every machine.
    """
    keys = np.random.default_rng(SPLIT_SEED).random(len(targets))
    test_mask = np.zeros(len(targets), dtype=bool)
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        n_test = (len(members) * TEST_PERCENT + 50) // 100
        test_mask[members[np.argsort(keys[members], kind="stable")[:n_test]]] = True
    return {"train": np.flatnonzero(~test_mask), "test": np.flatnonzero(test_mask)}


def digits_images(pixels_8x8: np.ndarray) -> torch.Tensor:
    """``[N, 8, 8]`` values 0..16 -> uint8 ``[N, 3, 32, 32]`` values 0..255."""
    small = torch.as_tensor(pixels_8x8, dtype=torch.float32).unsqueeze(1)
    large = F.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    scaled = (large * (255.0 / DIGITS_MAX)).round().clamp(0, 255).to(torch.uint8)
    return scaled.expand(-1, 3, -1, -1).contiguous()


def digits_train_statistics() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and (population) std per channel of the train split, 0..1 units."""
    train = DigitsDistill("train").images.double() / 255
    mean = train.mean(dim=(0, 2, 3))
    std = train.std(dim=(0, 2, 3), unbiased=False)
    return tuple(mean.tolist()), tuple(std.tolist())


@DATASETS.register_module()
class DigitsDistill(DistillDataset):
    """The digits suite's data: ``split='train'`` (1,438 images) or ``'test'`` (359).

    Args:
        split: ``'train'`` or ``'test'`` of the fixed stratified 80/20 split.
        contrast_k: number of CRD negatives per item (drawn with replacement when it
            exceeds the other-class pool, as RepDistiller does), or ``None``.
    """

    def __init__(self, split: str = "train", contrast_k: int | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split = split
        from sklearn.datasets import load_digits  # here: importing sklearn.datasets costs seconds

        digits = load_digits()
        targets = np.asarray(digits.target, dtype=np.int64)
        chosen = split_indices(targets)[split]
        self.source_indices = chosen  # positions in load_digits(), for tracing a sample back
        classes = [str(name) for name in digits.target_names]
        super().__init__(digits_images(digits.images[chosen]), targets[chosen].tolist(), classes, contrast_k)
