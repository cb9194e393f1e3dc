"""The ImageNet suite's models and data: models (torchvision / mdistiller compatibility, taps),
data (ImageFolder, transforms, CRD sampling in O(N) memory).

Expected values are written here independently of the code under test: layer shapes and
parameter counts from the reference definitions (torchvision, mdistiller's
``mdistiller/models/imagenet/mobilenetv1.py``). Recipes, published numbers and runs end to
end are in tests/test_imagenet_runs.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms as T
from mmengine.config import Config
from mmengine.registry import DATASETS, MODELS
from torch import nn
from torchvision.datasets import ImageFolder

from benchmark.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassBlockContrastSampler,
    DatasetCorruptError,
    DatasetNotFoundError,
    ImageNetDistill,
)
from benchmark.data.imagenet import train_image
from benchmark.models import FeatureRecorder, build_model, feature_taps
from benchmark.train import CONFIG_DIR
from methods.fitnet import ConvReg
from tests.datagen import smooth_image, write_tiny_imagefolder
from tests.imagenet_common import (  # noqa: F401  (single_thread: the autouse fixture)
    N_CLASSES,
    PER_CLASS_TRAIN,
    PER_CLASS_VAL,
    SUITE,
    TAPS_224,
    single_thread,
)


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory) -> Path:
    # 300x260 JPEGs: larger than the 224 crops, like real ImageNet images.
    return write_tiny_imagefolder(
        tmp_path_factory.mktemp("imagenet"), N_CLASSES, PER_CLASS_TRAIN, PER_CLASS_VAL, size=(300, 260), seed=0
    )


def perturbed(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so that equalities mean something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith(("running_mean", "bias")) or (name.endswith("weight") and tensor.dim() == 1):
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))
    return model.eval()


# --------------------------------------------------------------------------- models

# torchvision constructors and their (parameter count at 1000 classes, state-dict entries).
TORCHVISION = {
    "resnet18_in1k": (torchvision.models.resnet18, 11_689_512, 122),
    "resnet34_in1k": (torchvision.models.resnet34, 21_797_672, 218),
    "resnet50_in1k": (torchvision.models.resnet50, 25_557_032, 320),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_resnets_have_torchvision_keys_and_shapes(name):
    constructor, params, entries = TORCHVISION[name]
    ours, theirs = build_model(name, 1000).state_dict(), constructor(weights=None).state_dict()
    assert [(k, tuple(v.shape)) for k, v in ours.items()] == [(k, tuple(v.shape)) for k, v in theirs.items()]
    assert len(ours) == entries
    assert (
        sum(
            v.numel() for k, v in ours.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
        )
        == params
    )


def test_resnet34_loads_torchvision_weights_strictly_and_computes_the_same_logits():
    torch.manual_seed(0)
    reference = perturbed(torchvision.models.resnet34(weights=None))
    ours = build_model("resnet34_in1k", 1000).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)  # a torchvision weight file, in effect
    assert isinstance(ours, torchvision.models.ResNet)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # Exact: torchvision's class and kernels; in-place vs out-of-place add / ReLU is the same op.
        assert torch.equal(ours(x), reference(x))


def test_resnets_build_like_torchvision_for_the_same_seed():
    torch.manual_seed(5)
    ours = build_model("resnet18_in1k", 1000).state_dict()
    torch.manual_seed(5)
    theirs = torchvision.models.resnet18(weights=None).state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


class ReferenceMobileNetV1(nn.Module):
    """mdistiller's MobileNetV1 re-stated from its source: AvgPool2d(7), ReLU(inplace=True),
    reshape(-1, 1024), feats[1] = relu(model[5][:-1](...)) (the stride-8 feature)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()

        def conv_bn(inp, oup, stride):
            return nn.Sequential(
                nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True)
            )

        def conv_dw(inp, oup, stride):
            return nn.Sequential(
                nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
                nn.BatchNorm2d(inp),
                nn.ReLU(inplace=True),
                nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
                nn.BatchNorm2d(oup),
                nn.ReLU(inplace=True),
            )

        self.model = nn.Sequential(
            conv_bn(3, 32, 2),
            conv_dw(32, 64, 1),
            conv_dw(64, 128, 2),
            conv_dw(128, 128, 1),
            conv_dw(128, 256, 2),
            conv_dw(256, 256, 1),
            conv_dw(256, 512, 2),
            conv_dw(512, 512, 1),
            conv_dw(512, 512, 1),
            conv_dw(512, 512, 1),
            conv_dw(512, 512, 1),
            conv_dw(512, 512, 1),
            conv_dw(512, 1024, 2),
            conv_dw(1024, 1024, 1),
            nn.AvgPool2d(7),
        )
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        feat1 = self.model[3][:-1](self.model[0:3](x))
        feat2 = self.model[5][:-1](self.model[4:5](torch.relu(feat1)))
        feat3 = self.model[11][:-1](self.model[6:11](torch.relu(feat2)))
        feat4 = self.model[13][:-1](self.model[12:13](torch.relu(feat3)))
        pooled = self.model[14](torch.relu(feat4)).reshape(-1, 1024)
        return self.fc(pooled), torch.relu(feat2), pooled


