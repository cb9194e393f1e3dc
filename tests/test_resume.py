"""A run interrupted at any point and resumed leaves exactly the record of an uninterrupted run.

The interruption points are those of the correctness issue: mid-epoch; after an epoch's
checkpoint but before its validation (a middle epoch and the last one); after the last
validation but before the record is finalised. Plus a torn newest checkpoint. Each uses
the fault points of :mod:`benchmark.faults` (raised in-process as Ctrl-C would be).

Comparisons are exact: the resumed and the uninterrupted run execute the same operations on
the same inputs in the same process (every epoch reseeds every RNG), so any difference is a bug.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from benchmark.store.checkpoints import epoch_checkpoints
from benchmark.store.records import RecordError, RunRecord, read_record
from benchmark.suites import Pair, get_suite
from benchmark.train import RunSpec, execute, new_record
from tests.digits_runs import assert_students_equal, interrupt_at, random_teacher

SUITE = get_suite("digits")
PAIR = Pair("small_cnn_w32", "small_cnn_w8")
EPOCHS = 2  # a middle epoch (1) and the last one (2): every interruption point below
N_TRAIN = 1438  # the digits training split


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    return random_teacher(tmp_path_factory.mktemp("teachers"))


def spec_for(method: str, run_dir: Path, teacher: Path) -> RunSpec:
    recipe = SUITE.resolve("unified", PAIR, method)
    recipe.schedule = recipe.schedule.with_epochs(EPOCHS)
    return RunSpec(
        suite=SUITE,
        pair=PAIR,
        method=method,
        recipe=recipe,
        seed=0,
        run_dir=run_dir,
        teacher_checkpoint=str(teacher),
        teacher_checkpoint_sha256="test",
        num_workers=0,
    )


def comparable(record: RunRecord) -> tuple:
    curve = [(p.epoch, p.top1, p.top5, p.loss) for p in record.curve]
    return record.status, curve, record.last_top1, record.best_top1, record.best_epoch, record.last_top5


@pytest.fixture(scope="module")
def uninterrupted(teacher_file, tmp_path_factory) -> dict[str, tuple[RunRecord, Path]]:
    done = {}
    for method in ("crd", "kd"):
        run_dir = tmp_path_factory.mktemp(f"straight-{method}")
        spec = spec_for(method, run_dir, teacher_file)
        done[method] = execute(spec, N_TRAIN, new_record(spec), resume=False, say=lambda _l: None), run_dir
    return done


POINTS = [
    ("mid_epoch", {"epoch": 2, "iter": 3}),  # resumes from epoch 1's checkpoint
    ("after_checkpoint", {"epoch": 1}),  # a middle epoch: checkpoint on disk, never validated
    ("after_checkpoint", {"epoch": EPOCHS}),  # the last one: training is over when it resumes
    ("before_finalise", {}),  # every epoch validated, the record still 'running'
]


# CRD (its memory bank travels in the checkpoint) at all four points; KD at the three checkpoint-related ones.
CASES = [("crd", point, where) for point, where in POINTS] + [("kd", point, where) for point, where in POINTS[1:]]
CASE_IDS = ["mid-epoch", "ckpt-before-val-mid", "ckpt-before-val-last", "before-finalise"]


@pytest.mark.parametrize(
    "method,point,where", CASES, ids=[f"{m}-{i}" for m, i in zip(["crd"] * 4 + ["kd"] * 3, CASE_IDS + CASE_IDS[1:])]
)
def test_resumed_record_equals_the_uninterrupted_one(
    method, point, where, uninterrupted, teacher_file, tmp_path, monkeypatch
):
    reference, reference_dir = uninterrupted[method]
    spec = spec_for(method, tmp_path, teacher_file)
    interrupt_at(monkeypatch, point, **where)
    with pytest.raises(KeyboardInterrupt):
        execute(spec, N_TRAIN, new_record(spec), resume=False, say=lambda _l: None)
    partial = read_record(tmp_path / "record.json")
    assert partial.status == "running"

    resumed = execute(spec, N_TRAIN, partial, resume=True, say=lambda _l: None)
    assert comparable(resumed) == comparable(reference)
    assert comparable(read_record(tmp_path / "record.json")) == comparable(reference)
    assert_students_equal(tmp_path, reference_dir)
    # Time and throughput cover the training behind the final weights, over both attempts.
    assert resumed.extra["attempts"] == 2
    assert resumed.wall_time_s > 0 and resumed.images_per_s > 0
    assert resumed.runtime["measured_iterations"] >= reference.runtime["measured_iterations"] - 5


def test_a_torn_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_previous(
    uninterrupted, teacher_file, tmp_path, monkeypatch
):
    reference, reference_dir = uninterrupted["crd"]
    spec = spec_for("crd", tmp_path, teacher_file)
    interrupt_at(monkeypatch, "after_checkpoint", epoch=EPOCHS)
    with pytest.raises(KeyboardInterrupt):
        execute(spec, N_TRAIN, new_record(spec), resume=False, say=lambda _l: None)
    checkpoints = epoch_checkpoints(tmp_path / "mmengine")
    assert [epoch for epoch, _ in checkpoints] == [EPOCHS, EPOCHS - 1]  # the previous one is kept
    newest = checkpoints[0][1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # what a kill during torch.save leaves

    lines: list[str] = []
    resumed = execute(spec, N_TRAIN, read_record(tmp_path / "record.json"), resume=True, say=lines.append)
    assert comparable(resumed) == comparable(reference)
    assert_students_equal(tmp_path, reference_dir)
    assert (tmp_path / "mmengine" / f"epoch_{EPOCHS}.pth.unreadable").is_file()  # set aside, not deleted
    assert any("does not load" in line and "set aside" in line for line in lines)


def test_no_loadable_checkpoint_starts_over_and_says_so(uninterrupted, teacher_file, tmp_path, monkeypatch):
    reference, reference_dir = uninterrupted["kd"]
    spec = spec_for("kd", tmp_path, teacher_file)
    interrupt_at(monkeypatch, "after_checkpoint", epoch=1)
    with pytest.raises(KeyboardInterrupt):
        execute(spec, N_TRAIN, new_record(spec), resume=False, say=lambda _l: None)
    (tmp_path / "mmengine" / "epoch_1.pth").write_bytes(b"torn")
    lines: list[str] = []
    resumed = execute(spec, N_TRAIN, read_record(tmp_path / "record.json"), resume=True, say=lines.append)
    assert comparable(resumed) == comparable(reference)
    assert_students_equal(tmp_path, reference_dir)
    assert any("starts over" in line for line in lines)


def test_checkpoints_are_written_atomically(uninterrupted, teacher_file, tmp_path, monkeypatch):
    """A kill after the checkpoint bytes are written but before the rename leaves no epoch file."""
    spec = spec_for("kd", tmp_path, teacher_file)
    interrupt_at(monkeypatch, "before_rename", file="epoch_2.pth")
    with pytest.raises(KeyboardInterrupt):
        execute(spec, N_TRAIN, new_record(spec), resume=False, say=lambda _l: None)
    names = sorted(p.name for p in (tmp_path / "mmengine").iterdir() if p.name.endswith((".pth", ".partial")))
    assert names == ["epoch_1.pth"]  # no epoch_2.pth under its final name, and the partial file was removed


def test_a_completed_record_with_a_hole_is_refused(uninterrupted, tmp_path):
    reference, _ = uninterrupted["kd"]
    holed = RunRecord.from_dict(reference.to_dict())
    holed.curve = [p for p in holed.curve if p.epoch != 1]
    (tmp_path / "record.json").write_text(__import__("json").dumps(holed.to_dict()))
    with pytest.raises(RecordError, match=r"hole in its curve: epoch\(s\) 1 of 1..2 never validated"):
        read_record(tmp_path / "record.json")
    holed.status = "running"  # an unfinished run may have a partial curve
    assert RunRecord.from_dict(holed.to_dict()).status == "running"


def test_tensorboard_gets_every_loss_term_lr_and_top1(teacher_file, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = spec_for("crd_kd", tmp_path, teacher_file)
    spec.tensorboard = True
    record = execute(spec, N_TRAIN, new_record(spec), resume=False, say=lambda _l: None)
    assert record.status == "completed"
    events = list((tmp_path / "mmengine").rglob("events.out.tfevents.*"))
    assert len(events) == 1
    tags = set(EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"])
    assert {"loss_ce", "loss_kd", "loss_crd", "loss", "lr", "val/top1", "val/top5"} <= tags, tags


def test_bf16_autocast_and_channels_last_end_to_end(teacher_file, tmp_path):
    """--amp / --channels-last: a recorded part of the recipe; training steps stay finite under bf16."""
    from mmengine.hooks import Hook

    seen = {}

    class Probe(Hook):
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            model = runner.model
            with runner.optim_wrapper.optim_context(model):
                logits = model(model.data_preprocessor(data_batch, True)["inputs"], mode="tensor")
            seen.update(
                wrapper=type(runner.optim_wrapper).__name__,
                dtype=logits.dtype,
                layout=next(model.student.parameters()).is_contiguous(memory_format=torch.channels_last)
                if next(model.student.parameters()).dim() == 4
                else None,
                loss=float(outputs["loss"].detach()),
            )

    spec = spec_for("dkd", tmp_path, teacher_file)
    spec.recipe.options = {"amp": "bfloat16", "channels_last": True}
    record = execute(spec, N_TRAIN, new_record(spec), resume=False, hooks=[Probe()], say=lambda _l: None)
    assert record.status == "completed" and all(math.isfinite(p.loss) for p in record.curve)
    assert seen["wrapper"] == "CPUAutocastOptimWrapper" and seen["dtype"] == torch.bfloat16 and seen["layout"] is True
    assert record.extra["recipe"]["options"] == {"amp": "bfloat16", "channels_last": True}
    plain = spec_for("dkd", tmp_path / "plain", teacher_file)
    assert plain.recipe.hash != spec.recipe.hash and "options" not in plain.recipe.to_dict()
