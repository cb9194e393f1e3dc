"""ImageNet-1k from the standard ImageFolder tree, decoded to uint8 in the workers.

Layout under ``data_root``: ``train/<wnid>/*.JPEG`` (1,281,167 images) and
``val/<wnid>/*.JPEG`` (50,000; the validation images sorted into their class folders),
1000 class folders named by WordNet id. Classes, sample order and targets are exactly
torchvision's ``ImageFolder`` (its ``find_classes`` / ``make_dataset``); the val split
takes the train split's class list when the train folder is there, so indices agree.

Transforms are those of the CRD / DKD ImageNet experiments (mdistiller
``get_imagenet_train_transform`` / ``get_imagenet_test_transform``): train
``RandomResizedCrop(224)`` + ``RandomHorizontalFlip()``, val ``Resize(256)`` +
``CenterCrop(224)``, then ``ToTensor()`` + ``Normalize(IMAGENET_MEAN, IMAGENET_STD)``.
Here the workers stop at the uint8 image: ``ToTensor``'s ``/255`` and ``Normalize`` run in
:class:`~benchmark.data.preprocessor.DistillDataPreprocessor` on the model's device (the
config turns its CIFAR ``augment`` off: crop and flip happened here, per image, at full
resolution). The preprocessor computes ``(x.float() / 255 - mean) / std`` in float32, the
same operations in the same order as ``ToTensor`` + ``Normalize``: bit-identical inputs.

Decoding pipeline (``benchmark/bench/imagenet_loader.py`` times it against torchvision's
``ImageFolder`` + transforms). Pillow decodes JPEGs with libjpeg-turbo here
(``PIL.features.check_feature('libjpeg_turbo')``); ``torchvision.io.decode_jpeg`` would
wrap a libjpeg too, and cannot be used with the pinned CPU stack anyway (torchvision's
``image.so`` is a CUDA build and does not load next to a CPU torch). Decoding is most of
the cost (~1.4 ms of ~2.5 ms for a 500x375, ~100 KB JPEG on the development CPU), so the
gain comes from doing less around it, with the same numbers:

* the crop is drawn with torchvision's own ``RandomResizedCrop.get_params`` on the image
  size from the JPEG header, then ``torchvision.transforms.functional.resized_crop`` /
  ``resize`` / ``center_crop`` on the PIL image: the same calls, the same torch RNG draws
  in the same order (crop, then flip), so for a given torch seed the pixels are identical to
  ``ImageFolder`` + ``Compose([RandomResizedCrop(224), RandomHorizontalFlip(), PILToTensor()])``
  (``tests/test_imagenet.py`` checks this);
* no ``convert('RGB')`` copy of an image that is already RGB, no float ``ToTensor`` /
  ``Normalize`` per image, and a 4x smaller uint8 tensor to pass from worker to loader.

Measured per worker (1 thread, 2-core development CPU, generated 500x375 JPEGs of ~100 KB):
1.1-1.25x the images/s of the torchvision pipeline for train, 1.2x for val (the ratio
varies with the machine's load; rerun the benchmark on the training machine).

``draft=True`` (off by default) also decodes JPEGs at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
scaling, ``PIL.Image.draft``) when the crop, at that scale, still covers at least the
output size (224 for train, the short side 256 for val), and resamples the crop box in
the reduced image. Crop geometry and its distribution are unchanged, but pixels are NOT
identical: DCT-domain downscaling is a different low-pass filter from Pillow's bilinear
antialias, and the box resampling reads the filter's support across the crop border. It
only applies to images at least 2x the output size (448+ px on the crop's short side);
most ImageNet images are ~500x375, where it never triggers. Use it for throughput
studies, not for numbers compared with the references.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from mmengine.registry import DATASETS
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from .base import DistillItems
from .contrast import ClassBlockContrastSampler
from .errors import DatasetCorruptError, DatasetNotFoundError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val")
IMAGENET_SPLIT_SIZES = {"train": 1_281_167, "val": 50_000}
TRAIN_SIZE = 224  # RandomResizedCrop(224)
RESIZE_SIZE, CROP_SIZE = 256, 224  # Resize(256) + CenterCrop(224)
CROP_SCALE, CROP_RATIO = (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's defaults
DRAFT_FACTORS = (8, 4, 2)  # the reductions libjpeg decodes directly


def layout(root: str | os.PathLike) -> str:
    return (
        f"{root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG "
        f"(ImageFolder layout, 1000 class folders, 1,281,167 / 50,000 images)"
    )


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


@functools.lru_cache(maxsize=8)
def _scan(
    folder: str, mtime_ns: int, classes: tuple[str, ...] | None
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """(classes, relative paths as bytes, targets) of an ImageFolder split; cached per process.

    Keyed by the split folder's mtime (a class folder added or removed changes it; files
    added inside a class folder do not: restart the process after editing the dataset).
    """
    if classes is None:
        classes = tuple(find_classes(folder)[0])
    class_to_idx = {name: i for i, name in enumerate(classes)}
    samples = make_dataset(folder, class_to_idx, extensions=IMG_EXTENSIONS)
    prefix = len(os.path.join(folder, ""))
    # Bytes in one numpy array, not a list of str: workers forked from the loader share
    # it without copy-on-write (1.28 M Python strings would be copied into every worker).
    paths = np.array([os.fsencode(path[prefix:]) for path, _ in samples], dtype=np.bytes_)
    target_dtype = np.int16 if len(classes) < 2**15 else np.int32
    targets = np.fromiter((target for _, target in samples), dtype=target_dtype, count=len(samples))
    return classes, paths, targets


def _draft(image: Image.Image, max_reduction: float) -> int:
    """Ask libjpeg for the largest of 8/4/2 that is <= ``max_reduction``; the factor applied (1: none)."""
    factor = next((f for f in DRAFT_FACTORS if f <= max_reduction), 1)
    if factor == 1:
        return 1
    width, height = image.size
    # PIL picks min(W // w, H // h) rounded down to 8/4/2/1; with w = W // f that is exactly f
    # here (W // f >= 224 >= f).
    result = image.draft("RGB", (width // factor, height // factor))
    if result is None:  # not a JPEG: decoded at full size
        return 1
    return round(width / result[1][2])


def _to_uint8_chw(image: Image.Image) -> torch.Tensor:
    return TF.pil_to_tensor(image)  # uint8 [3, H, W], as PILToTensor()


def train_image(
    path: str | os.PathLike,
    size: int = TRAIN_SIZE,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
    draft: bool = False,
) -> torch.Tensor:
    """``RandomResizedCrop(size)`` + ``RandomHorizontalFlip()`` of the image at ``path``, uint8 [3, size, size].

    Uses torch's global RNG exactly as those two transforms do (crop parameters, then one
    ``torch.rand(1)`` for the flip).
    """
    with open(path, "rb") as infile:
        image = Image.open(infile)  # header only: size known, nothing decoded yet
        top, left, height, width = RandomResizedCrop.get_params(image, list(scale), list(ratio))
        factor = _draft(image, min(height, width) / size) if draft else 1
        image = image if image.mode == "RGB" else image.convert("RGB")
        image.load()  # decode while the file is open
    if factor == 1:
        image = TF.resized_crop(
            image, top, left, height, width, [size, size], InterpolationMode.BILINEAR, antialias=True
        )
    else:
        box = (left / factor, top / factor, (left + width) / factor, (top + height) / factor)
        image = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    tensor = _to_uint8_chw(image)
    if torch.rand(1) < 0.5:  # RandomHorizontalFlip(p=0.5)
        tensor = tensor.flip(-1)
    return tensor


def _resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) of torchvision's ``Resize(size)``: short side ``size``, long side truncated."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def val_image(
    path: str | os.PathLike, resize: int = RESIZE_SIZE, crop: int = CROP_SIZE, draft: bool = False
) -> torch.Tensor:
    """``Resize(resize)`` + ``CenterCrop(crop)`` of the image at ``path``, uint8 [3, crop, crop]."""
    with open(path, "rb") as infile:
        image = Image.open(infile)
        width, height = image.size
        factor = _draft(image, min(width, height) / resize) if draft else 1
        image = image if image.mode == "RGB" else image.convert("RGB")
        image.load()
    if factor == 1:
        image = TF.resize(image, resize, InterpolationMode.BILINEAR, antialias=True)
    else:  # the full-size geometry, resampled from the reduced decode
        image = image.resize(
            _resized_size(width, height, resize), Image.Resampling.BILINEAR, box=(0, 0, width / factor, height / factor)
        )
    return _to_uint8_chw(TF.center_crop(image, crop))


@DATASETS.register_module()
class ImageNetDistill(DistillItems):
    """ImageNet-1k (ImageFolder layout) as uint8 CHW crops with optional CRD negatives.

    Items, as every suite dataset (:class:`~benchmark.data.base.DistillDataset`):
    ``{'inputs': uint8 [3, 224, 224], 'target': int, 'index': int}`` plus
    ``'contrast_index': int64 [K + 1]`` (own index, then K other-class negatives drawn by
    :class:`~benchmark.data.contrast.ClassBlockContrastSampler`, with replacement as
    mdistiller's ImageNet loader) when built with ``contrast_k=K``.

    Args:
        data_root: the ImageNet folder itself, holding ``train/`` and ``val/``.
        split: ``'train'`` (random resized crop + flip) or ``'val'`` (resize 256, center crop 224).
        contrast_k: CRD negatives per item; ``None`` for none (every method but CRD).
        draft: reduced-size JPEG decoding where the crop allows it (faster on large
            images, not pixel-identical; see the module docstring). Off by default.
        image_size: output side (224); ``resize_size``: val resize (256).
    """

    def __init__(
        self,
        data_root: str | os.PathLike,
        split: str = "train",
        contrast_k: int | None = None,
        draft: bool = False,
        image_size: int = TRAIN_SIZE,
        resize_size: int = RESIZE_SIZE,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.data_root = Path(data_root).expanduser()
        self.split = split
        self.split_dir = self.data_root / split
        self.draft = draft
        self.image_size, self.resize_size = int(image_size), int(resize_size)
        if not self.split_dir.is_dir():
            raise DatasetNotFoundError(
                f"ImageNet not found: {self.split_dir} is not a folder; expected {layout(self.data_root)}",
                self.split_dir,
            )
        classes = None
        train_dir = self.data_root / "train"
        try:
            if split != "train" and train_dir.is_dir():
                # The val split indexes classes as train does (listing class folders only: cheap).
                classes = tuple(find_classes(str(train_dir))[0])
            self.classes, self.paths, self.targets = self._scan(self.split_dir, classes)
            extra = [] if classes is None else sorted(set(find_classes(str(self.split_dir))[0]) - set(classes))
        except FileNotFoundError as err:  # torchvision: no class folder, or a class without images
            raise DatasetNotFoundError(
                f"ImageNet {split} split in {self.split_dir} is empty or incomplete ({_one_line(err)}); "
                f"expected {layout(self.data_root)}",
                self.split_dir,
            ) from err
        if extra:
            raise DatasetCorruptError(
                f"ImageNet {split} split {self.split_dir} has {len(extra)} class folder(s) that train/ lacks "
                f"(first: {extra[0]}); expected {layout(self.data_root)}",
                self.split_dir / extra[0],
            )
        self.contrast_k = contrast_k
        self.contrast = None if contrast_k is None else ClassBlockContrastSampler(self.targets, contrast_k)

    @staticmethod
    def _scan(folder: Path, classes: tuple[str, ...] | None) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
        return _scan(str(folder), folder.stat().st_mtime_ns, classes)

    def path(self, index: int) -> Path:
        return self.split_dir / os.fsdecode(self.paths[index])

    def load(self, index: int) -> torch.Tensor:
        """The transformed uint8 image of sample ``index`` (random for the train split)."""
        path = self.path(index)
        try:
            if self.split == "train":
                return train_image(path, self.image_size, draft=self.draft)
            return val_image(path, self.resize_size, self.image_size, draft=self.draft)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise DatasetCorruptError(f"ImageNet image {path} cannot be read ({_one_line(err)})", path) from err

    def image(self, index: int) -> torch.Tensor:
        return self.load(index)


__all__ = [
    "CROP_SIZE",
    "IMAGENET_MEAN",
    "IMAGENET_SPLIT_SIZES",
    "IMAGENET_STD",
    "ImageNetDistill",
    "RESIZE_SIZE",
    "TRAIN_SIZE",
    "layout",
    "train_image",
    "val_image",
]
