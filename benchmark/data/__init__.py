"""Data layer: raw uint8 datasets (CIFAR-100, sklearn digits, ImageNet-1k), CRD negative
sampling, and the batch preprocessor that augments and normalises on the model's device.

Importing this package registers ``CIFAR100Distill``, ``DigitsDistill`` and
``ImageNetDistill`` in mmengine's ``DATASETS`` and ``DistillDataPreprocessor`` in ``MODELS``.

Rule: a leaf — datasets hand raw uint8 items to the loader; nothing here knows a method or a run.
"""

from __future__ import annotations

from .base import DistillDataset
from .cifar100 import CIFAR100_MEAN, CIFAR100_STD, CIFAR100Distill
from .contrast import ClassBlockContrastSampler, ContrastSampler
from .digits import DIGITS_MEAN, DIGITS_STD, DigitsDistill
from .errors import DatasetCorruptError, DatasetNotFoundError
from .imagenet import IMAGENET_MEAN, IMAGENET_STD, ImageNetDistill
from .preprocessor import DistillDataPreprocessor, random_crop_flip

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR100Distill",
    "ClassBlockContrastSampler",
    "ContrastSampler",
    "DIGITS_MEAN",
    "DIGITS_STD",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "DigitsDistill",
    "DistillDataPreprocessor",
    "DistillDataset",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageNetDistill",
    "random_crop_flip",
]
