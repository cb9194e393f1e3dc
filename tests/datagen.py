"""Tiny datasets in the real on-disk formats, for tests on machines without the data.

``write_tiny_cifar100`` writes ``cifar-100-python/{train,test,meta}`` byte-for-byte
in the layout of the official archive: Python 2 pickles (protocol 2) whose strings
are Python 2 ``str``. That is why the official loader reads them with
``encoding='bytes'`` (keys come back as ``b'data'``) and torchvision with
``encoding='latin1'`` (keys come back as ``'data'``); a Python 3 ``pickle.dump`` of
``bytes`` keys would satisfy only the first.

``write_tiny_imagefolder`` writes a small ImageNet in torchvision's ImageFolder layout
(real JPEG files, WordNet-id class folders).
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np

CIFAR100_FOLDER = "cifar-100-python"
NUM_FINE = 100
NUM_COARSE = 20


class _Python2Pickler(pickle._Pickler):
    """Protocol-2 pickler that writes ``bytes`` as Python 2 ``str`` (BINSTRING opcodes)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str

    def save_global(self, obj: object, name: str | None = None) -> None:
        """Name numpy's ``_reconstruct`` as Python 2 era numpy did (``numpy.core``), like the archive."""
        module = getattr(obj, "__module__", "") or ""
        if module.startswith("numpy._core."):
            legacy = "numpy.core." + module[len("numpy._core.") :]
            self.write(pickle.GLOBAL + f"{legacy}\n{name or obj.__name__}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


def python2_pickle(obj: object) -> bytes:
    """``obj`` pickled the way the CIFAR archive's Python 2 ``cPickle.dump`` did."""
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """Every class present when ``n >= 100``: cycle the classes, then shuffle."""
    return rng.permutation(np.arange(n) % NUM_FINE)


def _batch(name: str, n: int, rng: np.random.Generator) -> dict[bytes, object]:
    fine = _labels(n, rng)
    return {
        b"filenames": [f"tiny_{name}_{i:06d}.png".encode() for i in range(n)],
        b"batch_label": f"{'training' if name == 'train' else 'testing'} batch 1 of 1".encode(),
        b"fine_labels": [int(label) for label in fine],
        b"coarse_labels": [int(label) // (NUM_FINE // NUM_COARSE) for label in fine],
        # Each row: 1024 red, then 1024 green, then 1024 blue values, row-major.
        b"data": rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8),
    }


def write_tiny_cifar100(root: str | Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """Write a small CIFAR-100 under ``root``; returns ``root`` (the ``data_root`` to pass).

    Pixels are random uint8; read them back from the pickles (``read_python2_pickle``)
    to compare.
    """
    root = Path(root)
    folder = root / CIFAR100_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in (("train", n_train), ("test", n_test)):
        (folder / name).write_bytes(python2_pickle(_batch(name, n, rng)))
    meta = {
        b"fine_label_names": [f"fine_{i:03d}".encode() for i in range(NUM_FINE)],
        b"coarse_label_names": [f"coarse_{i:02d}".encode() for i in range(NUM_COARSE)],
    }
    (folder / "meta").write_bytes(python2_pickle(meta))
    return root


def read_python2_pickle(path: str | Path) -> dict[bytes, object]:
    """Read a file the way the CIFAR website's snippet does (bytes keys)."""
    with open(path, "rb") as infile:
        return pickle.load(infile, encoding="bytes")


# The first ImageNet-1k class folders (WordNet ids, sorted as torchvision's ImageFolder sorts them).
IMAGENET_FIRST_WNIDS = (
    "n01440764",
    "n01443537",
    "n01484850",
    "n01491361",
    "n01494475",
    "n01496331",
    "n01498041",
    "n01514668",
    "n01514859",
    "n01518878",
)


def wnid(i: int) -> str:
    """A WordNet-id-like folder name: the real first ImageNet ones, then made-up, still sorted."""
    return IMAGENET_FIRST_WNIDS[i] if i < len(IMAGENET_FIRST_WNIDS) else f"n{99_000_000 + i:08d}"


def smooth_image(rng: np.random.Generator, size: tuple[int, int], mode: str = "RGB"):
    """A PIL image of ``size`` (w, h): a coarse random colour field upsampled bicubically, plus
    mild noise — compresses like a photo, unlike white noise."""
    from PIL import Image

    width, height = size
    coarse = rng.integers(0, 256, size=(max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    pixels = np.clip(field + rng.normal(0, 6, size=field.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).convert(mode)


def write_tiny_imagefolder(
    root: str | Path,
    n_classes: int = 3,
    per_class_train: int = 4,
    per_class_val: int = 2,
    size: tuple[int, int] = (64, 48),
    seed: int = 0,
) -> Path:
    """Write ``<root>/train/<wnid>/<wnid>_<k>.JPEG`` and ``<root>/val/<wnid>/ILSVRC2012_val_<n>.JPEG``
    (real JPEG files, PIL, quality 90) in torchvision's ImageFolder layout; returns ``root``.

    ``size`` is (width, height). The first train image of the first class is a grayscale
    (mode 'L') JPEG, as ImageNet has some: loaders must convert it to RGB.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    val_number = 0
    for c in range(n_classes):
        for split, count in (("train", per_class_train), ("val", per_class_val)):
            folder = root / split / wnid(c)
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                mode = "L" if (split, c, k) == ("train", 0, 0) else "RGB"
                if split == "train":
                    name = f"{wnid(c)}_{k}.JPEG"
                else:
                    val_number += 1
                    name = f"ILSVRC2012_val_{val_number:08d}.JPEG"
                smooth_image(rng, size, mode).save(folder / name, format="JPEG", quality=90)
    return root
