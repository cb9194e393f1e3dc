"""COCO 2017 on disk, and the weight files a detection run needs — checked without MMDetection.

The standard layout under the data root (as MMDetection's ``coco_detection.py`` expects)::

    <data-root>/annotations/instances_train2017.json
    <data-root>/annotations/instances_val2017.json
    <data-root>/train2017/*.jpg
    <data-root>/val2017/*.jpg

:class:`CocoLayout` is a tiny dataset registered in MMEngine's root ``DATASETS``: building it
checks the layout (one-line :class:`~benchmark.data.DatasetNotFoundError` when something is
missing) and its length is the number of training images, so the sweep's teacher stage,
which builds every suite's training split once before anything runs, checks COCO the same
way it checks CIFAR-100.
"""

from __future__ import annotations

import os
from pathlib import Path

from mmengine.registry import DATASETS

from benchmark.data.errors import DatasetNotFoundError
from benchmark.store.checkpoints import CheckpointError

SPLITS = {
    "train": ("annotations/instances_train2017.json", "train2017"),
    "val": ("annotations/instances_val2017.json", "val2017"),
}
LAYOUT = "annotations/instances_{train,val}2017.json, train2017/, val2017/"
DOWNLOAD = "https://cocodataset.org/#download"


def check_layout(data_root: str | os.PathLike | None, splits: tuple[str, ...] = ("train", "val")) -> Path:
    """The data root when the COCO 2017 files of ``splits`` are there; else one-line DatasetNotFoundError."""
    if not data_root:
        raise DatasetNotFoundError(f"COCO 2017 needs --data-root (the folder holding {LAYOUT})")
    root = Path(data_root)
    for split in splits:
        ann_file, image_dir = SPLITS[split]
        for rel, is_dir in ((ann_file, False), (image_dir, True)):
            path = root / rel
            if not (path.is_dir() if is_dir else path.is_file()):
                raise DatasetNotFoundError(
                    f"COCO 2017 not found: {path} is missing (expected under --data-root {root}: {LAYOUT}; "
                    f"from {DOWNLOAD})",
                    path,
                )
    return root


def count_images(data_root: str | os.PathLike, split: str = "train") -> int:
    """Number of image files of a split (fast: a directory listing, not the annotation file)."""
    image_dir = Path(data_root) / SPLITS[split][1]
    with os.scandir(image_dir) as entries:
        return sum(1 for entry in entries if entry.is_file() and not entry.name.startswith("."))


@DATASETS.register_module()
class CocoLayout:
    """The COCO 2017 layout check as a dataset: ``len()`` = images of the split (nothing is loaded)."""

    def __init__(self, data_root: str | None = None, split: str = "train", download: bool = False) -> None:
        if download:
            raise DatasetNotFoundError(
                f"COCO 2017 is not downloaded by this suite (about 20 GB): get it from {DOWNLOAD} "
                f"and put {LAYOUT} under --data-root"
            )
        self.root = check_layout(data_root, ("train", "val"))
        self.split = split
        self._len = count_images(self.root, split)

    def __len__(self) -> int:
        return self._len


TORCHVISION_SCHEME = "torchvision://"


def torchvision_weights_file(uri: str) -> Path:
    """Where ``torchvision://<name>`` (MMDetection's way of naming ImageNet backbones) is read from:
    the file of mmengine's torchvision URL table in torch's hub cache (``$TORCH_HOME/hub/checkpoints``)."""
    import torch
    from mmengine.runner.checkpoint import get_torchvision_models

    name = uri[len(TORCHVISION_SCHEME) :]
    urls = get_torchvision_models()
    if name not in urls:
        raise CheckpointError(f"unknown torchvision model {name!r} in {uri}")
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urls[name]).name


def check_pretrained(uri: str | None, what: str = "student backbone") -> str | None:
    """The local file behind an ImageNet weight reference (``torchvision://name`` or a path);
    one-line CheckpointError when it is not there. None stays None (no pretrained weights)."""
    if not uri:
        return None
    if uri.startswith(TORCHVISION_SCHEME):
        from mmengine.runner.checkpoint import get_torchvision_models

        path = torchvision_weights_file(uri)
        if not path.is_file():
            url = get_torchvision_models()[uri[len(TORCHVISION_SCHEME) :]]
            raise CheckpointError(
                f"{what} ImageNet weights {path.name} not found in {path.parent} "
                f"(torchvision format, from {url}; put the file there or set TORCH_HOME)"
            )
        return str(path)
    if "://" in uri:
        raise CheckpointError(f"{what} weights {uri}: only torchvision://<name> or a file path are supported")
    if not Path(uri).is_file():
        raise CheckpointError(f"{what} ImageNet weights not found: {uri} (a torchvision-format state dict)")
    return uri
