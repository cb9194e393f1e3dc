"""The CIFAR model zoo: registry, shapes, reference fidelity, checkpoints and feature taps.

The expected numbers below (parameter counts, state-dict fingerprints, key shapes, tap
shapes) were computed from RepDistiller's CIFAR model definitions, not from this package,
so a drift in an architecture shows up here. Fingerprint = sha256 of the ordered
``"key:shape"`` lines of ``state_dict()``, first 16 hex digits.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
from typing import Callable, Iterator, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.models import (
    MODEL_NAMES,
    FeatureRecorder,
    FeatureTap,
    build_model,
    feature_taps,
)
from benchmark.models.shufflenetv1 import ChannelShuffle

# name -> (state_dict fingerprint, parameter count, number of state_dict entries), 100 classes.
REFERENCE_ARCHITECTURES: dict[str, tuple[str, int, int]] = {
    "MobileNetV2": ("67dd5adb2196190e", 812836, 320),
    "ResNet50": ("01c941c55d8830fa", 23705252, 320),
    "ShuffleV1": ("542ef1e4af09fe27", 949258, 296),
    "ShuffleV2": ("db138f467cd82af3", 1355528, 338),
    "resnet110": ("932a055377884f91", 1736564, 668),
    "resnet14": ("92530df46a51a173", 181108, 92),
    "resnet20": ("48702a589dcc22ab", 278324, 128),
    "resnet32": ("e488f60b23a4db1c", 472756, 200),
    "resnet32x4": ("670cd82105052059", 7433860, 206),
    "resnet44": ("fcf7a5a278e22506", 667188, 272),
    "resnet56": ("1d3465ca54c565c3", 861620, 344),
    "resnet8": ("ac039310c98e68d8", 83892, 56),
    "resnet8x4": ("4b191cfaf50907ea", 1233540, 62),
    "vgg11": ("7edcbfd7d4b24633", 9277284, 58),
    "vgg13": ("adbafd0e22ce9038", 9462180, 72),
    "vgg16": ("4b0f395fe5fbd954", 14774436, 93),
    "vgg19": ("0820bef0b1c3cee0", 20086692, 114),
    "vgg8": ("792c36c85a183c23", 3965028, 37),
    "wrn_16_1": ("cc273e84a60cb768", 180916, 82),
    "wrn_16_2": ("28fc720be1913fd2", 703284, 83),
    "wrn_40_1": ("f8967803e64be646", 569780, 226),
    "wrn_40_2": ("029bbe2cbcd6d721", 2255156, 227),
}

# Sizes quoted in the KD literature (millions, 100 classes); a cross-check of the table above.
PUBLISHED_MILLIONS = {
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "wrn_40_2": 2.26,
    "resnet56": 0.86,
    "vgg13": 9.46,
    "MobileNetV2": 0.81,
    "ShuffleV1": 0.95,
    "ShuffleV2": 1.36,
    "ResNet50": 23.71,
}

# name -> (hint shape per sample (C, H, W), embedding dim) for a 32x32 input.
EXPECTED_TAP_SHAPES: dict[str, tuple[tuple[int, int, int], int]] = {
    **{
        name: ((32, 16, 16), 64)
        for name in ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110")
    },
    "resnet8x4": ((128, 16, 16), 256),
    "resnet32x4": ((128, 16, 16), 256),
    "wrn_16_1": ((32, 16, 16), 64),
    "wrn_40_1": ((32, 16, 16), 64),
    "wrn_16_2": ((64, 16, 16), 128),
    "wrn_40_2": ((64, 16, 16), 128),
    **{name: ((256, 8, 8), 512) for name in ("vgg8", "vgg11", "vgg13", "vgg16", "vgg19")},
    "MobileNetV2": ((16, 8, 8), 1280),
    "ShuffleV1": ((480, 8, 8), 960),
    "ShuffleV2": ((232, 8, 8), 1024),
    "ResNet50": ((512, 16, 16), 2048),
}


class Golden(NamedTuple):
    """What RepDistiller's model definitions compute on :func:`deterministic_weights_` for
    :func:`deterministic_input` (eval mode): the first logits, their sum and largest
    magnitude, and the mean / mean-absolute value of ``feats[2]`` (hint) and ``feats[-1]``
    (embedding) from ``forward(x, is_feat=True, preact=False)``."""

    first_logits: tuple[float, float, float, float]
    logit_sum: float
    logit_scale: float
    hint_mean: float
    hint_abs_mean: float
    embedding_mean: float
    embedding_abs_mean: float


# Pins every family's forward order (ReLU placement, shortcut source, concat/shuffle order,
# pooling) and the meaning of its taps, not only the shapes. 6 significant digits.
REFERENCE_GOLDEN: dict[str, Golden] = {
    "MobileNetV2": Golden(
        (0.0532808, -0.0063272, -0.190145, 0.0306664),
        1.75656,
        0.381378,
        -0.0302986,
        0.178434,
        0.0818712,
        0.0818712,
    ),
    "ResNet50": Golden(
        (0.634223, -0.823421, -1.03699, 0.327956),
        -6.09392,
        1.90907,
        0.423229,
        0.423229,
        0.543172,
        0.543172,
    ),
    "ShuffleV1": Golden(
        (-0.242052, 0.751014, 0.706727, -0.256673),
        -7.57452,
        2.47104,
        0.6007,
        0.6007,
        0.478201,
        0.478201,
    ),
    "ShuffleV2": Golden(
        (-0.0231514, 0.0343722, -0.134392, -0.0391366),
        0.366248,
        0.368475,
        0.0582291,
        0.0582291,
        0.0516,
        0.0516,
    ),
    "resnet110": Golden(
        (222.539, 223.219, -54.024, -460.81),
        2465,
        983.346,
        28.6948,
        28.6948,
        277.067,
        277.067,
    ),
    "resnet14": Golden(
        (0.292725, -0.0137744, -1.23665, 0.256412),
        1.73872,
        1.50692,
        0.334553,
        0.334553,
        0.31032,
        0.31032,
    ),
    "resnet20": Golden(
        (0.417765, -0.334309, -0.402244, 1.34266),
        -4.41484,
        1.78199,
        0.3568,
        0.3568,
        0.423174,
        0.423174,
    ),
    "resnet32": Golden(
        (2.99136, 0.975559, -3.29937, 2.1621),
        2.54961,
        5.79806,
        0.81908,
        0.81908,
        1.78873,
        1.78873,
    ),
    "resnet32x4": Golden(
        (1.12215, 0.457747, 3.47424, 2.66413),
        -18.8004,
        7.69543,
        1.11204,
        1.11204,
        1.86374,
        1.86374,
    ),
    "resnet44": Golden(
        (4.65332, 1.26062, 3.37992, 3.05869),
        70.2412,
        20.1905,
        2.26093,
        2.26093,
        4.62151,
        4.62151,
    ),
    "resnet56": Golden(
        (-7.57182, -8.97989, 0.151539, 0.528508),
        -24.6351,
        21.5072,
        1.74144,
        1.74144,
        5.1971,
        5.1971,
    ),
    "resnet8": Golden(
        (-0.108136, 0.149657, 0.350109, 0.0983327),
        -1.26214,
        0.674522,
        0.192984,
        0.192984,
        0.165632,
        0.165632,
    ),
    "resnet8x4": Golden(
        (-0.138156, -0.269061, 0.462904, -0.335742),
        -2.05436,
        0.616474,
        0.156989,
        0.156989,
        0.168871,
        0.168871,
    ),
    "vgg11": Golden(
        (-0.0557281, 0.0669032, -0.0652366, -0.0342838),
        0.387932,
        0.290837,
        0.151502,
        0.151502,
        0.0574533,
        0.0574533,
    ),
    "vgg13": Golden(
        (0.0245129, 0.0958593, -0.00186229, -0.139163),
        -0.670468,
        0.258093,
        0.100877,
        0.100877,
        0.0507676,
        0.0507676,
    ),
    "vgg16": Golden(
        (0.223718, -0.0364748, 0.012902, 0.0589286),
        -1.3733,
        0.280255,
        0.0674488,
        0.0674488,
        0.0497075,
        0.0497075,
    ),
    "vgg19": Golden(
        (-0.0621212, -0.143963, 0.0213803, -0.101605),
        -1.26864,
        0.205869,
        0.0576035,
        0.0576035,
        0.0492478,
        0.0492478,
    ),
    "vgg8": Golden(
        (-0.29233, 0.110659, 0.0123981, 0.233261),
        0.815835,
        0.49978,
        0.213656,
        0.213656,
        0.111827,
        0.111827,
    ),
    "wrn_16_1": Golden(
        (-0.0480377, 0.257383, -0.201806, -0.00329871),
        2.34652,
        1.21385,
        -0.053727,
        0.539081,
        0.255724,
        0.255724,
    ),
    "wrn_16_2": Golden(
        (0.248252, 0.0215926, -0.158828, 0.673957),
        -3.41174,
        1.06727,
        0.0644886,
        0.396316,
        0.212401,
        0.212401,
    ),
    "wrn_40_1": Golden(
        (-1.51841, 1.11247, -1.64271, 0.724223),
        -4.05144,
        3.41112,
        0.111369,
        1.19027,
        0.916478,
        0.916478,
    ),
    "wrn_40_2": Golden(
        (0.22133, -0.0956606, 2.29813, -1.87553),
        -5.76126,
        4.50731,
        -0.0314554,
        1.43469,
        1.03555,
        1.03555,
    ),
}

# Spot checks of reference key names: name -> {key: shape, or None for "must be absent"}.
KEY_SPOT_CHECKS: dict[str, dict[str, tuple[int, ...] | None]] = {
    "resnet8x4": {
        "conv1.weight": (32, 3, 3, 3),
        "bn1.running_var": (32,),
        "layer1.0.conv1.weight": (64, 32, 3, 3),
        "layer1.0.downsample.0.weight": (64, 32, 1, 1),
        "layer1.0.downsample.1.num_batches_tracked": (),
        "layer3.0.bn2.weight": (256,),
        "fc.weight": (100, 256),
        "fc.bias": (100,),
    },
    "resnet56": {
        "layer1.8.conv2.weight": (16, 16, 3, 3),
        "layer2.0.downsample.0.weight": (32, 16, 1, 1),
        "layer1.0.downsample.0.weight": None,
        "layer2.1.downsample.0.weight": None,
    },
    "ResNet50": {
        "layer1.0.conv3.weight": (256, 64, 1, 1),
        "layer1.0.shortcut.0.weight": (256, 64, 1, 1),
        "layer1.0.shortcut.1.running_mean": (256,),
        "layer1.1.shortcut.0.weight": None,
        "layer4.2.bn3.running_mean": (2048,),
        "linear.weight": (100, 2048),
    },
    "wrn_40_2": {
        "conv1.weight": (16, 3, 3, 3),
        "block1.layer.0.bn1.weight": (16,),
        "block1.layer.0.convShortcut.weight": (32, 16, 1, 1),
        "block1.layer.1.convShortcut.weight": None,
        "block3.layer.5.conv2.weight": (128, 128, 3, 3),
        "bn1.weight": (128,),
        "fc.weight": (100, 128),
    },
    "wrn_16_1": {
        "block1.layer.0.convShortcut.weight": None,  # 16 -> 16 channels: identity shortcut
        "block2.layer.0.convShortcut.weight": (32, 16, 1, 1),
    },
    "vgg13": {
        "block0.0.weight": (64, 3, 3, 3),
        "block0.0.bias": (64,),
        "block0.1.running_mean": (64,),
        "block0.3.weight": (64, 64, 3, 3),
        "block0.4.weight": (64,),
        "block4.4.num_batches_tracked": (),
        "classifier.weight": (100, 512),
    },
    "vgg8": {
        "block0.0.weight": (64, 3, 3, 3),
        "block0.1.weight": (64,),
        "block0.3.weight": None,
        "block4.0.weight": (512, 512, 3, 3),
    },
    "MobileNetV2": {
        "conv1.0.weight": (16, 3, 3, 3),
        "conv1.1.weight": (16,),
        "blocks.0.0.conv.0.weight": (16, 16, 1, 1),
        "blocks.0.0.conv.3.weight": (16, 1, 3, 3),
        "blocks.0.0.conv.6.weight": (8, 16, 1, 1),
        "blocks.0.0.conv.7.running_var": (8,),
        "blocks.6.0.conv.6.weight": (160, 480, 1, 1),
        "conv2.0.weight": (1280, 160, 1, 1),
        "classifier.0.weight": (100, 1280),
    },
    "ShuffleV1": {
        "conv1.weight": (24, 3, 1, 1),
        "layer1.0.conv1.weight": (54, 24, 1, 1),
        "layer1.0.conv2.weight": (54, 1, 3, 3),
        "layer1.0.conv3.weight": (216, 18, 1, 1),
        "layer1.1.conv1.weight": (60, 80, 1, 1),
        "layer3.3.bn3.weight": (960,),
        "linear.weight": (100, 960),
    },
    "ShuffleV2": {
        "layer1.0.conv1.weight": (24, 1, 3, 3),
        "layer1.0.conv2.weight": (58, 24, 1, 1),
        "layer1.0.conv5.weight": (58, 58, 1, 1),
        "layer1.1.conv1.weight": (58, 58, 1, 1),
        "layer2.7.bn3.running_mean": (116,),
        "layer3.3.conv3.weight": (232, 232, 1, 1),
        "conv2.weight": (1024, 464, 1, 1),
        "linear.weight": (100, 1024),
    },
}


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """Batch-2 tensors gain nothing from intra-op threads, and on shared cores the thread
    hand-offs cost several times the work; restored for the other test modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The CIFAR zoo reproduced from RepDistiller; other registered models (e.g. the digits suite's
# small CNNs) get the generic tests only.
REFERENCE_NAMES = sorted(REFERENCE_ARCHITECTURES)


def state_dict_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    lines = "\n".join(f"{key}:{tuple(value.shape)}" for key, value in state_dict.items())
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def perturb_(model: nn.Module, seed: int) -> nn.Module:
    """Give every parameter and BN statistic non-trivial values (a fresh init has BN at
    identity and zero biases, which would hide mistakes); scaled to keep deep nets finite."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.dim() > 1:
                param.copy_(noise / param[0].numel() ** 0.5)
            else:
                param.copy_(noise * 0.2 + (1.0 if name.endswith("weight") else 0.0))
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
    return model


def deterministic_weights_(model: nn.Module) -> nn.Module:
    """Fill the state dict from a fixed hash-like sequence (independent of torch's RNG):
    uniform in [-1, 1), conv/linear weights scaled to variance 1/fan_in, BN statistics and
    affine parameters near their usual ranges."""
    with torch.no_grad():
        for index, (key, tensor) in enumerate(model.state_dict().items()):
            if key.endswith("num_batches_tracked"):
                continue
            k = torch.arange(tensor.numel(), dtype=torch.float64)
            hashed = torch.frac(torch.sin(k * 12.9898 + index * 78.233) * 43758.5453).abs()
            wave = (hashed * 2 - 1).float().view(tensor.shape)
            if key.endswith("running_mean"):
                tensor.copy_(0.1 * wave)
            elif key.endswith("running_var"):
                tensor.copy_(1.0 + 0.5 * wave)
            elif tensor.dim() > 1:
                tensor.copy_(wave * (3.0 / tensor[0].numel()) ** 0.5)
            elif key.endswith("weight"):
                tensor.copy_(1.0 + 0.2 * wave)
            else:
                tensor.copy_(0.1 * wave)
    return model


def deterministic_input() -> torch.Tensor:
    position = torch.arange(3 * 32 * 32, dtype=torch.float32)
    return (torch.sin(position * 0.61) * torch.cos(position * 0.023)).view(1, 3, 32, 32)


@functools.lru_cache(maxsize=None)
def shared_model(name: str) -> nn.Module:
    """One perturbed eval-mode instance per model, for the tests that only read it."""
    torch.manual_seed(0)
    return perturb_(build_model(name), seed=1).eval()


def sample_batch(batch_size: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def final_linear(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(feature_taps(name)["embedding"].module)


# --- registry ------------------------------------------------------------------------------


def test_model_names_are_sorted_and_hold_the_reference_zoo() -> None:
    assert MODEL_NAMES == sorted(MODEL_NAMES)
    assert len(set(MODEL_NAMES)) == len(MODEL_NAMES)
    assert set(REFERENCE_ARCHITECTURES) <= set(MODEL_NAMES)
    assert set(REFERENCE_GOLDEN) == set(EXPECTED_TAP_SHAPES) == set(REFERENCE_ARCHITECTURES)


@pytest.mark.parametrize("lookup", [build_model, feature_taps])
def test_unknown_model_name_lists_the_known_names(lookup: Callable[[str], object]) -> None:
    with pytest.raises(KeyError) as as_key_error:
        lookup("resnet9000")
    with pytest.raises(ValueError):
        lookup("resnet9000")
    message = str(as_key_error.value)
    assert "\n" not in message and "resnet9000" in message
    assert all(name in message for name in MODEL_NAMES)


def test_num_classes_sets_the_head_width() -> None:
    model = build_model("resnet8", num_classes=10)
    assert model.fc.out_features == 10
    with torch.no_grad():
        assert model(sample_batch()).shape == (2, 10)


def test_seeded_builds_are_identical() -> None:
    torch.manual_seed(3)
    first = build_model("wrn_16_1").state_dict()
    torch.manual_seed(3)
    second = build_model("wrn_16_1").state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)  # determinism: exact


# --- per model: architecture and checkpoints ---------------------------------------------


@pytest.mark.parametrize("name", REFERENCE_NAMES)
def test_architecture_matches_reference(name: str) -> None:
    fingerprint, param_count, num_entries = REFERENCE_ARCHITECTURES[name]
    model = shared_model(name)
    state_dict = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == param_count
    assert len(state_dict) == num_entries
    assert state_dict_fingerprint(state_dict) == fingerprint
    with torch.no_grad():
        logits = model(sample_batch())
    assert logits.shape == (2, 100)
    assert torch.isfinite(logits).all()


def _close(actual: float, expected: float, scale: float) -> bool:
    """Golden values come from other code on another CPU, in float32 through up to 110 layers,
    stored to 6 significant digits (5e-7): 1e-4 of the value's scale covers their rounding
    (observed here: ≤ 2% of it) while any change in forward order moves them by ≥ 1e-2."""
    return abs(actual - expected) <= 1e-4 * (abs(scale) + abs(expected))


@pytest.mark.parametrize("name", REFERENCE_NAMES)
def test_logits_and_taps_match_reference_golden_values(name: str) -> None:
    golden = REFERENCE_GOLDEN[name]
    model = deterministic_weights_(copy.deepcopy(shared_model(name))).eval()
    with torch.no_grad(), FeatureRecorder(model, feature_taps(name)) as recorder:
        logits = model(deterministic_input())[0]
    hint, embedding = recorder.features["hint"], recorder.features["embedding"]
    checks = {
        **{f"logit[{i}]": (logits[i], golden.first_logits[i], golden.logit_scale) for i in range(4)},
        "logit sum": (logits.sum(), golden.logit_sum, golden.logit_scale),
        "hint mean": (hint.mean(), golden.hint_mean, golden.hint_abs_mean),
        "hint |mean|": (hint.abs().mean(), golden.hint_abs_mean, golden.hint_abs_mean),
        "embedding mean": (embedding.mean(), golden.embedding_mean, golden.embedding_abs_mean),
        "embedding |mean|": (embedding.abs().mean(), golden.embedding_abs_mean, golden.embedding_abs_mean),
    }
    wrong = {
        what: (actual.item(), expected)
        for what, (actual, expected, scale) in checks.items()
        if not _close(actual.item(), expected, scale)
    }
    assert not wrong


@pytest.mark.parametrize("name", sorted(PUBLISHED_MILLIONS))
def test_param_counts_agree_with_published_sizes(name: str) -> None:
    assert round(REFERENCE_ARCHITECTURES[name][1] / 1e6, 2) == PUBLISHED_MILLIONS[name]


@pytest.mark.parametrize("name", sorted(KEY_SPOT_CHECKS))
def test_state_dict_key_spot_checks(name: str) -> None:
    state_dict = shared_model(name).state_dict()
    for key, shape in KEY_SPOT_CHECKS[name].items():
        if shape is None:
            assert key not in state_dict, key
        else:
            assert key in state_dict, key
            assert tuple(state_dict[key].shape) == shape, key


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_checkpoint_round_trip_is_exact(name: str) -> None:
    """The community teacher format: ``{'model': state_dict}``, loaded with strict=True."""
    source = shared_model(name)
    buffer = io.BytesIO()
    torch.save({"model": source.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    torch.manual_seed(12345)
    restored = build_model(name).eval()
    restored.load_state_dict(checkpoint["model"], strict=True)
    x = sample_batch()
    # Exact on purpose: the same module code, bit-identical weights (a saved copy), the same
    # input and thread count in one process, so the very same kernels run on both.
    with torch.no_grad():
        assert torch.equal(restored(x), source(x))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_no_module_output_is_modified_in_place(name: str) -> None:
    """Taps keep hooked tensors without copying, so nothing may overwrite them later."""
    model = shared_model(name)
    recorded: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def keep(module_name: str) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            recorded.append((module_name, output, output.clone()))

        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(sample_batch(batch_size=1))
    finally:
        for handle in handles:
            handle.remove()
    modified = [n for n, tensor, snapshot in recorded if not torch.equal(tensor, snapshot)]
    assert not modified


# --- feature taps --------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_hint_and_embedding_taps(name: str) -> None:
    model = shared_model(name)
    x = sample_batch()
    with torch.no_grad(), FeatureRecorder(model, feature_taps(name)) as recorder:
        logits = model(x)
        hint, embedding = recorder.features["hint"], recorder.features["embedding"]
        assert logits.shape == (2, 100)
        assert hint.dim() == 4 and hint.shape[0] == 2
        assert embedding.dim() == 2 and embedding.shape[0] == 2
        # The embedding is exactly what the final linear layer turns into the logits: the tap
        # holds that layer's own input tensor, so re-applying the layer runs the same op on the
        # same tensor, bit for bit (exact on purpose).
        assert torch.equal(final_linear(model, name)(embedding), logits)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    if name in EXPECTED_TAP_SHAPES:
        hint_shape, embedding_dim = EXPECTED_TAP_SHAPES[name]
        assert hint.shape == (2, *hint_shape)
        assert embedding.shape == (2, embedding_dim)


def test_every_model_has_hint_and_embedding_taps() -> None:
    for name in MODEL_NAMES:
        taps = feature_taps(name)
        assert {"hint", "embedding"} <= set(taps)
        modules = dict(shared_model(name).named_modules())
        assert all(tap.module in modules for tap in taps.values()), name


def test_feature_taps_returns_a_copy() -> None:
    feature_taps("resnet8").clear()
    assert "hint" in feature_taps("resnet8")


def test_relu_tap_is_out_of_place_and_gradients_flow() -> None:
    model = shared_model("vgg8")
    taps = {
        "raw": FeatureTap("block2", "output"),
        "activated": FeatureTap("block2", "output", relu=True),
    }
    x = sample_batch().requires_grad_(True)
    with FeatureRecorder(model, taps) as recorder:
        model(x)
    raw, activated = recorder.features["raw"], recorder.features["activated"]
    assert (raw < 0).any(), "the raw block output must keep its negatives"
    assert torch.equal(activated, F.relu(raw))  # exact: max(x, 0) has no rounding
    activated.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_input_tap_and_per_forward_reset() -> None:
    model = shared_model("resnet8")
    taps = {"stage3_in": FeatureTap("layer3", "input"), "stage2_out": FeatureTap("layer2", "output")}
    with torch.no_grad(), FeatureRecorder(model, taps) as recorder:
        model(sample_batch(seed=0))
        first = recorder.features
        assert torch.equal(first["stage3_in"], first["stage2_out"])  # one tensor seen by two hooks
        model(sample_batch(seed=1))
        assert recorder.features is not first
        assert not torch.equal(recorder.features["stage2_out"], first["stage2_out"])


def test_recorder_remove_stops_recording() -> None:
    model = shared_model("resnet8")
    recorder = FeatureRecorder(model, feature_taps("resnet8"))
    assert recorder.active
    recorder.remove()
    recorder.remove()  # idempotent
    assert not recorder.active
    with torch.no_grad():
        model(sample_batch())
    assert recorder.features == {}
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_unknown_tap_module_is_a_clear_error_and_registers_nothing() -> None:
    model = shared_model("resnet8")
    taps = {"hint": FeatureTap("layer2", "output"), "bad": FeatureTap("layer9.0", "output")}
    with pytest.raises(ValueError, match="layer9.0"):
        FeatureRecorder(model, taps)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_feature_tap_validates_and_is_frozen() -> None:
    with pytest.raises(ValueError):
        FeatureTap("layer2", "middle")  # type: ignore[arg-type]
    tap = FeatureTap("layer2", "output")
    assert tap.relu is False
    with pytest.raises(AttributeError):
        tap.module = "layer3"  # type: ignore[misc]


# --- independent re-statements of reference forwards ----------------------------------------


def test_channel_shuffle_order() -> None:
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert ChannelShuffle(groups=3)(x).flatten().tolist() == [0, 2, 4, 1, 3, 5]
    assert ChannelShuffle(groups=2)(x).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def _bn(x: torch.Tensor, sd: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    return F.batch_norm(
        x,
        sd[f"{prefix}.running_mean"],
        sd[f"{prefix}.running_var"],
        sd[f"{prefix}.weight"],
        sd[f"{prefix}.bias"],
        training=False,
        eps=1e-5,
    )


def _conv(x: torch.Tensor, weight: torch.Tensor, stride: int = 1) -> torch.Tensor:
    return F.conv2d(x, weight, stride=stride, padding=weight.shape[-1] // 2)


def resnet8_functional(x: torch.Tensor, sd: dict[str, torch.Tensor]) -> torch.Tensor:
    """Reference resnet8 (eval): relu(bn(conv)) stem; per stage one block
    relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut); 8x8 mean; fc."""
    x = F.relu(_bn(_conv(x, sd["conv1.weight"]), sd, "bn1"))
    for stage, stride in (("layer1", 1), ("layer2", 2), ("layer3", 2)):
        block = f"{stage}.0"
        out = F.relu(_bn(_conv(x, sd[f"{block}.conv1.weight"], stride), sd, f"{block}.bn1"))
        out = _bn(_conv(out, sd[f"{block}.conv2.weight"]), sd, f"{block}.bn2")
        if f"{block}.downsample.0.weight" in sd:
            x = _bn(_conv(x, sd[f"{block}.downsample.0.weight"], stride), sd, f"{block}.downsample.1")
        x = F.relu(out + x)
    return F.linear(x.mean(dim=(2, 3)), sd["fc.weight"], sd["fc.bias"])


def wrn_16_1_functional(x: torch.Tensor, sd: dict[str, torch.Tensor]) -> torch.Tensor:
    """Reference WRN-16-1 (eval): pre-activation blocks whose 1x1 shortcut, where present,
    reads relu(bn1(x)); bn-relu after the last stage; 8x8 mean; fc."""
    x = _conv(x, sd["conv1.weight"])
    for stage, stride in (("block1", 1), ("block2", 2), ("block3", 2)):
        for index in range(2):
            block = f"{stage}.layer.{index}"
            block_stride = stride if index == 0 else 1
            activated = F.relu(_bn(x, sd, f"{block}.bn1"))
            out = F.relu(_bn(_conv(activated, sd[f"{block}.conv1.weight"], block_stride), sd, f"{block}.bn2"))
            out = _conv(out, sd[f"{block}.conv2.weight"])
            shortcut_key = f"{block}.convShortcut.weight"
            x = (_conv(activated, sd[shortcut_key], block_stride) if shortcut_key in sd else x) + out
    x = F.relu(_bn(x, sd, "bn1"))
    return F.linear(x.mean(dim=(2, 3)), sd["fc.weight"], sd["fc.bias"])


def vgg8_functional(x: torch.Tensor, sd: dict[str, torch.Tensor]) -> torch.Tensor:
    """Reference vgg8_bn (eval): per block relu(bn(conv + bias)); max-pool after blocks 0-2
    (32x32 input); global mean; classifier."""
    for index in range(5):
        conv = F.conv2d(x, sd[f"block{index}.0.weight"], sd[f"block{index}.0.bias"], padding=1)
        x = F.relu(_bn(conv, sd, f"block{index}.1"))
        if index < 3:
            x = F.max_pool2d(x, 2)
    return F.linear(x.mean(dim=(2, 3)), sd["classifier.weight"], sd["classifier.bias"])


@pytest.mark.parametrize(
    "name, functional",
    [("resnet8", resnet8_functional), ("wrn_16_1", wrn_16_1_functional), ("vgg8", vgg8_functional)],
)
def test_forward_matches_functional_restatement(
    name: str, functional: Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]
) -> None:
    model = shared_model(name)
    x = sample_batch(batch_size=4, seed=5)
    with torch.no_grad():
        expected = functional(x, model.state_dict())
        actual = model(x)
    max_difference = (actual - expected).abs().max().item()
    # Two computations in float32: the restatement pools with mean() where the modules use
    # avg_pool2d / AdaptiveAvgPool2d (a 64-term reduction in another order) and feeds a
    # 64-512-input fc: ≲ (64 + 512)·eps32 ≈ 7e-5 relative, logits ~1: rtol 1e-4, atol 1e-5
    # (observed ≤ 5e-7). A wrong ReLU placement or shortcut changes the logits by ≥ 1e-2.
    assert torch.allclose(actual, expected, rtol=1e-4, atol=1e-5), max_difference
