"""DDP: two processes (gloo, CPU) equal one process over the same global batch.

Equivalence is checked where only the distribution differs: a BatchNorm-free toy pair, the
same initial weights, the same global batch (and the same CRD negatives) split in two, a
few SGD steps in float64. The two computations reduce in a different order (two half-batch
means averaged by DDP vs one mean), so weights agree to a float64 tolerance, not bit for bit:
rel 1e-9 leaves ~6 orders of magnitude over the observed ~1e-15 and still fails on any
missing gradient term (those are O(1e-2) here). Ranks among themselves run the same
operations on the same (gathered) inputs, so their CRD banks and Z are compared exactly.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import methods
from benchmark.train.launch import free_port
from methods.base import DistillContext, StepInputs
from tests import forked_cli

REPO = Path(__file__).resolve().parent.parent
GLOBAL_BATCH, N_DATA, NCE_K, STEPS, CLASSES = 8, 64, 16, 3, 5
STUCK_S = 600  # only a hang takes this long (seconds unloaded)
METHOD_CFGS = {
    "kd": {"type": "kd"},
    "dkd": {"type": "dkd", "warmup": 1},
    "fitnet": {"type": "fitnet"},
    "crd": {"type": "crd", "nce_k": NCE_K, "feat_dim": 8},
    "ckd": {"type": "ckd", "contrast": "global"},
    "ckd_local": {"type": "ckd", "contrast": "local"},
}


class ToyNet(nn.Module):
    """Conv → ReLU (hint) → conv → mean pool (embedding) → linear; no BatchNorm."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1, stride=2)
        self.fc = nn.Linear(width, CLASSES)

    def forward(self, x):
        hint = torch.relu(self.conv1(x))
        embedding = torch.relu(self.conv2(hint)).mean((2, 3))
        return self.fc(embedding), {"hint": hint, "embedding": embedding}


class Bundle(nn.Module):
    """Student + method: what DDP wraps (the teacher stays outside, frozen)."""

    def __init__(self, student: nn.Module, method: nn.Module) -> None:
        super().__init__()
        self.student, self.method = student, method

    def forward(self, x, teacher_logits, teacher_feats, target, index, contrast_index):
        logits, feats = self.student(x)
        step = StepInputs(logits, target, teacher_logits, 2, feats, teacher_feats, index, contrast_index)
        return sum(self.method(step).values())


def initial_nets() -> tuple[ToyNet, ToyNet]:
    """Student and teacher as every run starts them: seed 0, built in float64."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        return ToyNet(4), ToyNet(6)
    finally:
        torch.set_default_dtype(previous)


def global_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, GLOBAL_BATCH, 3, 8, 8, generator=g, dtype=torch.float64)
    target = torch.randint(0, CLASSES, (STEPS, GLOBAL_BATCH), generator=g)
    index = torch.stack([torch.randperm(N_DATA, generator=g)[:GLOBAL_BATCH] for _ in range(STEPS)])
    negatives = torch.randint(0, N_DATA, (STEPS, GLOBAL_BATCH, NCE_K), generator=g)
    return x, target, index, torch.cat([index[..., None], negatives], dim=2)


def train(name: str, rank: int, world: int) -> dict:
    """STEPS SGD steps of method ``name`` on this rank's share of the global batch (float64)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return _train(name, rank, world)
    finally:
        torch.set_default_dtype(previous)


