"""The ImageNet suite: models (torchvision / mdistiller compatibility, taps), data (ImageFolder,
transforms, CRD sampling in O(N) memory), recipes, published numbers, and one run end to end.

Expected values are written here independently of the code under test: layer shapes and
parameter counts from the reference definitions (torchvision, mdistiller's
``mdistiller/models/imagenet/mobilenetv1.py``), recipe values from mdistiller's
``configs/imagenet/{r34_r18,r50_mv1}/*.yaml`` and the CKD configs as the issue quotes them.
"""

from __future__ import annotations

import dataclasses
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

import methods
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
from benchmark.report.load import load_records
from benchmark.report.published import load_published
from benchmark.report.synthetic import make_record, write
from benchmark.report.tables import build_suite_tables, suite_pair_order
from benchmark.store.checkpoints import save_community_checkpoint
from benchmark.store.records import read_record
from benchmark.suites import Pair, get_suite
from benchmark.train import CONFIG_DIR, STUDENT_EXPORT, RunSpec, build_config, execute, new_record
from methods.fitnet import ConvReg
from tests.datagen import smooth_image, write_tiny_imagefolder

SUITE = get_suite("imagenet")
R34_R18 = Pair("resnet34_in1k", "resnet18_in1k")
R50_MV1 = Pair("resnet50_in1k", "mobilenetv1_in1k")
N_CLASSES, PER_CLASS_TRAIN, PER_CLASS_VAL = 3, 4, 2


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Batch 1-4 CPU tensors gain little from two contending threads on the shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


# (hint C, H, W at 224x224 = the stride-8 stage, embedding dim)
TAPS_224 = {
    "resnet18_in1k": ((128, 28, 28), 512),
    "resnet34_in1k": ((128, 28, 28), 512),
    "resnet50_in1k": ((512, 28, 28), 2048),
    "mobilenetv1_in1k": ((256, 28, 28), 1024),
}


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


# --------------------------------------------------------------------------- recipes

