"""The method registry: every method builds from a config, runs, and stays finite under autocast."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

import methods
from methods import METHODS, DistillContext, StepInputs, UnknownMethodError, build_method

EXPECTED = {"ce", "kd", "fitnet", "crd", "crd_kd", "dkd", "ckd"}
B, C = 8, 10


@pytest.fixture
def context():
    return DistillContext(
        num_classes=C,
        num_data=64,
        student_shapes={"hint": (B, 8, 16, 16), "embedding": (B, 32)},
        teacher_shapes={"hint": (B, 16, 8, 8), "embedding": (B, 64)},
    )


def make_step(dtype=torch.float32, requires_grad=True) -> StepInputs:
    gen = torch.Generator().manual_seed(0)
    kw = dict(generator=gen, dtype=dtype)
    return StepInputs(
        logits_student=torch.randn(B, C, **kw).requires_grad_(requires_grad),
        logits_teacher=torch.randn(B, C, **kw),
        target=torch.randint(C, (B,), generator=gen),
        epoch=3,
        features_student={
            "hint": torch.randn(B, 8, 16, 16, **kw).requires_grad_(requires_grad),
            "embedding": torch.randn(B, 32, **kw).requires_grad_(requires_grad),
        },
        features_teacher={"hint": torch.randn(B, 16, 8, 8, **kw), "embedding": torch.randn(B, 64, **kw)},
        index=torch.randperm(64, generator=gen)[:B],
    )


def small(name: str) -> dict:
    return {"type": name, **({"nce_k": 16} if name.startswith("crd") else {})}


def test_registry_lists_every_method():
    assert EXPECTED <= set(METHODS.module_dict)
    assert set(methods.method_names()) == set(METHODS.module_dict)


def test_documented_listing_command():
    out = subprocess.run(
        [sys.executable, "-c", "import methods; print(sorted(methods.METHODS.module_dict))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in EXPECTED:
        assert f"'{name}'" in out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builds_from_config_and_returns_weighted_terms(name, context):
    cfg = Config({"method": small(name)})
    method = build_method(cfg.method, context)
    assert isinstance(method, methods.Distiller)
    losses = method(make_step())
    assert losses and all(key.startswith("loss_") for key in losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_weights_scale_their_terms(name, context):
    """Each returned term is already weighted: doubling a weight doubles that term."""
    torch.manual_seed(0)
    base = build_method(small(name), context)
    torch.manual_seed(0)
    doubled = build_method({**small(name), "ce_weight": 2 * base.ce_weight}, context)
    a, b = base(make_step()), doubled(make_step())
    assert b["loss_ce"].item() == pytest.approx(2 * a["loss_ce"].item(), rel=1e-6)


def test_unknown_method_lists_registered_ones():
    with pytest.raises(UnknownMethodError) as err:
        build_method({"type": "kdd"})
    message = str(err.value)
    assert "kdd" in message and all(name in message for name in EXPECTED)
    with pytest.raises(KeyError, match="registered methods"):
        METHODS.build({"type": "nope"})


def test_methods_that_need_shapes_say_so():
    with pytest.raises(ValueError, match="DistillContext"):
        build_method("fitnet")
    with pytest.raises(ValueError, match="training-set size"):
        build_method(
            small("crd"),
            DistillContext(num_classes=C, student_shapes={"embedding": (B, 4)}, teacher_shapes={"embedding": (B, 4)}),
        )


def test_dkd_warmup_ramps_from_epoch_one(context):
    dkd = build_method("dkd", context)
    step = make_step(requires_grad=False)
    step.epoch = 1
    first = dkd(step)["loss_dkd"].item()
    step.epoch = 20
    full = dkd(step)["loss_dkd"].item()
    step.epoch = 200
    assert first == pytest.approx(full / 20, rel=1e-6)
    assert dkd(step)["loss_dkd"].item() == pytest.approx(full, rel=1e-6)


def test_crd_declares_its_data_needs(context):
    crd = build_method(small("crd"), context)
    assert crd.contrast_k == 16 and crd.needs_index and crd.feature_taps == ("embedding",)
    assert build_method("kd").contrast_k is None
    assert build_method("ce").needs_teacher is False


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_finite_under_bfloat16_autocast(name, context):
    method = build_method(small(name), context)
    step = make_step()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = method(step)
    total = sum(v.float() for v in losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    assert torch.isfinite(step.logits_student.grad).all()
    for param in method.parameters():
        if param.grad is not None:
            assert torch.isfinite(param.grad).all()