def test_mobilenetv1_matches_mdistiller_parameters_and_keys():
    model = build_model("mobilenetv1_in1k", 1000)
    assert sum(p.numel() for p in model.parameters()) == 4_231_976
    state = model.state_dict()
    pattern = re.compile(
        r"model\.(\d+)\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)|fc\.(weight|bias)"
    )
    assert all(pattern.fullmatch(key) for key in state)
    # conv_bn: conv + BN (5 entries) = 6; 13 conv_dw: 2 x (conv + BN) = 12 each; fc: 2.
    assert len(state) == 6 + 13 * 12 + 2
    assert [(k, tuple(v.shape)) for k, v in state.items()] == [
        (k, tuple(v.shape)) for k, v in ReferenceMobileNetV1().state_dict().items()
    ]
    for key, shape in {
        "model.0.0.weight": (32, 3, 3, 3),
        "model.1.0.weight": (32, 1, 3, 3),
        "model.1.3.weight": (64, 32, 1, 1),
        "model.12.0.weight": (512, 1, 3, 3),
        "model.12.3.weight": (1024, 512, 1, 1),
        "model.13.4.running_var": (1024,),
        "fc.weight": (1000, 1024),
    }.items():
        assert tuple(state[key].shape) == shape, key


def test_mobilenetv1_computes_mdistillers_logits_pool_and_hint_at_224():
    torch.manual_seed(0)
    reference = perturbed(ReferenceMobileNetV1())
    ours = build_model("mobilenetv1_in1k", 1000).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), FeatureRecorder(ours, feature_taps("mobilenetv1_in1k")) as recorder:
        logits = ours(x)
        ref_logits, ref_hint, ref_pooled = reference(x)
    # Exact: the same convolutions, and the pool is the very avg_pool2d(kernel 7) call at 7x7.
    assert torch.equal(logits, ref_logits)
    assert torch.equal(recorder.features["embedding"], ref_pooled)
    assert torch.equal(recorder.features["hint"], ref_hint)  # model.5 output = mdistiller feats[1]


@pytest.mark.parametrize("name", sorted(TAPS_224))
def test_tap_shapes_at_224(name):
    model = build_model(name, 1000).eval()
    hint_shape, embedding_dim = TAPS_224[name]
    with torch.no_grad(), FeatureRecorder(model, feature_taps(name)) as recorder:
        logits = model(torch.randn(1, 3, 224, 224))
    assert logits.shape == (1, 1000)
    assert recorder.features["hint"].shape == (1, *hint_shape)
    assert recorder.features["embedding"].shape == (1, embedding_dim)
    assert torch.equal(model.fc(recorder.features["embedding"]), logits)


def test_fitnet_regressor_maps_student_hints_onto_teacher_hints():
    for pair in SUITE.pairs:
        student, teacher = TAPS_224[pair.student][0], TAPS_224[pair.teacher][0]
        reg = ConvReg((2, *student), (2, *teacher))
        assert isinstance(reg.conv, nn.Conv2d) and reg.conv.kernel_size == (1, 1)
        assert reg(torch.zeros(2, *student)).shape == (2, *teacher)


# --------------------------------------------------------------------------- data


def test_dataset_length_targets_indices_and_items(tiny_imagenet):
    train = DATASETS.build(dict(type="ImageNetDistill", data_root=str(tiny_imagenet), split="train"))
    val = ImageNetDistill(tiny_imagenet, split="val")
    assert (len(train), len(val)) == (N_CLASSES * PER_CLASS_TRAIN, N_CLASSES * PER_CLASS_VAL)
    assert train.classes == val.classes == ("n01440764", "n01443537", "n01484850")
    assert train.num_classes == 3 and train.metainfo == {"classes": train.classes}
    assert train.targets.tolist() == np.repeat(np.arange(3), PER_CLASS_TRAIN).tolist()
    assert train.targets.tolist() == ImageFolder(str(tiny_imagenet / "train")).targets
    item = train[5]
    assert set(item) == {"inputs", "target", "index"}
    assert item["inputs"].dtype == torch.uint8 and item["inputs"].shape == (3, 224, 224)
    assert (item["target"], item["index"]) == (1, 5) and train[-1]["index"] == len(train) - 1
    assert val[0]["inputs"].shape == (3, 224, 224)

    crd = ImageNetDistill(tiny_imagenet, split="train", contrast_k=7)
    row = crd[5]["contrast_index"]
    assert row.dtype == torch.long and row.shape == (8,) and row[0] == 5
    assert (crd.targets[row[1:].numpy()] != 1).all()


