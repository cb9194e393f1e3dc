"""Data layer: CIFAR-100 reading and errors, the digits split, CRD sampling, the batch preprocessor."""

from __future__ import annotations

import time
import urllib.error
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from mmengine.dataset import default_collate, pseudo_collate
from mmengine.dataset import worker_init_fn as mmengine_worker_init_fn
from mmengine.registry import DATASETS, MODELS
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader

import benchmark.data.cifar100 as cifar100_module
from benchmark.data import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    DIGITS_MEAN,
    DIGITS_STD,
    CIFAR100Distill,
    ContrastSampler,
    DatasetCorruptError,
    DatasetNotFoundError,
    DigitsDistill,
    DistillDataPreprocessor,
    DistillDataset,
    random_crop_flip,
)
from benchmark.data.digits import digits_train_statistics
from tests.datagen import read_python2_pickle, write_tiny_cifar100

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cifar100(tmp_path_factory.mktemp("cifar"), n_train=200, n_test=100, seed=0)


def _copy_tiny(tmp_path: Path) -> Path:
    """A private copy for tests that damage files."""
    return write_tiny_cifar100(tmp_path, n_train=120, n_test=100, seed=1)


# --------------------------------------------------------------------------- CIFAR-100


def test_tiny_files_have_the_official_layout(tiny_root: Path) -> None:
    train = read_python2_pickle(tiny_root / "cifar-100-python" / "train")
    meta = read_python2_pickle(tiny_root / "cifar-100-python" / "meta")
    assert set(train) == {b"data", b"fine_labels", b"coarse_labels", b"filenames", b"batch_label"}
    assert train[b"data"].dtype == np.uint8 and train[b"data"].shape == (200, 3072)
    assert set(meta) == {b"fine_label_names", b"coarse_label_names"} and len(meta[b"fine_label_names"]) == 100


@pytest.mark.parametrize("split, n", [("train", 200), ("test", 100)])
def test_cifar_round_trip_pixels_labels_and_chw_order(tiny_root: Path, split: str, n: int) -> None:
    written = read_python2_pickle(tiny_root / "cifar-100-python" / split)
    rows, labels = written[b"data"], written[b"fine_labels"]
    ds = CIFAR100Distill(tiny_root, split=split)

    assert len(ds) == n and ds.num_classes == 100
    assert list(ds.targets) == labels and all(type(t) is int for t in ds.targets)
    assert set(ds.targets) == set(range(100))  # every class present
    for i in (0, 1, n - 1):
        item = ds[i]
        assert item["inputs"].dtype == torch.uint8 and item["inputs"].shape == (3, 32, 32)
        assert item["target"] == labels[i] and item["index"] == i
        # python format: R plane, G plane, B plane, each row-major 32x32
        for channel, y, x in ((0, 0, 0), (0, 5, 17), (1, 31, 2), (2, 12, 31)):
            assert int(item["inputs"][channel, y, x]) == int(rows[i, channel * 1024 + y * 32 + x])
    assert torch.equal(ds.images, torch.from_numpy(rows.reshape(n, 3, 32, 32)))


def test_cifar_items_collate_and_build_from_config(tiny_root: Path) -> None:
    ds = DATASETS.build(dict(type="CIFAR100Distill", data_root=str(tiny_root), split="train", contrast_k=16))
    assert isinstance(ds, CIFAR100Distill)
    item = ds[7]
    assert set(item) == {"inputs", "target", "index", "contrast_index"}
    assert item["contrast_index"].dtype == torch.long and item["contrast_index"].shape == (17,)
    batch = default_collate([ds[i] for i in range(4)])
    assert batch["inputs"].shape == (4, 3, 32, 32) and batch["inputs"].dtype == torch.uint8
    assert batch["target"].tolist() == ds.targets[:4] and batch["index"].tolist() == [0, 1, 2, 3]
    assert batch["contrast_index"].shape == (4, 17)
    assert ds.metainfo["classes"][0] == "fine_000"
    assert "contrast_index" not in CIFAR100Distill(tiny_root, split="test")[0]


def _assert_one_line(err: BaseException, *fragments: str) -> None:
    message = str(err)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_missing_cifar_names_the_path_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        CIFAR100Distill(tmp_path, split="train")
    assert isinstance(info.value, FileNotFoundError)
    missing = tmp_path / "cifar-100-python" / "train"
    _assert_one_line(info.value, str(missing), "download=True", "--download", CIFAR_URL)
    assert info.value.path == missing