def _train(name: str, rank: int, world: int) -> dict:
    student, teacher = initial_nets()
    teacher.requires_grad_(False)
    with torch.no_grad():
        _, s_feats = student(torch.zeros(2, 3, 8, 8))
        _, t_feats = teacher(torch.zeros(2, 3, 8, 8))
    context = DistillContext(
        CLASSES,
        N_DATA,
        {k: tuple(v.shape) for k, v in s_feats.items()},
        {k: tuple(v.shape) for k, v in t_feats.items()},
    )
    bundle = Bundle(student, methods.build_method(dict(METHOD_CFGS[name]), context))
    for module in bundle.modules():
        if isinstance(module, nn.BatchNorm2d):
            # FitNet's regressor (conv-BN-ReLU, as RepDistiller's): batch statistics over half
            # batches are another computation, and SyncBatchNorm needs CUDA. Running statistics
            # make it BatchNorm-free in effect, so only the distribution differs.
            module.eval()
    model = nn.parallel.DistributedDataParallel(bundle, broadcast_buffers=False) if world > 1 else bundle
    optimiser = torch.optim.SGD(bundle.parameters(), lr=0.5, momentum=0.9)
    x, target, index, contrast = global_data()
    share = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    losses = []
    for step in range(STEPS):
        with torch.no_grad():
            t_logits, t_feats = teacher(x[step, share])
        loss = model(x[step, share], t_logits, t_feats, target[step, share], index[step, share], contrast[step, share])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    state = {k: v.detach().clone() for k, v in bundle.state_dict().items()}
    return {"state": state, "losses": losses}


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        torch.save({name: train(name, rank, world) for name in METHOD_CFGS}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


# The tests on `runs` share one two-process launch: one worker under pytest-xdist (--dist loadgroup).
same_launch = pytest.mark.xdist_group("ddp-runs")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ddp")
    forked_cli.server()  # the ranks are forked from a process that has imported torch and the methods once
    ranks = mp.start_processes(
        _rank_main, args=(2, free_port(), str(out)), nprocs=2, join=False, start_method="forkserver"
    )
    deadline = time.monotonic() + STUCK_S
    while not ranks.join(timeout=1):  # raises at once when a rank fails
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail(
                f"the two DDP ranks were still running after {STUCK_S}s (a hang, e.g. a collective one rank never reached)"
            )
    two = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    one = {name: train(name, 0, 1) for name in METHOD_CFGS}
    return one, two


@same_launch
@pytest.mark.parametrize("name", ["kd", "dkd", "fitnet", "crd", "ckd"])
def test_two_processes_equal_one_over_the_global_batch(name, runs):
    one, two = runs
    for key, value in one[name]["state"].items():
        if "memory" in key:
            continue  # banks: below
        for rank in (0, 1):
            torch.testing.assert_close(
                two[rank][name]["state"][key], value, rtol=1e-9, atol=1e-12, msg=f"{name} {key} rank {rank}"
            )
    initial = initial_nets()[0].state_dict()
    moved = max((one[name]["state"][f"student.{k}"] - v).abs().max().item() for k, v in initial.items())
    assert moved > 1e-3  # the steps did something, so agreement is not trivial


@same_launch
def test_crd_banks_and_z_are_one_bank_across_ranks(runs):
    one, two = runs
    memory = [k for k in one["crd"]["state"] if "memory" in k]
    assert {k.rsplit(".", 1)[1] for k in memory} >= {"memory_student", "memory_teacher", "params"}
    for key in memory:
        assert torch.equal(two[0]["crd"]["state"][key], two[1]["crd"]["state"][key]), key  # identical on both ranks
        torch.testing.assert_close(
            two[0]["crd"]["state"][key], one["crd"]["state"][key], rtol=1e-9, atol=1e-12, msg=key
        )
    params = one["crd"]["state"]["method.memory.params"]
    assert params[2] > 0 and params[3] > 0  # Z estimated (from the global batch)


@same_launch
def test_ckd_local_option_gives_the_per_replica_loss(runs):
    """With contrast='local' each rank's first loss is CKD over its own half only."""
    one, two = runs
    x, target, index, contrast = global_data()
    student, teacher = initial_nets()
    for rank in (0, 1):
        share = slice(rank * 4, rank * 4 + 4)
        logits_s, _ = student(x[0, share])
        logits_t, _ = teacher(x[0, share])
        expected = nn.functional.cross_entropy(logits_s, target[0, share]) + 10 * methods.ckd.ckd_loss(
            logits_s, logits_t
        )
        assert two[rank]["ckd_local"]["losses"][0] == pytest.approx(expected.item(), rel=1e-12)
    # and differs from the global contrast (more negatives), which must not be per replica
    assert two[0]["ckd"]["losses"][0] != pytest.approx(two[0]["ckd_local"]["losses"][0], rel=1e-6)


def cli(*args: str, env_extra: dict | None = None, ranks_forked: bool = False) -> subprocess.CompletedProcess:
    """``benchmark/run.py`` in its own process (``tests/forked_cli.py``); its ranks spawned as the launch does,
    or with ``ranks_forked`` forked from a server that has done the imports (arguments pickled alike)."""
    env = {**{k: v for k, v in os.environ.items() if k != "KD_FAULT"}, **(env_extra or {})}
    return forked_cli.run_cli(*args, env=env, timeout=STUCK_S, ranks_forked=ranks_forked)


SWEEP = ("--suite", "digits", "--methods", "crd,ckd", "--seeds", "1", "--epochs", "1", "--nproc", "2")
SWEEP += ("--no-baseline", "--no-aggregate")


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> Path:
    """A community-layout teacher folder (random weights: these tests are about the ranks, not accuracy)."""
    from tests.digits_runs import random_teacher

    root = tmp_path_factory.mktemp("teachers")
    random_teacher(root)
    return root


def test_cli_nproc_2_records_world_size_2_and_validates_every_image_once(teachers, tmp_path):
    """crd and ckd train as one DDP cohort (each member in its own DDP wrapper), then alone."""
    from benchmark.models import build_model
    from benchmark.store.checkpoints import load_community_checkpoint
    from benchmark.store.records import read_record
    from benchmark.suites import get_suite
    from benchmark.sweep.teachers import evaluate_top1

    # Ranks forked from a server that did the imports (the NaN test below launches spawned ranks).
    out = cli(*SWEEP, "--teachers", str(teachers), "--work-dir", str(tmp_path), ranks_forked=True)
    assert out.returncode == 0, out.stdout + out.stderr
    # The same two runs trained alone (--no-cohort): a DDP cohort changes no number and no weight.
    alone_root = tmp_path / "alone"
    solo = cli(*SWEEP, "--teachers", str(teachers), "--work-dir", str(alone_root), "--no-cohort", ranks_forked=True)
    assert solo.returncode == 0, solo.stdout + solo.stderr
    for method in ("crd", "ckd"):
        run_dir = tmp_path / "digits" / "unified-e1-w2" / "small_cnn_w32-small_cnn_w8" / method / "seed0"
        record = read_record(run_dir / "record.json")
        assert (
            record.status == "completed" and record.env["world_size"] == 2 and record.extra["per_process_batch"] == 32
        )
        assert record.extra["cohort"] == [m for m in ("crd", "ckd") if m != method]
        alone_dir = alone_root / run_dir.relative_to(tmp_path)
        assert [(p.epoch, p.top1, p.top5, p.loss) for p in record.curve] == [
            (p.epoch, p.top1, p.top5, p.loss) for p in read_record(alone_dir / "record.json").curve
        ]
        ours, theirs = (torch.load(d / "student.pth", weights_only=True)["model"] for d in (run_dir, alone_dir))
        assert all(torch.equal(ours[key], theirs[key]) for key in ours)
        student = build_model("small_cnn_w8", 10)
        load_community_checkpoint(student, run_dir / "student.pth")
        # The same weights evaluated by one process over the 359 test images: the same top-1
        # (per-image argmax; a logit tie that batch composition could flip would move it by 0.28).
        alone = evaluate_top1(student, get_suite("digits"), "data", "cpu")
        assert record.last_top1 == pytest.approx(alone, abs=0.3)
    assert "contrast global" in out.stdout


def test_nan_on_one_rank_fails_the_run_without_hanging(teachers, tmp_path):
    from benchmark.store.records import read_record

    out = cli(
        "--suite",
        "digits",
        "--methods",
        "kd,dkd",
        "--seeds",
        "1",
        "--epochs",
        "2",
        "--nproc",
        "2",
        "--no-baseline",
        "--no-aggregate",
        "--teachers",
        str(teachers),
        "--work-dir",
        str(tmp_path),
        env_extra={"KD_FAULT": "nan_loss NAN rank=1 epoch=1 iter=2 method=kd"},
    )  # the ranks spawned, as the launch does (one launch, ended by the NaN: the cheapest)
    assert out.returncode == 1, out.stdout + out.stderr
    runs = tmp_path / "digits" / "unified-e2-w2" / "small_cnn_w32-small_cnn_w8"
    record = read_record(runs / "kd" / "seed0" / "record.json")
    assert record.status == "failed" and "on rank 1 at epoch 1, iteration 2" in record.failure
    # Its cohort's other member goes on, on both ranks.
    assert read_record(runs / "dkd" / "seed0" / "record.json").status == "completed"


def test_nproc_must_divide_the_batch(tmp_path):
    out = cli("--suite", "digits", "--methods", "kd", "--nproc", "3", "--work-dir", str(tmp_path), "--dry-run")
    assert out.returncode == 2 and "--nproc 3 does not divide the batch size 64" in out.stderr
