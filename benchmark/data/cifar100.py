"""CIFAR-100 from the official python pickles, read and downloaded by torchvision."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from mmengine.registry import DATASETS
from torchvision.datasets import CIFAR100
from torchvision.datasets.utils import download_and_extract_archive

from .base import DistillDataset
from .errors import DatasetCorruptError, DatasetNotFoundError

# Per-channel statistics of the train split in 0..1 units (RepDistiller's values).
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)

SPLITS = ("train", "test")


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


class _PresenceCheckedCIFAR100(CIFAR100):
    """torchvision's reader with file presence in place of its md5 checks.

    The md5 check would reject the small files the tests write in the real format;
    the archive's md5 is still verified whenever we download.
    """

    def _split_files(self) -> list[str]:
        names = [name for name, _ in (self.train_list if self.train else self.test_list)]
        return [os.path.join(self.root, self.base_folder, name) for name in names]

    def _meta_file(self) -> str:
        return os.path.join(self.root, self.base_folder, self.meta["filename"])

    def _check_integrity(self) -> bool:
        return all(os.path.isfile(path) for path in [*self._split_files(), self._meta_file()])

    def _load_meta(self) -> None:
        path = self._meta_file()
        try:
            with open(path, "rb") as infile:
                self.classes = list(_unpickle_latin1(infile)[self.meta["key"]])
        except Exception as err:
            raise _corrupt(path, err) from err
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


def _unpickle_latin1(infile: BinaryIO) -> dict:
    """How torchvision reads these Python 2 pickles (their numpy arrays need latin1)."""
    return pickle.load(infile, encoding="latin1")


def _corrupt(path: str | Path, err: BaseException | str) -> DatasetCorruptError:
    why = err if isinstance(err, str) else _one_line(err)
    return DatasetCorruptError(
        f"CIFAR-100 file {path} is corrupt or not in the python format ({why}); delete it and re-download with "
        f"download=True (--download), or replace it from {CIFAR100.url}",
        path,
    )


def _missing(path: Path, root: Path) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"CIFAR-100 not found: {path} does not exist; pass download=True (--download), or put cifar-100-python/ "
        f"from {CIFAR100.url} under {root}",
        path,
    )


@DATASETS.register_module()
class CIFAR100Distill(DistillDataset):
    """CIFAR-100 as raw uint8 CHW images with optional CRD negatives.

    Args:
        data_root: folder holding ``cifar-100-python/{train,test,meta}``.
        split: ``'train'`` (50,000 images) or ``'test'`` (10,000).
        contrast_k: number of CRD negatives per item; ``None`` for no
            ``contrast_index`` (every method but CRD).
        download: fetch and extract the official archive (md5-verified) when files
            are missing.
    """

    def __init__(
        self, data_root: str | os.PathLike, split: str = "train", contrast_k: int | None = None, download: bool = False
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.data_root = Path(data_root).expanduser()
        self.split = split
        folder = self.data_root / CIFAR100.base_folder
        needed = [folder / split, folder / CIFAR100.meta["filename"]]

        if download and not all(path.is_file() for path in needed):
            self._download()
        for path in needed:
            if not path.is_file():
                raise _missing(path, self.data_root)

        try:
            reader = _PresenceCheckedCIFAR100(str(self.data_root), train=split == "train", download=False)
        except DatasetCorruptError:
            raise
        except Exception as err:  # only the split file is read outside _load_meta
            raise _corrupt(needed[0], err) from err

        labels = np.asarray(reader.targets)
        if labels.ndim != 1 or len(labels) != len(reader.data):
            raise _corrupt(needed[0], f"{len(reader.data)} images but {labels.size} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(reader.classes)):
            raise _corrupt(needed[0], f"labels outside 0..{len(reader.classes) - 1}")
        # torchvision hands out HWC for PIL; go back to the CHW the model and preprocessor use.
        images = torch.from_numpy(np.ascontiguousarray(reader.data.transpose(0, 3, 1, 2)))
        super().__init__(images, labels.tolist(), reader.classes, contrast_k)

    def _download(self) -> None:
        """torchvision's download of the official archive; failures become one actionable line."""
        try:
            self.data_root.mkdir(parents=True, exist_ok=True)
            download_and_extract_archive(
                CIFAR100.url, str(self.data_root), filename=CIFAR100.filename, md5=CIFAR100.tgz_md5
            )
        except Exception as err:
            raise DatasetNotFoundError(
                f"could not download CIFAR-100 from {CIFAR100.url} into {self.data_root} ({_one_line(err)}); "
                f"put cifar-100-python/ from that archive under {self.data_root}",
                self.data_root / CIFAR100.base_folder,
            ) from err