def test_missing_meta_is_named(tmp_path: Path) -> None:
    root = _copy_tiny(tmp_path)
    (root / "cifar-100-python" / "meta").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        CIFAR100Distill(root, split="test")
    _assert_one_line(info.value, str(root / "cifar-100-python" / "meta"))


def test_failed_download_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure\nin name resolution")

    monkeypatch.setattr(cifar100_module, "download_and_extract_archive", offline)
    with pytest.raises(DatasetNotFoundError) as info:
        CIFAR100Distill(tmp_path / "fresh", split="train", download=True)
    _assert_one_line(info.value, str(tmp_path / "fresh"), CIFAR_URL, "URLError", "cifar-100-python/")


def test_download_is_skipped_when_files_are_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _copy_tiny(tmp_path)
    monkeypatch.setattr(cifar100_module, "download_and_extract_archive", pytest.fail)
    assert len(CIFAR100Distill(root, split="train", download=True)) == 120


@pytest.mark.parametrize(
    "name, damage",
    [
        ("train", lambda data: data[: len(data) // 2]),  # truncated download
        ("train", lambda data: b"<html>404 Not Found</html>"),  # a web page saved as the file
        ("test", lambda data: b""),
        ("meta", lambda data: data[:40]),
    ],
)
def test_corrupt_cifar_file_is_named(tmp_path: Path, name: str, damage) -> None:
    root = _copy_tiny(tmp_path)
    path = root / "cifar-100-python" / name
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DatasetCorruptError) as info:
        CIFAR100Distill(root, split="test" if name == "test" else "train")
    assert isinstance(info.value, DatasetNotFoundError)
    _assert_one_line(info.value, str(path), "corrupt")


def test_inconsistent_cifar_file_is_named(tmp_path: Path) -> None:
    from tests.datagen import python2_pickle

    root = _copy_tiny(tmp_path)
    path = root / "cifar-100-python" / "train"
    batch = read_python2_pickle(path)
    batch[b"fine_labels"] = batch[b"fine_labels"][:-3]
    path.write_bytes(python2_pickle(batch))
    with pytest.raises(DatasetCorruptError) as info:
        CIFAR100Distill(root, split="train")
    _assert_one_line(info.value, str(path), "120 images but 117 labels")


# --------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> dict[str, DigitsDistill]:
    return {split: DigitsDistill(split) for split in ("train", "test")}


def test_digits_split_is_fixed_stratified_and_complete(digits: dict[str, DigitsDistill]) -> None:
    train, test = digits["train"], digits["test"]
    assert (len(train), len(test)) == (1438, 359)
    assert train.num_classes == test.num_classes == 10
    together = np.concatenate([train.source_indices, test.source_indices])
    assert sorted(together.tolist()) == list(range(1797))
    counts = np.bincount(load_digits().target)
    assert np.bincount(test.targets).tolist() == [(n * 20 + 50) // 100 for n in counts]
    # pinned: a change here changes every digits result in the suite
    assert test.source_indices[:8].tolist() == PINNED_DIGITS_TEST_HEAD
    assert int(test.source_indices.sum()) == PINNED_DIGITS_TEST_SUM
    again = DigitsDistill("test")
    assert np.array_equal(again.source_indices, test.source_indices) and torch.equal(again.images, test.images)


PINNED_DIGITS_TEST_HEAD = [2, 3, 11, 13, 15, 20, 21, 32]
PINNED_DIGITS_TEST_SUM = 333354


def test_digits_images_are_upscaled_real_digits(digits: dict[str, DigitsDistill]) -> None:
    test = digits["test"]
    source = load_digits()
    item = test[5]
    assert item["inputs"].dtype == torch.uint8 and item["inputs"].shape == (3, 32, 32)
    assert torch.equal(item["inputs"][0], item["inputs"][1]) and torch.equal(item["inputs"][0], item["inputs"][2])
    assert item["target"] == int(source.target[test.source_indices[5]])
    small = torch.tensor(source.images[test.source_indices[5]], dtype=torch.float32)[None, None]
    expected = torch.nn.functional.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    # Exact although the dataset interpolates the whole split in one batch and scales by
    # 255/16 in one multiply: pixels are integers 0..16 and the 4x bilinear weights are
    # multiples of 1/8, so every intermediate (≤ 4080 in steps of 1/64) is exact in float32
    # in any order, and both sides round the same exact value.
    assert torch.equal(item["inputs"][0], (expected[0, 0] * 255 / 16).round().to(torch.uint8))
    assert int(test.images.max()) == 255 and int(test.images.min()) == 0


def test_digits_constants_match_the_train_split() -> None:
    mean, std = digits_train_statistics()
    # Constants stored to 6 decimals (≤ 5e-7) vs a float64 reduction over 1.5M pixels
    # (≲ 1e-10): atol 1e-6 (+ numpy's default rtol 1e-5); a different split moves them by ≥ 1e-4.
    assert np.allclose(mean, DIGITS_MEAN, atol=1e-6) and np.allclose(std, DIGITS_STD, atol=1e-6)


def test_digits_with_contrast_uses_replacement_beyond_the_pool(digits: dict[str, DigitsDistill]) -> None:
    ds = DATASETS.build(dict(type="DigitsDistill", split="train", contrast_k=4096))
    row = ds[0]["contrast_index"]
    assert row.shape == (4097,) and row[0] == 0
    negatives_targets = np.asarray(ds.targets)[row[1:].numpy()]
    assert (negatives_targets != ds.targets[0]).all()
    assert len(np.unique(row[1:].numpy())) < 4096  # pool of ~1,294 < K: with replacement


# --------------------------------------------------------------------------- CRD sampling


def _targets(n_per_class: int, classes: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(classes), n_per_class))


def test_contrast_rows_are_own_index_then_other_class_negatives() -> None:
    targets = _targets(30, 5)
    sampler = ContrastSampler(targets, k=100, rng=np.random.default_rng(0))  # pool 120 >= K
    for index in range(0, 150, 7):
        row = sampler.draw(index)
        assert row.dtype == np.int64 and row.shape == (101,) and row[0] == index
        assert (targets[row[1:]] != targets[index]).all()
        assert len(np.unique(row[1:])) == 100  # without replacement


def test_contrast_pools_match_repdistiller() -> None:
    targets = _targets(4, 6)
    by_class = [[i for i, t in enumerate(targets) if t == c] for c in range(6)]
    expected = [[i for other in range(6) if other != c for i in by_class[other]] for c in range(6)]
    pools = ContrastSampler(targets, k=3).pools
    assert [pool.tolist() for pool in pools] == expected


def test_contrast_with_replacement_when_k_exceeds_the_pool() -> None:
    targets = np.array([0] * 5 + [1] * 3)
    sampler = ContrastSampler(targets, k=50, rng=np.random.default_rng(0))
    row = sampler.draw(1)
    assert set(row[1:].tolist()) == {5, 6, 7}  # only class 1, all of it, repeatedly


def test_contrast_negatives_are_uniform_over_the_pool() -> None:
    targets = _targets(10, 10)
    sampler = ContrastSampler(targets, k=30, rng=np.random.default_rng(1))
    index = 0
    pool = np.flatnonzero(targets != targets[index])
    counts = np.bincount(np.concatenate([sampler.draw(index)[1:] for _ in range(3000)]), minlength=100)[pool]
    expected = 3000 * 30 / len(pool)  # 1,000 each
    chi2 = float((((counts - expected) ** 2) / expected).sum())
    assert chi2 < 160, chi2  # 89 dof: mean 89, sd 13
    first = np.bincount([sampler.draw(index)[1] for _ in range(4500)], minlength=100)[pool]
    assert first.min() > 0  # every pool member can come first: the order is random too


def test_contrast_is_reproducible_with_a_seed() -> None:
    targets = _targets(20, 5)
    a = ContrastSampler(targets, 30, rng=np.random.default_rng(3))
    b = ContrastSampler(targets, 30, rng=np.random.default_rng(3))
    assert all(np.array_equal(a.draw(i), b.draw(i)) for i in range(10))

    def lazy_draws(torch_seed: int) -> list[np.ndarray]:
        torch.manual_seed(torch_seed)  # no rng given: the stream comes from torch's seed
        sampler = ContrastSampler(targets, 30)
        return [sampler.draw(i) for i in range(5)]

    first = lazy_draws(11)
    assert all(np.array_equal(x, y) for x, y in zip(first, lazy_draws(11)))
    assert not all(np.array_equal(x, y) for x, y in zip(first, lazy_draws(12)))


def test_contrast_rejects_degenerate_input() -> None:
    with pytest.raises(ValueError):
        ContrastSampler([0, 0, 0], k=2)
    with pytest.raises(ValueError):
        ContrastSampler([0, 1], k=0)


def _loader_rows(dataset: DistillDataset, seed: int, epochs: int, **loader_kwargs: object) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=default_collate, **loader_kwargs)
    return [batch["contrast_index"] for _ in range(epochs) for batch in loader]