def test_images_are_pixel_identical_to_torchvision_imagefolder_transforms(tiny_imagenet):
    train = ImageNetDistill(tiny_imagenet, split="train")
    reference = ImageFolder(
        str(tiny_imagenet / "train"),
        transform=T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.PILToTensor()]),
    )
    for index in range(len(train)):  # index 0 is a grayscale JPEG
        torch.manual_seed(100 + index)
        ours = train[index]["inputs"]
        torch.manual_seed(100 + index)
        assert torch.equal(ours, reference[index][0]), index
    val = ImageNetDistill(tiny_imagenet, split="val")
    reference = ImageFolder(
        str(tiny_imagenet / "val"), transform=T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()])
    )
    assert all(torch.equal(val[i]["inputs"], reference[i][0]) for i in range(len(val)))


def test_preprocessor_normalises_exactly_like_totensor_and_normalize(tiny_imagenet):
    cfg = Config.fromfile(CONFIG_DIR / "datasets" / "imagenet.py")
    assert cfg.data_preprocessor.augment is False  # crop and flip happen in the dataset
    preprocessor = MODELS.build(cfg.data_preprocessor)
    images = torch.stack([ImageNetDistill(tiny_imagenet, split="val")[i]["inputs"] for i in range(2)])
    out = preprocessor({"inputs": images, "target": torch.tensor([0, 0])}, training=True)["inputs"]
    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    expected = torch.stack([normalize(T.functional.to_tensor(image.permute(1, 2, 0).numpy())) for image in images])
    assert torch.equal(out, expected)


def test_missing_root_is_one_line_naming_path_and_layout(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        DATASETS.build(dict(type="ImageNetDistill", data_root=str(missing), split="train"))
    message = str(info.value)
    assert "\n" not in message and str(missing / "train") in message
    assert "train/<wnid>/*.JPEG" in message and "val/<wnid>/*.JPEG" in message
    assert info.value.path == missing / "train"
    (tmp_path / "empty" / "val").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="empty") as info:
        ImageNetDistill(tmp_path / "empty", split="val")
    assert "\n" not in str(info.value)


def test_val_classes_follow_train_and_extra_val_classes_are_refused(tmp_path):
    root = write_tiny_imagefolder(tmp_path, n_classes=2, per_class_train=1, per_class_val=1)
    extra = root / "val" / "n09999999"
    extra.mkdir()
    smooth_image(np.random.default_rng(0), (32, 32)).save(extra / "x.JPEG")
    with pytest.raises(DatasetCorruptError, match="n09999999"):
        ImageNetDistill(root, split="val")


def test_draft_decoding_keeps_geometry_and_stays_close(tmp_path):
    path = tmp_path / "big.JPEG"
    smooth_image(np.random.default_rng(0), (1000, 950)).save(path, format="JPEG", quality=90)
    torch.manual_seed(0)
    exact = train_image(path, scale=(1.0, 1.0), ratio=(1.0, 1.0))  # the full 950x950 centre: draft 1/4
    torch.manual_seed(0)
    drafted = train_image(path, scale=(1.0, 1.0), ratio=(1.0, 1.0), draft=True)
    assert drafted.shape == exact.shape == (3, 224, 224)
    difference = (drafted.float() - exact.float()).abs()
    assert 0 < difference.mean() < 2.0, difference.mean()  # another low-pass filter, same picture


def test_loader_benchmark_runs_and_reports_the_ratio(tmp_path):
    from benchmark.bench import imagenet_loader

    out = tmp_path / "imagenet_loader.json"
    report = imagenet_loader.main(
        ["--quick", "--classes", "2", "--per-class", "2", "--repeats", "1", "--sizes", "256x192", "--out", str(out)]
    )
    result = report["result"]
    assert result["train_ratio"] > 0 and result["val_ratio"] > 0
    assert result["images_per_pass"]["train_ours"] == result["images_per_pass"]["train_torchvision"] == 4
    assert "**" in out.with_suffix(".md").read_text() and out.is_file()


