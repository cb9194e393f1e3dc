"""End to end through MMEngine's Runner on a tiny CIFAR-100 in the official format."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from mmengine.hooks import Hook

import methods
from benchmark.models import build_model
from benchmark.store.checkpoints import CheckpointError, load_community_checkpoint, save_community_checkpoint
from benchmark.store.records import read_record
from benchmark.suites import Pair, ResolvedRecipe, Schedule, get_suite
from benchmark.train import STUDENT_EXPORT, RunSpec, execute, new_record
from tests import forked_cli

PAIR = Pair("resnet20", "resnet8")
N_TRAIN = 128


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teachers") / "resnet20_vanilla" / "ckpt_epoch_240.pth"
    save_community_checkpoint(build_model("resnet20", 100), path, epoch=240)
    return path


def spec_for(
    method_cfg: dict, run_dir: Path, data_root: Path, teacher_ckpt: Path, epochs: int = 1, seed: int = 0
) -> RunSpec:
    recipe = ResolvedRecipe(
        "unified", Schedule(epochs=epochs, batch_size=32, lr=0.05, milestones=(max(1, epochs - 1),)), method_cfg
    )
    return RunSpec(
        suite=get_suite("cifar100"),
        pair=PAIR,
        method=method_cfg["type"],
        recipe=recipe,
        seed=seed,
        run_dir=run_dir,
        data_root=str(data_root),
        teacher_checkpoint=str(teacher_ckpt),
        teacher_checkpoint_sha256="test",
        num_workers=0,
    )


def method_cfg(name: str) -> dict:
    return {"type": name, **({"nce_k": 64} if name.startswith("crd") else {})}


@pytest.mark.parametrize("name", sorted(methods.METHODS.module_dict))
def test_every_method_trains_through_the_runner(name, tiny_cifar100, teacher_checkpoint, tmp_path):
    spec = spec_for(method_cfg(name), tmp_path / name, tiny_cifar100, teacher_checkpoint)
    record = execute(spec, N_TRAIN, new_record(spec), resume=False)
    assert record.status == "completed", record.failure
    assert [p.epoch for p in record.curve] == [1]
    assert 0 <= record.last_top1 <= 100 and 0 <= record.last_top5 <= 100 and record.last_top5 >= record.last_top1
    assert record.images_per_s and record.images_per_s > 0
    assert {
        "teacher_forward_ms",
        "student_forward_backward_ms",
        "distill_loss_ms",
        "data_wait_ms",
        "peak_memory_mb",
    } <= set(record.runtime)
    on_disk = read_record(tmp_path / name / "record.json")
    assert on_disk.status == "completed" and on_disk.recipe_hash == spec.recipe.hash
    # The student is exported in the community format and loads strictly.
    student = build_model("resnet8", 100)
    load_community_checkpoint(student, tmp_path / name / STUDENT_EXPORT)
    # MMEngine logged every weighted term the method returned.
    scalars = next((tmp_path / name / "mmengine").glob("*/vis_data/scalars.json")).read_text()
    assert '"loss_ce"' in scalars or name == "fitnet" and '"loss_hint"' in scalars
    expected_term = {
        "kd": "loss_kd",
        "fitnet": "loss_hint",
        "crd": "loss_crd",
        "crd_kd": "loss_crd",
        "dkd": "loss_dkd",
        "ckd": "loss_ckd",
        "ce": "loss_ce",
    }[name]
    assert f'"{expected_term}"' in scalars
    # The config MMEngine keeps in each checkpoint (not yapf-formatted) is the run's config.py.
    from mmengine.config import Config

    from benchmark.store.checkpoints import allow_mmengine_checkpoint_globals

    with allow_mmengine_checkpoint_globals():
        checkpoint = torch.load(tmp_path / name / "mmengine" / "epoch_1.pth", weights_only=True)
    kept = Config.fromstring(checkpoint["meta"]["cfg"], ".py").to_dict()
    assert kept == Config.fromfile(tmp_path / name / "config.py").to_dict()


class Interrupt(Hook):
    """Stops training as if killed, after ``after`` epochs were checkpointed."""

    priority = "LOWEST"

    def __init__(self, after: int) -> None:
        self.after = after

    def before_train_epoch(self, runner) -> None:
        if runner.epoch == self.after:
            raise KeyboardInterrupt


@pytest.mark.parametrize("name", ["kd", "crd"])
def test_resume_gives_the_same_numbers_as_an_uninterrupted_run(name, tiny_cifar100, teacher_checkpoint, tmp_path):
    straight = spec_for(method_cfg(name), tmp_path / "straight", tiny_cifar100, teacher_checkpoint, epochs=3)
    reference = execute(straight, N_TRAIN, new_record(straight), resume=False)

    broken = spec_for(method_cfg(name), tmp_path / "broken", tiny_cifar100, teacher_checkpoint, epochs=3)
    with pytest.raises(KeyboardInterrupt):
        execute(broken, N_TRAIN, new_record(broken), resume=False, hooks=[Interrupt(after=2)])
    partial = read_record(tmp_path / "broken" / "record.json")
    assert partial.status == "running" and [p.epoch for p in partial.curve] == [1, 2]
    resumed = execute(broken, N_TRAIN, partial, resume=True)

    assert resumed.status == "completed"
    assert [(p.epoch, p.top1, p.top5) for p in resumed.curve] == [(p.epoch, p.top1, p.top5) for p in reference.curve]
    for ours, theirs in zip(resumed.curve, reference.curve):
        assert ours.loss == pytest.approx(theirs.loss, rel=1e-6)
    a = torch.load(tmp_path / "straight" / STUDENT_EXPORT, weights_only=True)["model"]
    b = torch.load(tmp_path / "broken" / STUDENT_EXPORT, weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_nan_loss_stops_the_run_and_records_it_as_failed(tiny_cifar100, teacher_checkpoint, tmp_path):
    @methods.METHODS.register_module(name="_test_nan", force=True)
    class NaNAfterFirstStep(methods.Distiller):
        needs_teacher = False

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.calls = 0

        def forward(self, step):
            self.calls += 1
            loss = torch.nn.functional.cross_entropy(step.logits_student, step.target)
            return {"loss_ce": loss * (float("nan") if self.calls >= 2 else 1.0)}

    try:
        spec = spec_for({"type": "_test_nan"}, tmp_path / "nan", tiny_cifar100, teacher_checkpoint, epochs=2)
        record = execute(spec, N_TRAIN, new_record(spec), resume=False)
    finally:
        methods.METHODS._module_dict.pop("_test_nan")
    assert record.status == "failed"
    assert "nan" in record.failure.lower() and "epoch 1, iteration 2" in record.failure
    assert read_record(tmp_path / "nan" / "record.json").status == "failed"


def test_teacher_loaded_strictly_and_frozen(tiny_cifar100, teacher_checkpoint, tmp_path):
    from benchmark.train.model import DistillationModel

    model = DistillationModel(
        student="resnet8",
        teacher="resnet20",
        teacher_checkpoint=str(teacher_checkpoint),
        method={"type": "kd"},
        num_classes=100,
        num_data=N_TRAIN,
        data_preprocessor=dict(type="DistillDataPreprocessor", mean=(0.5,) * 3, std=(0.25,) * 3),
    )
    saved = torch.load(teacher_checkpoint, weights_only=True)["model"]
    model.init_weights()
    model.train()
    assert not model.teacher.training and all(not p.requires_grad for p in model.teacher.parameters())
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_corrupt_and_mismatched_teacher_checkpoints_are_clear_errors(tmp_path, teacher_checkpoint):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_community_checkpoint(build_model("resnet20", 100), corrupt)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_community_checkpoint(build_model("resnet8", 100), teacher_checkpoint)
    with pytest.raises(CheckpointError, match="not found"):
        load_community_checkpoint(build_model("resnet8", 100), tmp_path / "missing.pth")


def run_cli(*args: str, cwd: Path, fresh: bool = False) -> subprocess.CompletedProcess:
    """``benchmark/run.py`` in its own process (forked with its imports done; ``fresh``: a new interpreter)."""
    return forked_cli.run_cli(*args, cwd=cwd, timeout=600, fresh=fresh)


def test_cli_dry_run_prints_the_cifar100_plan(tmp_path):
    out = run_cli(
        "--suite",
        "cifar100",
        "--methods",
        "ckd,crd,dkd",
        "--dry-run",
        "--seeds",
        "1",
        "--work-dir",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    run_lines = [line for line in out.stdout.splitlines() if line.startswith("  [")]
    assert len(run_lines) == 13 * 4  # 13 pairs x (ce baseline + 3 methods)
    assert "resnet32x4-ShuffleV2 crd" in out.stdout and "wrn_40_2-ShuffleV1 dkd" in out.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["--suite", "cifar100", "--methods", "kd,nope"], "unknown method(s) nope; registered methods:"),
        (["--suite", "imagenet21k", "--methods", "kd"], "unknown suite 'imagenet21k'"),
        (["--suite", "cifar100", "--methods", "kd", "--pairs", "resnet8-resnet8"], "has no pair 'resnet8-resnet8'"),
        (["--suite", "cifar100", "--methods", "kd", "--data-root", "missing-root"], "CIFAR-100 not found"),
    ],
)
def test_cli_user_errors_are_one_line_and_exit_2(args, message, tmp_path):
    # The missing data root in a new interpreter: what it prints while importing counts too.
    out = run_cli(*args, "--work-dir", str(tmp_path / "w"), cwd=tmp_path, fresh="--data-root" in args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_cli_uses_community_teachers_and_skips_completed_runs(tiny_cifar100, teacher_checkpoint, tmp_path):
    args = [
        "--suite",
        "cifar100",
        "--methods",
        "kd",
        "--pairs",
        "resnet56-resnet20",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--data-root",
        str(tiny_cifar100),
        "--teachers",
        str(tmp_path / "teachers"),
        "--work-dir",
        str(tmp_path / "w"),
        "--num-workers",
        "0",
        "--no-aggregate",
        "--no-baseline",
    ]
    torch.manual_seed(0)
    save_community_checkpoint(
        build_model("resnet56", 100), tmp_path / "teachers" / "resnet56_vanilla" / "ckpt_epoch_240.pth"
    )
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "teacher resnet56: top-1" in first.stdout
    records = sorted((tmp_path / "w").rglob("record.json"))
    assert len(records) == 2  # the teacher's and the kd run's
    kd = read_record(next(p for p in records if "/kd/" in str(p)))
    assert kd.teacher_checkpoint_sha256 and kd.teacher_top1 is not None and kd.status == "completed"
    second = run_cli(*args, cwd=tmp_path)
    assert second.returncode == 0 and "done before" in second.stdout


def test_cli_refuses_a_corrupt_record_instead_of_overwriting_it(tiny_cifar100, tmp_path):
    run_dir = tmp_path / "w" / "cifar100" / "unified-e1" / "resnet56-resnet20" / "ce" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "record.json").write_text("{ half a record")
    out = run_cli(
        "--suite",
        "cifar100",
        "--methods",
        "ce",
        "--pairs",
        "resnet56-resnet20",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--data-root",
        str(tiny_cifar100),
        "--work-dir",
        str(tmp_path / "w"),
        "--no-aggregate",
        cwd=tmp_path,
    )
    assert out.returncode == 2 and "cannot trust" in out.stderr
    assert (run_dir / "record.json").read_text() == "{ half a record"
