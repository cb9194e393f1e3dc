"""CKD's ``paper`` recipe on CIFAR-100 is the official CKD recipe.

The expected values are written here again, independently of
``benchmark/suites/cifar100.py``'s table, from the official CKD code's
``configs/cifar100/ckd/<pair>.yaml`` (Zhu et al., 2024): every config there has
480 epochs, cosine to 0 stepped per epoch, SGD momentum 0.9, wd 5e-4, CE weight 1.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from benchmark.suites import Pair, get_suite
from methods.ckd import CKD

SUITE = get_suite("cifar100")

# pair: (batch, lr, CL weight, τ) as written in configs/cifar100/ckd/<pair>.yaml.
OFFICIAL = {
    "resnet56-resnet20": (64, 0.05, 10, 1),
    "resnet110-resnet32": (64, 0.05, 10, 1),
    "resnet32x4-resnet8x4": (64, 0.05, 100, 1),
    "wrn_40_2-wrn_16_2": (64, 0.05, 100, 1),
    "wrn_40_2-wrn_40_1": (32, 0.05, 50, 2),
    "vgg13-vgg8": (64, 0.05, 100, 1),
    "resnet32x4-ShuffleV1": (32, 0.01, 100, 1),
    "resnet32x4-ShuffleV2": (64, 0.01, 100, 1),
    "wrn_40_2-ShuffleV1": (32, 0.01, 100, 1),
    "vgg13-MobileNetV2": (32, 0.01, 50, 2),
    "ResNet50-MobileNetV2": (32, 0.01, 100, 1),
}
# No config there: the defaults (batch 64, lr 0.05 as both students are not MobileNet/ShuffleNet, CL 10, τ 1).
NO_CONFIG = {"resnet110-resnet20": (64, 0.05, 10, 1), "ResNet50-vgg8": (64, 0.05, 10, 1)}


def _resolve(name: str, recipe: str = "paper", method: str = "ckd"):
    return SUITE.resolve(recipe, SUITE.pair(name), method)


def test_every_suite_pair_is_covered():
    assert sorted(p.name for p in SUITE.pairs) == sorted({**OFFICIAL, **NO_CONFIG})


@pytest.mark.parametrize("name", sorted({**OFFICIAL, **NO_CONFIG}))
def test_paper_recipe_matches_the_official_configs(name):
    batch, lr, cl_weight, tau = {**OFFICIAL, **NO_CONFIG}[name]
    recipe = _resolve(name)
    s = recipe.schedule
    assert recipe.name == "paper"
    assert (s.epochs, s.kind, s.momentum, s.weight_decay, s.milestones) == (480, "cosine", 0.9, 5e-4, ())
    # Exact: the recipe stores the literals of its table, no arithmetic (no linear lr rule).
    assert (s.batch_size, s.lr) == (batch, lr)
    assert recipe.method == {"type": "ckd", "cl_weight": cl_weight, "temperature": tau, "ce_weight": 1}
    notes = " ".join(recipe.notes)
    assert "drop_last=False" in notes
    assert "best epoch" in notes and "tables/cifar100_best" in notes
    if name in OFFICIAL:
        assert "official CKD code configs/cifar100/ckd" in notes and "no config" not in notes
    else:
        assert "no config for this pair in the official CKD code" in notes and "defaults" in notes


def test_method_args_are_ckd_constructor_args():
    params = inspect.signature(CKD.__init__).parameters
    for name in OFFICIAL:
        args = {k for k in _resolve(name).method if k != "type"}
        assert args <= set(params), args - set(params)
    # The config-less pairs' values are the constructor defaults.
    assert (params["cl_weight"].default, params["temperature"].default, params["ce_weight"].default) == (10.0, 1.0, 1.0)


def test_unified_recipe_unchanged_for_ckd():
    for pair in SUITE.pairs:
        recipe = SUITE.resolve("unified", pair, "ckd")
        s = recipe.schedule
        low = pair.student in ("MobileNetV2", "ShuffleV1", "ShuffleV2")
        assert recipe.method == {"type": "ckd"} and recipe.notes == ()
        assert (s.epochs, s.batch_size, s.lr, s.kind, s.milestones) == (
            240,
            64,
            0.01 if low else 0.05,
            "step",
            (150, 180, 210),
        )


def test_paper_recipe_of_other_methods_is_not_ckds():
    recipe = _resolve("wrn_40_2-wrn_40_1", method="kd")
    assert (recipe.schedule.epochs, recipe.schedule.batch_size, recipe.method) == (240, 64, {"type": "kd"})
    # The teacher stage resolves the teachers with method "ce" and Pair(t, t): the standard schedule.
    teacher = SUITE.resolve("paper", Pair("wrn_40_2", "wrn_40_2"), "ce")
    assert (teacher.schedule.epochs, teacher.schedule.kind) == (240, "step")


def test_recipe_hash_follows_the_settings():
    all_pairs = {**OFFICIAL, **NO_CONFIG}
    hashes = {name: _resolve(name).hash for name in all_pairs}
    for a in all_pairs:
        for b in all_pairs:
            same_notes = (a in OFFICIAL) == (b in OFFICIAL)
            if all_pairs[a] != all_pairs[b]:
                assert hashes[a] != hashes[b], (a, b)
            elif same_notes:  # same settings, same source: one resolved recipe
                assert hashes[a] == hashes[b], (a, b)
    assert _resolve("resnet56-resnet20").hash != SUITE.resolve("unified", SUITE.pair("resnet56-resnet20"), "ckd").hash


def test_config_built_from_the_recipe():
    """The MMEngine config of a run carries the recipe: batch, lr, cosine T_max, the loss args, drop_last off."""
    from benchmark.train import RunSpec, build_config

    pair = SUITE.pair("wrn_40_2-wrn_40_1")
    recipe = SUITE.resolve("paper", pair, "ckd")
    spec = RunSpec(suite=SUITE, pair=pair, method="ckd", recipe=recipe, seed=0, run_dir=Path("unused"))
    cfg = build_config(spec, num_data=50000)
    assert cfg.train_dataloader.batch_size == 32
    # The official code keeps the last partial batch. MMEngine passes the loader config to torch's
    # DataLoader as is, so drop_last unset means torch's default, False.
    assert "drop_last" not in cfg.train_dataloader
    assert inspect.signature(DataLoader).parameters["drop_last"].default is False
    assert cfg.optim_wrapper.optimizer.lr == 0.05 and cfg.optim_wrapper.optimizer.momentum == 0.9
    assert cfg.optim_wrapper.optimizer.weight_decay == 5e-4
    scheduler = cfg.param_scheduler[0]
    assert (scheduler.type, scheduler.T_max, scheduler.eta_min, scheduler.by_epoch) == (
        "CosineAnnealingLR",
        480,
        0.0,
        True,
    )
    assert cfg.train_cfg.max_epochs == 480
    assert cfg.model.method == {"type": "ckd", "cl_weight": 50.0, "temperature": 2.0, "ce_weight": 1.0}


def test_dry_run_shows_the_per_pair_recipe(capsys, tmp_path):
    from benchmark.run import main

    assert (
        main(
            [
                "--suite",
                "cifar100",
                "--methods",
                "ckd",
                "--recipe",
                "paper",
                "--dry-run",
                "--no-baseline",
                "--seeds",
                "1",
                "--work-dir",
                str(tmp_path / "w"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    for name, (batch, lr, cl_weight, tau) in {**OFFICIAL, **NO_CONFIG}.items():
        line = next(line for line in out.splitlines() if f"] {name} ckd seed0 " in line)
        assert f"(recipe paper {_resolve(name).hash}, 480 ep, bs {batch}" in line, line
        if ", lr " in line:  # once the plan also prints the lr and the method's arguments
            assert f"lr {lr:g}, cl_weight {cl_weight:g}, temperature {tau:g}" in line, line