# --------------------------------------------------------------------------- CRD sampling


def _shuffled_labels(per_class: int, classes: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(classes), per_class))


@pytest.mark.parametrize("sort", [False, True])
def test_sampler_draws_only_other_class_indices(sort):
    labels = _shuffled_labels(12, 5)
    labels = np.sort(labels) if sort else labels
    sampler = ClassBlockContrastSampler(labels, k=40, rng=np.random.default_rng(0))
    assert (sampler.order is None) == sort
    for index in range(0, 60, 7):
        row = sampler.draw(index)
        assert row.dtype == np.int64 and row.shape == (41,) and row[0] == index
        assert (labels[row[1:]] != labels[index]).all()
    batch = sampler.draw_batch([3, 9, 59])
    assert batch.shape == (3, 41) and batch[:, 0].tolist() == [3, 9, 59]
    assert all((labels[batch[i, 1:]] != labels[batch[i, 0]]).all() for i in range(3))


@pytest.mark.parametrize("method", ["draw", "draw_batch"])
def test_sampler_is_uniform_over_other_class_samples(method):
    labels = _shuffled_labels(10, 10, seed=2)  # N = 100, 90 other-class samples per class
    sampler = ClassBlockContrastSampler(labels, k=30, rng=np.random.default_rng(1))
    index = 17
    pool = np.flatnonzero(labels != labels[index])
    draws = (
        np.concatenate([sampler.draw(index)[1:] for _ in range(3000)])
        if method == "draw"
        else sampler.draw_batch(np.full(3000, index))[:, 1:].ravel()
    )
    counts = np.bincount(draws, minlength=100)
    assert counts[labels == labels[index]].sum() == 0
    expected = 3000 * 30 / len(pool)  # 1,000 each
    chi2 = float((((counts[pool] - expected) ** 2) / expected).sum())
    assert chi2 < 160, chi2  # 89 degrees of freedom: mean 89, sd 13


def test_sampler_without_replacement():
    labels = _shuffled_labels(30, 5)
    sampler = ClassBlockContrastSampler(labels, k=100, replace=False, rng=np.random.default_rng(0))
    row = sampler.draw(0)
    assert len(np.unique(row[1:])) == 100 and (labels[row[1:]] != labels[0]).all()
    small = ClassBlockContrastSampler(np.array([0] * 5 + [1] * 3), k=50, replace=False, rng=np.random.default_rng(0))
    assert set(small.draw(1)[1:].tolist()) == {5, 6, 7}  # K > pool: with replacement, as ContrastSampler


def test_sampler_stream_follows_torch_seed():
    labels = _shuffled_labels(10, 4)

    def draws(seed):
        torch.manual_seed(seed)
        sampler = ClassBlockContrastSampler(labels, 8)
        return [sampler.draw(i) for i in range(4)]

    assert all(np.array_equal(a, b) for a, b in zip(draws(3), draws(3)))
    assert not all(np.array_equal(a, b) for a, b in zip(draws(3), draws(4)))


IMAGENET_N, IMAGENET_C, CRD_K = 1_281_167, 1000, 16384


def test_sampler_memory_is_linear_at_imagenet_size():
    labels = np.random.default_rng(0).integers(0, IMAGENET_C, IMAGENET_N)  # labels only, arbitrary order
    sampler = ClassBlockContrastSampler(labels, k=CRD_K, rng=np.random.default_rng(0))
    assert sampler.nbytes < 16 * 2**20
    assert sampler.nbytes == IMAGENET_N * (2 + 4) + 2 * 8 * IMAGENET_C  # uint16 labels, int32 order, 2 x int64[C]
    arrays = [value for value in vars(sampler).values() if isinstance(value, np.ndarray)]
    assert max(array.size for array in arrays) == IMAGENET_N  # nothing N x K or C x N
    assert sum(array.nbytes for array in arrays) == sampler.nbytes
    batch = sampler.draw_batch(np.arange(4))
    assert batch.shape == (4, CRD_K + 1)
    assert (labels[batch[:, 1:]] != labels[:4, None]).all()
    sorted_sampler = ClassBlockContrastSampler(np.sort(labels), k=CRD_K)
    assert sorted_sampler.order is None and sorted_sampler.nbytes == IMAGENET_N * 2 + 2 * 8 * IMAGENET_C
    # CRD's two banks at this N, for the docstring's figure: 2 x N x 128 float32.
    assert 2 * IMAGENET_N * 128 * 4 == 1_311_915_008
