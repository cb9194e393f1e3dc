"""Run-level options reach every suite's config; --print-config; errors found before anything runs.

Every option of the command line that changes how one run trains (workers, AMP, channels-last,
DDP, SyncBN, TensorBoard, seed, work dir) goes through one overlay (``apply_run_overlay``) after
the suite's own config builder. These tests build each suite's complete config without data or
teacher files, as ``--dry-run --print-config`` does, and check that each option landed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from benchmark.detection import detection_stack_problem
from benchmark.errors import UsageError
from benchmark.suites import get_suite, suite_names
from benchmark.sweep.in_process import run_spec
from benchmark.sweep.options import parse_args
from benchmark.sweep.plan import BASELINE, plan_sweep
from benchmark.train import build_config
from tests import forked_cli

REPO = Path(__file__).resolve().parent.parent
PROBLEM = detection_stack_problem()
# Outside CI a machine without the detection stack skips the coco cases; under CI they must run.
SUITES = [
    "digits",
    "cifar100",
    "imagenet",
    pytest.param(
        "coco",
        marks=pytest.mark.skipif(
            PROBLEM is not None and not os.environ.get("CI"), reason=f"fallback outside CI only: {PROBLEM}"
        ),
    ),
]
pytestmark = pytest.mark.filterwarnings("ignore:pkg_resources is deprecated as an API:UserWarning")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``benchmark/run.py`` in its own process, forked with its imports done (``tests/forked_cli.py``)."""
    return forked_cli.run_cli(*args)


def planned_configs(suite: str, tmp_path: Path, *options: str) -> list:
    """The complete config of the first planned run of each method (baseline and KD)."""
    args = parse_args(
        [
            "--suite",
            suite,
            "--methods",
            "kd",
            "--seeds",
            "2",
            "--work-dir",
            str(tmp_path),
            "--data-root",
            str(tmp_path / "no-data"),
            *options,
        ]
    )
    sweep = plan_sweep(args)
    configs = []
    for run in sweep.runs:
        if run.seed != 1:
            continue
        teacher = None
        if run.method != BASELINE:
            from types import SimpleNamespace

            teacher = SimpleNamespace(path=str(tmp_path / "teacher.pth"), sha256=None, top1=None, source="test")
        configs.append(
            (run, build_config(run_spec(run, args, sweep.suite, sweep.stage, teacher), None, check_files=False))
        )
    assert {run.method for run, _ in configs} == {BASELINE, "kd"}
    return configs


def loaders(cfg) -> list:
    return [cfg[name] for name in ("train_dataloader", "val_dataloader", "test_dataloader") if cfg.get(name)]


@pytest.mark.parametrize("suite", SUITES)
def test_defaults_apply_no_option(suite, tmp_path):
    for run, cfg in planned_configs(suite, tmp_path):
        assert cfg.optim_wrapper.get("type", "OptimWrapper") == "OptimWrapper"
        assert "dtype" not in cfg.optim_wrapper
        assert not cfg.model.get("channels_last", False)
        assert "model_wrapper_cfg" not in cfg and "sync_bn" not in cfg
        assert cfg.train_dataloader.batch_size == run.recipe.schedule.batch_size
        assert "TensorboardVisBackend" not in str(cfg.get("visualizer"))


@pytest.mark.parametrize("suite", SUITES)
def test_every_run_option_reaches_the_config(suite, tmp_path):
    options = ("--num-workers", "3", "--amp", "--channels-last", "--tensorboard", "--nproc", "2")
    for run, cfg in planned_configs(suite, tmp_path, *options):
        assert run.recipe.options == {"amp": "bfloat16", "channels_last": True}
        assert cfg.optim_wrapper.type == "CPUAutocastOptimWrapper" and cfg.optim_wrapper.dtype == "bfloat16"
        assert cfg.model.channels_last is True
        assert [backend["type"] for backend in cfg.visualizer.vis_backends] == [
            "LocalVisBackend",
            "TensorboardVisBackend",
        ]
        assert cfg.model_wrapper_cfg.type == "DeviceAwareDistributedDataParallel"
        assert cfg.env_cfg.dist_cfg.backend == "gloo"
        assert cfg.train_dataloader.batch_size == run.recipe.schedule.batch_size // 2
        for loader in loaders(cfg):
            assert loader.num_workers == 3 and loader.persistent_workers is False
            assert loader.worker_init_fn == dict(type="seed_data_worker", run_seed=1)
        assert cfg.randomness.seed == 1
        assert Path(cfg.work_dir) == run.run_dir / "mmengine"
        assert cfg.recipe["options"] == {"amp": "bfloat16", "channels_last": True}