def test_contrast_streams_per_worker_are_distinct_and_reproducible() -> None:
    # Batches 0 and 1 (workers 0 and 1) are all class 0: a shared stream would give equal rows.
    dataset = DistillDataset(torch.zeros(16, 3, 32, 32, dtype=torch.uint8), [0] * 8 + [1] * 8, ("a", "b"), contrast_k=6)
    mmengine_init = partial(mmengine_worker_init_fn, num_workers=2, rank=0, seed=0)  # what the Runner installs
    run = _loader_rows(dataset, seed=0, epochs=2, worker_init_fn=mmengine_init)
    assert all(torch.equal(x, y) for x, y in zip(run, _loader_rows(dataset, 0, 2, worker_init_fn=mmengine_init)))
    assert not torch.equal(run[0][:, 1:], run[1][:, 1:])  # worker 0 vs worker 1
    assert not torch.equal(run[0], run[4])  # epoch 1 vs epoch 2, despite mmengine's per-epoch re-seed
    assert not all(torch.equal(x, y) for x, y in zip(run, _loader_rows(dataset, 1, 2)))


# --------------------------------------------------------------------------- preprocessor


def _position_images(batch: int) -> torch.Tensor:
    """Channel 0 = row + 1, channel 1 = column + 1 (0 only in padding), channel 2 random."""
    grid = torch.arange(1, 33, dtype=torch.uint8)
    images = torch.empty(batch, 3, 32, 32, dtype=torch.uint8)
    images[:, 0] = grid[:, None]
    images[:, 1] = grid[None, :]
    images[:, 2] = torch.randint(0, 256, (batch, 32, 32), dtype=torch.uint8)
    return images