# Written from mdistiller configs/imagenet/{r34_r18,r50_mv1}/{kd,dkd,crd}.yaml, its CFG defaults
# (DKD alpha 1; CRD weight 0.8, CE 1, d 128, K 16384, T 0.07, m 0.5) and the CKD values.
STEP = dict(epochs=100, momentum=0.9, weight_decay=1e-4, kind="step", milestones=(30, 60, 90), gamma=0.1)
EXPECTED_UNIFIED = {
    # method: (batch, lr, method config without 'type'; dkd beta per pair below)
    "ce": (512, 0.2, {}),
    "kd": (512, 0.2, {"temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5}),
    "dkd": (512, 0.2, {"alpha": 1.0, "temperature": 1.0, "warmup": 1, "ce_weight": 1.0}),
    "crd": (
        256,
        0.1,
        {"crd_weight": 0.8, "ce_weight": 1.0, "feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "nce_m": 0.5},
    ),
    "crd_kd": (
        256,
        0.1,
        {
            "crd_weight": 0.8,
            "ce_weight": 1.0,
            "kd_weight": 1.0,
            "temperature": 1.0,
            "feat_dim": 128,
            "nce_k": 16384,
            "nce_t": 0.07,
            "nce_m": 0.5,
        },
    ),
    "ckd": (512, 0.2, {"cl_weight": 10.0, "temperature": 1.0, "ce_weight": 1.0}),
    "fitnet": (512, 0.2, {"hint_weight": 100.0, "ce_weight": 1.0}),
}
EXPECTED_DKD_BETA = {R34_R18: 0.5, R50_MV1: 2.0}


def test_suite_is_registered_with_its_pairs():
    assert SUITE.pairs == (R34_R18, R50_MV1) and SUITE.num_classes == 1000 and SUITE.dataset_base == "imagenet"
    assert set(EXPECTED_UNIFIED) == set(methods.METHODS.module_dict)  # every method has its row


@pytest.mark.parametrize("recipe", ["unified", "paper"])
@pytest.mark.parametrize("pair", [R34_R18, R50_MV1], ids=lambda p: p.name)
@pytest.mark.parametrize("method", sorted(EXPECTED_UNIFIED))
def test_every_method_recipe_resolves(recipe, pair, method):
    resolved = SUITE.resolve(recipe, pair, method)
    batch, lr, expected = EXPECTED_UNIFIED[method]
    expected = {"type": method, **expected, **({"beta": EXPECTED_DKD_BETA[pair]} if method == "dkd" else {})}
    schedule = dataclasses.asdict(resolved.schedule)
    if recipe == "paper" and method == "ckd":
        assert schedule == dict(
            epochs=200, batch_size=512, lr=0.2, momentum=0.9, weight_decay=1e-4, kind="cosine", milestones=(), gamma=0.1
        )
        assert any("200 epochs" in note for note in resolved.notes)
    else:
        assert schedule == dict(STEP, batch_size=batch, lr=lr)
    assert resolved.method == expected
    assert resolved.name == recipe
    if method == "fitnet":
        assert any("not a reference recipe" in note for note in resolved.notes)
    # The method builds with these arguments and the pair's feature shapes at 224x224.
    shapes = {
        name: {"hint": (2, *TAPS_224[name][0]), "embedding": (2, TAPS_224[name][1])}
        for name in (pair.student, pair.teacher)
    }
    context = methods.DistillContext(
        num_classes=1000, num_data=20_000, student_shapes=shapes[pair.student], teacher_shapes=shapes[pair.teacher]
    )
    assert methods.build_method(resolved.method, context) is not None


# --------------------------------------------------------------------------- published numbers


def test_published_imagenet_numbers_map_to_zoo_names_and_give_a_delta(tmp_path):
    table = load_published()
    assert table[("imagenet", "resnet34_in1k", "resnet18_in1k", "kd")].top1 == pytest.approx(71.03)
    assert table[("imagenet", "resnet34_in1k", "resnet18_in1k", "dkd")].kind == "best"
    assert table[("imagenet", "resnet50_in1k", "mobilenetv1_in1k", "ce")].top1 == pytest.approx(68.87)
    assert table[("imagenet", "resnet34_in1k", "resnet18_in1k", "crd")].top1 == pytest.approx(71.17)
    assert table[("cifar100", "ResNet50", "MobileNetV2", "kd")].top1 == pytest.approx(67.35)  # CIFAR names untouched
    assert not [k for k in table if k[0] == "imagenet" and not k[1].endswith("_in1k")]

    for seed, last in enumerate((71.0, 71.4)):  # best epoch = last + 0.3: 71.3, 71.7 -> mean 71.5
        write(tmp_path, make_record("imagenet", "resnet34_in1k", "resnet18_in1k", "kd", seed, last, epochs=4))
    runs = load_records([tmp_path]).records
    best = next(
        t for t in build_suite_tables(runs, "imagenet", table, suite_pair_order("imagenet")) if t.statistic == "best"
    )
    cell = next(r for r in best.rows if r.method == "kd").cells[("resnet34_in1k", "resnet18_in1k")]
    assert cell.published.top1 == pytest.approx(71.03)
    assert cell.delta == pytest.approx(71.5 - 71.03)


# --------------------------------------------------------------------------- end to end


# The end-to-end runs: 2 train images a class (batch 3: 2 iterations an epoch) and 1 val image.
RUN_PER_CLASS_TRAIN, RUN_PER_CLASS_VAL, RUN_BATCH = 2, 1, 3
RUN_DATA = N_CLASSES * RUN_PER_CLASS_TRAIN


@pytest.fixture(scope="module")
def run_imagenet(tmp_path_factory) -> Path:
    return write_tiny_imagefolder(
        tmp_path_factory.mktemp("imagenet-runs"), N_CLASSES, RUN_PER_CLASS_TRAIN, RUN_PER_CLASS_VAL, (300, 260), seed=0
    )


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teachers") / "resnet18_in1k_vanilla" / "ckpt_epoch_240.pth"
    save_community_checkpoint(build_model("resnet18_in1k", SUITE.num_classes), path)
    return path


def tiny_spec(method: str, run_dir: Path, data_root: Path, teacher_checkpoint: Path, epochs: int = 1) -> RunSpec:
    """The real suite (1000-way heads; the tiny data's targets 0..2 are valid labels), its
    dataset config and preprocessor, resnet18_in1k as teacher and student, batch 3 (2 iterations an epoch)."""
    pair = Pair("resnet18_in1k", "resnet18_in1k")
    # The recipe of the suite's ResNet34→ResNet18 pair (DKD's beta is per pair), on a cheaper teacher.
    recipe = SUITE.resolve("unified", R34_R18, method).adjusted(epochs=epochs, batch_size=RUN_BATCH)
    if method in (
        "crd",
        "crd_kd",
    ):  # CRD needs K < N: 4 negatives of the 6 images (the sampler draws with replacement)
        recipe = dataclasses.replace(recipe, method={**recipe.method, "nce_k": 4})
    return RunSpec(
        suite=SUITE,
        pair=pair,
        method=method,
        recipe=recipe,
        seed=0,
        run_dir=run_dir,
        data_root=str(data_root),
        teacher_checkpoint=str(teacher_checkpoint),
        teacher_checkpoint_sha256="test",
        num_workers=0,
    )


@pytest.mark.parametrize("method", ["ce", "kd", "dkd", "crd", "crd_kd", "ckd", "fitnet"])
def test_one_epoch_through_the_mmengine_runner(method, run_imagenet, teacher_checkpoint, tmp_path):
    """Every method: 2 training iterations and one validation through MMEngine's Runner."""
    spec = tiny_spec(method, tmp_path / method, run_imagenet, teacher_checkpoint)
    num_data = RUN_DATA
    cfg = build_config(spec, num_data)
    assert cfg.train_dataloader.dataset.type == "ImageNetDistill" and cfg.train_dataloader.batch_size == RUN_BATCH
    assert cfg.train_dataloader.dataset.get("contrast_k") == (4 if method.startswith("crd") else None)
    record = execute(spec, num_data, new_record(spec), resume=False, say=lambda _l: None)
    assert record.status == "completed", record.failure
    assert [p.epoch for p in record.curve] == [1] and record.runtime["measured_iterations"] >= 1
    assert 0 <= record.last_top1 <= 100
    on_disk = read_record(tmp_path / method / "record.json")
    assert on_disk.status == "completed" and on_disk.suite == "imagenet"
    student = build_model("resnet18_in1k", SUITE.num_classes)
    student.load_state_dict(torch.load(tmp_path / method / STUDENT_EXPORT, weights_only=True)["model"], strict=True)


def test_an_interrupted_imagenet_run_resumes_to_the_uninterrupted_record(
    run_imagenet, teacher_checkpoint, tmp_path, monkeypatch
):
    from benchmark import faults

    num_data = RUN_DATA
    straight = tiny_spec("kd", tmp_path / "straight", run_imagenet, teacher_checkpoint, epochs=2)
    reference = execute(straight, num_data, new_record(straight), resume=False, say=lambda _l: None)
    spec = tiny_spec("kd", tmp_path / "broken", run_imagenet, teacher_checkpoint, epochs=2)

    def interrupt(point, **context):
        if point == "after_checkpoint" and context.get("epoch") == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(faults, "fire", interrupt)
    with pytest.raises(KeyboardInterrupt):
        execute(spec, num_data, new_record(spec), resume=False, say=lambda _l: None)
    monkeypatch.undo()
    resumed = execute(
        spec, num_data, read_record(tmp_path / "broken" / "record.json"), resume=True, say=lambda _l: None
    )
    # Same process, same operations on the same inputs (every epoch reseeds): exact.
    assert [(p.epoch, p.top1, p.top5, p.loss) for p in resumed.curve] == [
        (p.epoch, p.top1, p.top5, p.loss) for p in reference.curve
    ]
    a = torch.load(tmp_path / "straight" / STUDENT_EXPORT, weights_only=True)["model"]
    b = torch.load(tmp_path / "broken" / STUDENT_EXPORT, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- teachers from files (TeacherStage) --------------------------------------------------------


def _stage(tmp_path, **overrides):
    from benchmark.suites import get_suite
    from benchmark.sweep.options import SweepOptions
    from benchmark.sweep.teachers import TeacherStage

    args = SweepOptions(
        suite="imagenet",
        methods="kd",
        work_dir=str(tmp_path / "w"),
        device="cpu",
        data_root=str(tmp_path / "data"),
        num_workers=0,
    ).replace(**overrides)
    return TeacherStage(get_suite("imagenet"), "unified", args)


@pytest.mark.parametrize("layout", ["plain", "model", "state_dict"])
def test_torchvision_teacher_files_are_found_and_load_strictly(layout, tmp_path, monkeypatch):
    import torchvision

    from benchmark.models import build_model
    from benchmark.store.checkpoints import load_community_checkpoint

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    state = torchvision.models.resnet34(weights=None).state_dict()
    payload = {"plain": state, "model": {"model": state}, "state_dict": {"state_dict": state}}[layout]
    hub = tmp_path / "torch-home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(payload, hub / "resnet34-b627a593.pth")  # torchvision's own file name, in its cache
    stage = _stage(tmp_path)
    assert stage.community_path("resnet34_in1k") == hub / "resnet34-b627a593.pth"
    model = build_model("resnet34_in1k", 1000)
    load_community_checkpoint(model, stage.community_path("resnet34_in1k"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    # --teachers DIR/<name>.pth is preferred over the cache
    (tmp_path / "t").mkdir()
    torch.save(state, tmp_path / "t" / "resnet34_in1k.pth")
    assert (
        _stage(tmp_path, teachers=str(tmp_path / "t")).community_path("resnet34_in1k")
        == tmp_path / "t" / "resnet34_in1k.pth"
    )


def test_imagenet_teachers_are_never_trained_unless_asked(tmp_path, monkeypatch):
    from benchmark.errors import UsageError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(
        UsageError,
        match=r"2 teacher file\(s\) not found: .*resnet34_in1k\.pth or .*resnet34-b627a593\.pth.*--train-teachers",
    ):
        _stage(tmp_path).check_teacher_files(["resnet34_in1k", "resnet50_in1k"])
    _stage(tmp_path, train_teachers=True).check_teacher_files(["resnet34_in1k"])  # asked for: allowed