@pytest.mark.parametrize("suite", SUITES)
def test_gpu_options_reach_the_config(suite, tmp_path):
    """On CUDA: MMEngine's AmpOptimWrapper, nccl, SyncBatchNorm (the config is built without a GPU)."""
    for _run, cfg in planned_configs(suite, tmp_path, "--device", "cuda", "--amp", "--nproc", "2", "--sync-bn"):
        assert cfg.optim_wrapper.type == "AmpOptimWrapper" and cfg.optim_wrapper.dtype == "bfloat16"
        assert cfg.env_cfg.dist_cfg.backend == "nccl"
        assert cfg.sync_bn == "torch"


def test_help_lists_every_registered_suite():
    out = run_cli("--help")
    assert out.returncode == 0
    suite_line = next(line for line in out.stdout.splitlines() if line.strip().startswith("--suite"))
    for name in suite_names():
        assert name in suite_line
    assert {"cifar100", "coco", "digits", "imagenet"} <= set(suite_names())


@pytest.mark.skipif(PROBLEM is not None and not os.environ.get("CI"), reason=f"fallback outside CI only: {PROBLEM}")
def test_print_config_shows_the_bf16_wrapper_on_coco(tmp_path, capsys):
    """--dry-run --print-config prints the complete config without data or teacher files (in process:
    the CLI's own main; one subprocess would spend most of its time importing MMDetection)."""
    from benchmark.run import main

    def run_cli(*args: str):
        code = main(list(args))
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    common = (
        "--suite",
        "coco",
        "--methods",
        "kd",
        "--seeds",
        "1",
        "--pairs",
        "frcnn_r101-frcnn_r18",
        "--no-baseline",
        "--dry-run",
        "--print-config",
        "--work-dir",
        str(tmp_path),
        "--data-root",
        str(tmp_path / "none"),
    )
    amp = run_cli(*common, "--amp")
    assert amp.returncode == 0, amp.stderr
    assert "type='CPUAutocastOptimWrapper'" in amp.stdout and "dtype='bfloat16'" in amp.stdout
    assert "type='DistillationDetector'" in amp.stdout and "type='CocoMetric'" in amp.stdout
    gpu = run_cli(*common, "--amp", "--device", "cuda")
    assert gpu.returncode == 0 and "type='AmpOptimWrapper'" in gpu.stdout, gpu.stderr
    plain = run_cli(*common)
    assert plain.returncode == 0, plain.stderr
    assert "Autocast" not in plain.stdout and "AmpOptimWrapper" not in plain.stdout and "bfloat16" not in plain.stdout
    assert "type='OptimWrapper'" in plain.stdout


def test_print_config_digits_implies_dry_run(tmp_path):
    out = run_cli(
        "--suite", "digits", "--methods", "crd", "--seeds", "1", "--print-config", "--work-dir", str(tmp_path)
    )
    assert out.returncode == 0, out.stderr
    assert "type='DistillationModel'" in out.stdout and "contrast_k=" in out.stdout
    assert not any(tmp_path.iterdir())  # a dry run creates nothing


# --------------------------------------------------------------------------- errors before anything runs


def test_all_problems_are_reported_together_data_first(tmp_path):
    out = run_cli(
        "--suite",
        "cifar100",
        "--methods",
        "kd",
        "--pairs",
        "resnet56-resnet20",
        "--seeds",
        "1",
        "--data-root",
        str(tmp_path / "nonexistent"),
        "--teachers",
        str(tmp_path / "no-teachers"),
        "--work-dir",
        str(tmp_path / "wd"),
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2, out.stderr
    assert lines[0].startswith("error: CIFAR-100 not found") and "nonexistent" in lines[0]
    assert lines[1].startswith("error: 1 teacher file(s) not found") and "resnet56_vanilla" in lines[1]
    assert not (tmp_path / "wd" / "cifar100").exists()


@pytest.mark.parametrize("train_teachers", [False, True])
def test_coco_reports_missing_data_with_or_without_teachers(train_teachers, tmp_path):
    args = [
        "--suite",
        "coco",
        "--methods",
        "kd",
        "--pairs",
        "frcnn_r101-frcnn_r18",
        "--seeds",
        "1",
        "--data-root",
        str(tmp_path / "nonexistent"),
        "--work-dir",
        str(tmp_path / "wd"),
    ]
    out = run_cli(*args, *(["--train-teachers"] if train_teachers else []))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr
    assert "nonexistent" in lines[0], out.stderr
    assert len(lines) == (1 if train_teachers else 2), out.stderr
    if not train_teachers:
        assert "teacher file(s) not found" in lines[1]


def test_imagenet_refuses_a_method_without_imagenet_settings():
    import methods
    from methods.kd import KD

    name = "kd_without_imagenet_settings"
    methods.METHODS.register_module(name=name, module=type("KDCopy", (KD,), {}))
    try:
        suite = get_suite("imagenet")
        with pytest.raises(UsageError, match=f"method {name} has no ImageNet settings"):
            suite.resolve("unified", suite.pairs[0], name)
        with pytest.raises(UsageError, match="no ImageNet settings"):
            plan_sweep(parse_args(["--suite", "imagenet", "--methods", name, "--dry-run"]))
    finally:
        methods.METHODS._module_dict.pop(name)