def _crop_params(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Recover (top, left, flipped) of augmented position images ``[B, 3, 32, 32]`` from interior pixel (16, 16)."""
    row_source = out[:, 0, 16, 16].long() - 1
    col_source = out[:, 1, 16, 16].long() - 1
    flipped = out[:, 1, 16, 17] < out[:, 1, 16, 16]
    top = row_source - 16 + 4
    left = torch.where(flipped, col_source - (31 - 16), col_source - 16) + 4
    return top, left, flipped


def test_crop_flip_moves_pixels_exactly_like_torchvision() -> None:
    torch.manual_seed(0)
    images = _position_images(300)
    out = random_crop_flip(images, padding=4)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    for image, result, top, left, flipped in zip(images, out, *_crop_params(out)):
        top, left, flipped = int(top), int(left), bool(flipped)
        expected = TF.crop(TF.pad(image, [4]), top, left, 32, 32)  # RandomCrop(32, padding=4) with these offsets
        if flipped:
            expected = TF.hflip(expected)
        assert torch.equal(result, expected)


def test_crop_flip_covers_all_81_offsets_and_both_flips_uniformly() -> None:
    torch.manual_seed(1)
    out = random_crop_flip(_position_images(8100), padding=4)
    top, left, flipped = _crop_params(out)
    offsets = np.bincount((top * 9 + left).numpy(), minlength=81)
    assert offsets.shape == (81,) and offsets.min() > 0
    chi2 = float((((offsets - 100) ** 2) / 100).sum())
    assert chi2 < 150, chi2  # 80 dof: mean 80, sd 12.6
    flips = int(flipped.sum())
    assert 3850 < flips < 4250  # 4,050 +- 45


def test_crop_flip_draws_from_torch_global_generator() -> None:
    images = _position_images(64)
    torch.manual_seed(5)
    a = random_crop_flip(images)
    torch.manual_seed(5)
    assert torch.equal(a, random_crop_flip(images))
    assert not torch.equal(a, random_crop_flip(images))


def _batch(n: int = 8) -> dict[str, object]:
    torch.manual_seed(2)
    items = [
        {
            "inputs": torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8),
            "target": i % 3,
            "index": i,
            "contrast_index": torch.arange(5) + i,
        }
        for i in range(n)
    ]
    return default_collate(items)


# The preprocessor's normalisation vs torchvision's ToTensor + Normalize: two float32
# computations of (x/255 − mean)/std, a few roundings of values |·| ≤ 2.1 (ulp 2.4e-7):
# torch.allclose with atol 1e-6 (+ its default rtol 1e-5) covers them; a wrong mean/std or
# channel order is off by ≥ 1e-2. The uint8 crops and flips above stay exact.
def _normalised(inputs: torch.Tensor) -> torch.Tensor:
    return torch.stack(
        [
            TF.normalize(image.float().div(255), CIFAR100_MEAN, CIFAR100_STD)  # ToTensor + Normalize
            for image in inputs
        ]
    )


def test_preprocessor_normalises_like_torchvision_without_augmentation() -> None:
    preprocessor = MODELS.build(
        dict(type="DistillDataPreprocessor", mean=CIFAR100_MEAN, std=CIFAR100_STD, augment=False)
    )
    assert isinstance(preprocessor, DistillDataPreprocessor)
    batch = _batch()
    out = preprocessor(batch, training=True)
    assert out["inputs"].dtype == torch.float32
    assert torch.allclose(out["inputs"], _normalised(batch["inputs"]), atol=1e-6)
    assert torch.equal(out["target"], batch["target"]) and torch.equal(out["contrast_index"], batch["contrast_index"])
    assert set(out) == set(batch)


def test_preprocessor_never_augments_in_eval() -> None:
    preprocessor = DistillDataPreprocessor(CIFAR100_MEAN, CIFAR100_STD, augment=True)
    batch = _batch()
    expected = _normalised(batch["inputs"])
    for _ in range(3):
        assert torch.allclose(preprocessor(batch, training=False)["inputs"], expected, atol=1e-6)
    assert not torch.allclose(preprocessor(batch, training=True)["inputs"], expected, atol=1e-6)


def test_preprocessor_augments_then_normalises_in_training() -> None:
    preprocessor = DistillDataPreprocessor(CIFAR100_MEAN, CIFAR100_STD, augment=True)
    batch = _batch()
    torch.manual_seed(9)
    out = preprocessor(batch, training=True)["inputs"]
    torch.manual_seed(9)
    assert torch.allclose(out, _normalised(random_crop_flip(batch["inputs"])), atol=1e-6)


def test_preprocessor_accepts_pseudo_collate_lists() -> None:
    preprocessor = DistillDataPreprocessor(CIFAR100_MEAN, CIFAR100_STD)
    items = [{"inputs": torch.full((3, 32, 32), 7, dtype=torch.uint8), "target": 1, "index": i} for i in range(3)]
    out = preprocessor(pseudo_collate(items), training=False)
    assert out["inputs"].shape == (3, 3, 32, 32) and out["target"].tolist() == [1, 1, 1]
    assert out["index"].tolist() == [0, 1, 2]


# --------------------------------------------------------------------------- speed (tox -e bench)


@pytest.mark.bench
def test_draw_time_report() -> None:
    """Per-sample CRD draw on CIFAR-100's shape: RepDistiller's call vs ContrastSampler."""
    targets = _targets(500, 100)
    k, repeats = 16384, 200
    sampler = ContrastSampler(targets, k, rng=np.random.default_rng(0))
    legacy = np.random.RandomState(0)
    pools = sampler.pools

    def naive(index: int) -> np.ndarray:
        return legacy.choice(pools[targets[index]], k, replace=False)

    timings = {}
    for name, draw in (("RandomState.choice (RepDistiller)", naive), ("ContrastSampler.draw", sampler.draw)):
        start = time.perf_counter()
        for index in range(repeats):
            draw(index)
        timings[name] = (time.perf_counter() - start) / repeats
    for name, seconds in timings.items():
        print(f"{name}: {seconds * 1e6:.0f} us/sample")
    assert timings["ContrastSampler.draw"] < timings["RandomState.choice (RepDistiller)"]
