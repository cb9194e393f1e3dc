"""The coco suite on 2 processes (DDP through MMEngine, gloo on CPU), and CKD's gather of unequal RoI counts.

Detection ranks sample their own RoIs, so their counts may differ: CKD's ``global`` contrast gathers
the row counts first, pads, gathers with the gradient and trims (``methods.distributed``). The unit
test checks that 2 processes with 5 and 3 rows give what one process gives over the 8 rows. The
training test runs the real runner (``benchmark.train.execute`` → ``benchmark.train.launch``) on the tiny
COCO of ``tests/coco_tiny.py`` (2 images per process, 1 iteration per epoch), interrupted after its
first epoch's checkpoint and resumed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pickle
from pathlib import Path

import pytest
import torch

from benchmark.store.records import read_record
from benchmark.train.launch import free_port
from tests.coco_tiny import PAIR, needs_mmdet, tiny, tiny_spec  # noqa: F401  (tiny: the module's fixture)

pytestmark = pytest.mark.filterwarnings("ignore:pkg_resources is deprecated as an API:UserWarning")
ROWS = (5, 3)  # rows (RoIs) of rank 0 and rank 1: unequal on purpose
COLUMNS, TEMPERATURE = 6, 0.5


def gather_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return (
        torch.randn(sum(ROWS), COLUMNS, generator=g, dtype=torch.float64),
        torch.randn(sum(ROWS), COLUMNS, generator=g, dtype=torch.float64),
    )


def ckd_step(student: torch.Tensor, teacher: torch.Tensor) -> tuple[float, torch.Tensor]:
    from methods.ckd import ckd_loss

    student = student.clone().requires_grad_(True)
    loss = ckd_loss(student, teacher, TEMPERATURE, global_batch=True)
    loss.backward()
    return loss.item(), student.grad


def _gather_rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        student, teacher = gather_data()
        rows = slice(sum(ROWS[:rank]), sum(ROWS[: rank + 1]))
        loss, grad = ckd_step(student[rows], teacher[rows])
        torch.save({"loss": loss, "grad": grad}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_unequal_rows_gathered_with_gradient_give_the_one_process_ckd_loss(tmp_path):
    """2 gloo processes with 5 and 3 RoIs equal one process over the 8: the mean of the ranks' losses is its
    loss, and each rank's gradient, averaged over the ranks as DDP averages, is its gradient for those rows.

    float64; the only differences are the reduction orders (a sum scaled by W/N per rank, then a mean of 2,
    vs one mean of 8; the gradient all-reduced over 2 ranks): ~1e-16 relative. rtol 1e-12 keeps 4 orders of
    margin and still fails on any lost cross-rank term (O(1e-2) here) or a wrong positive offset."""
    import torch.multiprocessing as mp

    # Forked: nothing to import again (the ranks only need torch and methods).
    mp.start_processes(_gather_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    student, teacher = gather_data()
    loss, grad = ckd_step(student, teacher)  # one process, all rows
    assert (ranks[0]["loss"] + ranks[1]["loss"]) / 2 == pytest.approx(loss, rel=1e-12)
    assert [r["grad"].shape[0] for r in ranks] == list(ROWS)
    torch.testing.assert_close(torch.cat([r["grad"] for r in ranks]) / 2, grad, rtol=1e-12, atol=1e-15)
    # Not trivially equal: each rank alone (its own rows as negatives) gives other losses.
    from methods.ckd import ckd_loss

    local = ckd_loss(student[: ROWS[0]], teacher[: ROWS[0]], TEMPERATURE).item()
    assert abs(local * ROWS[0] / sum(ROWS) * 2 - ranks[0]["loss"]) > 1e-3


def test_nproc_puts_the_ckd_contrast_into_the_coco_recipe():
    """unified: --ckd-contrast decides (global: all ranks' RoIs); paper: groups of contrast_rois per process."""
    from benchmark.suites import get_suite
    from benchmark.sweep.plan import with_world_size

    suite = get_suite("coco")
    pair = suite.pairs[0]
    for contrast in ("global", "local"):
        args = argparse.Namespace(nproc=2, ckd_contrast=contrast, sync_bn=False)
        unified = with_world_size(suite.resolve("unified", pair, "ckd"), args)
        assert unified.method["contrast"] == contrast and unified.method["contrast_rois"] is None
        assert any(note.startswith("CKD negatives from") for note in unified.notes)
    paper = with_world_size(
        suite.resolve("paper", pair, "ckd"), argparse.Namespace(nproc=2, ckd_contrast="global", sync_bn=False)
    )
    assert "contrast" not in paper.method and paper.method["contrast_rois"] == 1024
    assert any("groups of 1024 RoIs of each process" in note for note in paper.notes)


@needs_mmdet
def test_coco_trains_on_two_processes_and_resumes(tiny, tmp_path, monkeypatch):  # noqa: F811
    """CKD with the global contrast under DDP: interrupted (Ctrl-C on every rank) after epoch 1's checkpoint,
    then resumed to the end; finite losses, CocoMetric's AP every epoch, world size 2 in the record.

    The ranks are forked, not spawned as ``benchmark.train.launch`` does: a spawned rank re-imports MMDetection
    (~12 s a launch on 2 cores). What spawning needs of the run (it pickles) is checked here instead, and
    the spawned launch itself by tests/test_ddp.py's CLI runs."""
    import torch.multiprocessing

    from benchmark.train import execute, new_record

    spec = tiny_spec(tiny, "ckd", tmp_path / "run", epochs=2, contrast="global")
    # 4 images per batch, 2 per process: one iteration per epoch; one thread per rank on 2 cores.
    spec.recipe.schedule.batch_size, spec.world_size = 4, 2
    spec.suite = dataclasses.replace(spec.suite, cpu_threads=1)
    assert pickle.loads(pickle.dumps(spec)).recipe.method == spec.recipe.method  # what a spawned rank receives
    start_processes = torch.multiprocessing.start_processes
    monkeypatch.setattr(
        torch.multiprocessing,
        "start_processes",
        lambda *args, **kwargs: start_processes(*args, **{**kwargs, "start_method": "fork"}),
    )
    monkeypatch.setenv("KD_FAULT", "after_checkpoint INT epoch=1")  # inherited by the spawned ranks
    first = execute(spec, 4, new_record(spec), resume=False, say=lambda _line: None)
    assert first.status == "running" and first.curve == []  # interrupted before epoch 1's validation
    assert (tmp_path / "run" / "mmengine" / "epoch_1.pth").is_file()
    monkeypatch.delenv("KD_FAULT")

    record = execute(spec, 4, first, resume=True, say=lambda _line: None)
    assert record.status == "completed", record.failure
    assert record.extra["attempts"] == 2 and read_record(tmp_path / "run" / "record.json") == record
    assert record.env["world_size"] == 2 and record.extra["per_process_batch"] == 2
    assert record.extra["recipe"]["method"]["contrast"] == "global"
    assert [p.epoch for p in record.curve] == [1, 2] and all(math.isfinite(p.loss) for p in record.curve)
    assert all(p.metrics["mAP"] is not None and 0.0 <= p.metrics["mAP"] <= 100.0 for p in record.curve)
    scalars = sorted((tmp_path / "run" / "mmengine").glob("*/vis_data/scalars.json"))[-1].read_text()  # the resumed
    assert '"loss_ckd"' in scalars and '"coco/bbox_mAP"' in scalars
