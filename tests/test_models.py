"""The CIFAR model zoo: registry, shapes, reference fidelity, checkpoints and feature taps.

The expected numbers (parameter counts, state-dict fingerprints, key shapes, tap shapes,
golden forward values) are in tests/model_reference.py: computed from RepDistiller's CIFAR
model definitions, not from this package, so a drift in an architecture shows up here.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
from typing import Callable, Iterator

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
from tests.model_reference import (
    EXPECTED_TAP_SHAPES,
    KEY_SPOT_CHECKS,
    PUBLISHED_MILLIONS,
    REFERENCE_ARCHITECTURES,
    REFERENCE_GOLDEN,
)


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
