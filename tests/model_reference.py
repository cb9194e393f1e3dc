"""Reference numbers of the CIFAR model zoo, checked by tests/test_models.py.

The expected numbers below (parameter counts, state-dict fingerprints, key shapes, tap
shapes, golden forward values) were computed from RepDistiller's CIFAR model definitions,
not from this package, so a drift in an architecture shows up in tests/test_models.py.
Fingerprint = sha256 of the ordered ``"key:shape"`` lines of ``state_dict()``, first 16 hex
digits. The golden forward values are those of tests/test_models.py's
``deterministic_weights_`` and ``deterministic_input``.
"""

from __future__ import annotations

from typing import NamedTuple

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
