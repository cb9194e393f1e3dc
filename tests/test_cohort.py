"""Lockstep cohorts: every member's curve and exported student are bit-identical to its run alone.

The cohort shares the data stream, the batch preprocessing and the teacher's forward; each
member's randomness comes from its own stream. On CPU the same operations run on the same
inputs, so the comparisons are exact (``torch.equal``, equal floats): any difference is a bug.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmark import faults
from benchmark.store.checkpoints import epoch_checkpoints
from benchmark.store.records import RunRecord, read_record
from benchmark.suites import Pair, get_suite
from benchmark.train import STUDENT_EXPORT, RunSpec, execute, execute_cohort, new_record
from tests.digits_runs import assert_students_equal, interrupt_at, random_teacher

SUITE = get_suite("digits")
PAIR = Pair("small_cnn_w32", "small_cnn_w8")
EPOCHS = 2  # the second epoch re-seeds every stream, and a resume crosses an epoch boundary
N_TRAIN = 1438  # the digits training split
METHODS = ("ce", "kd", "fitnet", "crd", "dkd", "ckd")  # the baseline and the five methods

# The tests that compare with the runs alone share them (one module fixture): one xdist worker.
with_runs_alone = pytest.mark.xdist_group("cohort")


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    return random_teacher(tmp_path_factory.mktemp("teachers"))


def spec_for(method: str, root: Path, teacher: Path, seed: int = 0, epochs: int = EPOCHS) -> RunSpec:
    recipe = SUITE.resolve("unified", PAIR, method)
    recipe.schedule = recipe.schedule.with_epochs(epochs)
    return RunSpec(
        suite=SUITE,
        pair=PAIR,
        method=method,
        recipe=recipe,
        seed=seed,
        run_dir=root / PAIR.name / method / f"seed{seed}",
        teacher_checkpoint=None if method == "ce" else str(teacher),
        teacher_checkpoint_sha256=None if method == "ce" else "test",
        num_workers=0,
    )


def comparable(record: RunRecord) -> tuple:
    curve = [(p.epoch, p.top1, p.top5, p.loss) for p in record.curve]
    return record.status, curve, record.last_top1, record.best_top1, record.best_epoch


def quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def alone(teacher_file, tmp_path_factory) -> dict[str, RunRecord]:
    """Each method trained alone (``--no-cohort``)."""
    root = tmp_path_factory.mktemp("alone")
    done = {}
    for method in METHODS:
        spec = spec_for(method, root, teacher_file)
        done[method] = execute(spec, N_TRAIN, new_record(spec), resume=False, say=quiet)
        assert done[method].status == "completed", done[method].failure
    return {"root": root, **done}


def train_cohort_at(root: Path, teacher_file: Path, methods=METHODS, resume=False, epochs=EPOCHS) -> list[RunRecord]:
    specs = [spec_for(m, root, teacher_file, epochs=epochs) for m in methods]
    records = [read_record(s.run_dir / "record.json") if resume else new_record(s) for s in specs]
    return execute_cohort(specs, N_TRAIN, records, [resume] * len(specs), say=quiet)


def assert_identical_to_alone(records: list[RunRecord], root: Path, alone: dict, methods=METHODS) -> None:
    for method, record in zip(methods, records):
        assert comparable(record) == comparable(alone[method]), method
        assert comparable(read_record(root / PAIR.name / method / "seed0" / "record.json")) == comparable(alone[method])
        assert_students_equal(root / PAIR.name / method / "seed0", alone["root"] / PAIR.name / method / "seed0")


@with_runs_alone
def test_every_member_is_bit_identical_to_its_run_alone(alone, teacher_file, tmp_path):
    records = train_cohort_at(tmp_path, teacher_file)
    assert_identical_to_alone(records, tmp_path, alone)
    for method, record in zip(METHODS, records):
        assert record.extra["cohort"] == [m for m in METHODS if m != method]
        assert record.images_per_s > 0 and record.runtime["teacher_forward_ms"] >= 0
        # Its own checkpoints, in its own run directory.
        assert sorted(e for e, _ in epoch_checkpoints(tmp_path / PAIR.name / method / "seed0" / "mmengine")) == [1, 2]


def test_each_member_keeps_its_newest_two_checkpoints_as_a_run_alone_does(teacher_file, tmp_path):
    train_cohort_at(tmp_path, teacher_file, methods=("ce", "kd"), epochs=3)
    for method in ("ce", "kd"):
        assert sorted(e for e, _ in epoch_checkpoints(tmp_path / PAIR.name / method / "seed0" / "mmengine")) == [2, 3]


@with_runs_alone
def test_a_cohort_killed_mid_epoch_resumes_to_identical_records(alone, teacher_file, tmp_path, monkeypatch):
    interrupt_at(monkeypatch, "mid_epoch", epoch=2, iter=5)
    with pytest.raises(KeyboardInterrupt):
        train_cohort_at(tmp_path, teacher_file)
    for method in METHODS:
        assert read_record(tmp_path / PAIR.name / method / "seed0" / "record.json").status == "running"
    records = train_cohort_at(tmp_path, teacher_file, resume=True)
    assert_identical_to_alone(records, tmp_path, alone)
    assert all(record.extra["attempts"] == 2 for record in records)


@with_runs_alone
def test_a_member_interrupted_alone_resumes_in_a_cohort_and_vice_versa(alone, teacher_file, tmp_path, monkeypatch):
    """The members' checkpoints have the format of a run alone: either can resume the other."""
    spec = spec_for("dkd", tmp_path, teacher_file)
    interrupt_at(monkeypatch, "after_validation", epoch=1)
    with pytest.raises(KeyboardInterrupt):
        execute(spec, N_TRAIN, new_record(spec), resume=False, say=quiet)
    interrupt_at(monkeypatch, "after_validation", epoch=1)
    with pytest.raises(KeyboardInterrupt):
        train_cohort_at(tmp_path, teacher_file, methods=("kd", "crd"))
    # dkd (alone) and kd, crd (a cohort) all hold epoch 1: they resume as one cohort of three.
    records = train_cohort_at(tmp_path, teacher_file, methods=("kd", "crd", "dkd"), resume=True)
    assert_identical_to_alone(records, tmp_path, alone, methods=("kd", "crd", "dkd"))
    assert records[2].extra["cohort"] == ["kd", "crd"]


@with_runs_alone
def test_a_member_whose_loss_becomes_nan_fails_alone_and_the_others_go_on(alone, teacher_file, tmp_path, monkeypatch):
    monkeypatch.setenv(faults.ENV, "nan_loss NAN epoch=2 iter=3 method=dkd")
    monkeypatch.setitem(faults._state, "fired", False)
    monkeypatch.setitem(faults._state, "seen", 0)
    methods = ("kd", "dkd", "ckd")
    records = train_cohort_at(tmp_path, teacher_file, methods=methods)
    failed = records[1]
    assert failed.status == "failed" and failed.failure == "loss became nan at epoch 2, iteration 3"
    assert [p.epoch for p in failed.curve] == [1]
    assert not (tmp_path / PAIR.name / "dkd" / "seed0" / STUDENT_EXPORT).exists()
    for method, record in zip(methods, records):
        if method != "dkd":
            assert comparable(record) == comparable(alone[method]), method


def test_the_cohort_benchmark_measures_both_arms_in_fresh_processes():
    from benchmark.bench.cohort import measure, to_markdown

    result = measure("digits", steps=1, warmup=0, device="cpu", amp=False, threads=1)
    for arm in ("alone", "cohort"):
        assert result[arm]["images_per_s"] > 0 and result[arm]["peak_memory_mb"] > 0
    assert result["speedup"] == round(result["alone"]["seconds"] / result["cohort"]["seconds"], 3)
    markdown = to_markdown(
        {"env": {"device": "cpu", "torch": "x", "threads": 1, "date": "d"}, "amp": False, "results": [result]}
    )
    assert "| digits | small_cnn_w32 -> small_cnn_w8 | 1 |" in markdown


def test_runs_from_before_per_method_streams_never_share_a_table_cell_or_a_work_dir(tmp_path):
    """Schema 3 changed what a seed draws: a schema-2 classification run forms its own row, and a
    sweep refuses to continue in its directory (no old run is ever counted as a new one)."""
    from benchmark.report.load import load_records
    from benchmark.report.synthetic import make_record, run_dir, write
    from benchmark.sweep.state import read_state

    new = make_record("digits", *PAIR, "kd", 0, 90.0)
    old = make_record("digits", *PAIR, "kd", 1, 80.0)
    old.schema_version = 2
    write(tmp_path, new)
    write(tmp_path, old)
    frame = load_records([tmp_path]).records.sort_values("seed")
    assert list(frame["recipe"]) == [new.recipe, f"{old.recipe} (pre-v3 streams)"]
    state = read_state(run_dir(tmp_path, old), old.recipe_hash)
    assert state.kind == "refused" and "before per-method random streams" in state.problem
    assert read_state(run_dir(tmp_path, new), new.recipe_hash).kind == "completed"


def test_each_member_draws_from_its_own_stream_whoever_shares_its_process(teacher_file, tmp_path):
    """Two methods that draw randomness in every step (as dropout would) train in one cohort and
    alone: each draws exactly what it draws alone, so neither's draws depend on the other."""
    import methods
    from methods.kd import KD

    class NoisyKD(KD):
        def forward(self, step):
            losses = super().forward(step)
            losses["loss_kd"] = losses["loss_kd"] * (0.5 + torch.rand(()))  # a draw in every step
            return losses

    names = ("_noisy_a", "_noisy_b")
    for name in names:
        methods.METHODS.register_module(name=name, module=type(f"Noisy{name}", (NoisyKD,), {}))
    try:
        alone_root, cohort_root = tmp_path / "alone", tmp_path / "cohort"
        alone = {}
        for name in names:
            spec = spec_for(name, alone_root, teacher_file, epochs=1)
            alone[name] = execute(spec, N_TRAIN, new_record(spec), resume=False, say=quiet)
        records = train_cohort_at(cohort_root, teacher_file, methods=names, epochs=1)
        for name, record in zip(names, records):
            assert record.extra["cohort"] and comparable(record) == comparable(alone[name]), name
            assert_students_equal(cohort_root / PAIR.name / name / "seed0", alone_root / PAIR.name / name / "seed0")
        # The two methods are the same code: only their streams make them differ.
        assert comparable(records[0]) != comparable(records[1])
    finally:
        for name in names:
            methods.METHODS._module_dict.pop(name)


def test_bf16_autocast_and_channels_last_cohorts_equal_their_runs_alone(teacher_file, tmp_path):
    """--amp (bf16 autocast: the shared preprocessing and teacher pass run in the members' common
    autocast) and --channels-last change no member's numbers either."""
    names = ("kd", "ckd")

    def specs(root: Path) -> list[RunSpec]:
        made = [spec_for(name, root, teacher_file, epochs=1) for name in names]
        for spec in made:
            spec.recipe.options = {"amp": "bfloat16", "channels_last": True}
        return made

    alone = {}
    for spec in specs(tmp_path / "alone"):
        alone[spec.method] = execute(spec, N_TRAIN, new_record(spec), resume=False, say=quiet)
    members = specs(tmp_path / "cohort")
    records = execute_cohort(members, N_TRAIN, [new_record(s) for s in members], [False, False], say=quiet)
    for name, record in zip(names, records):
        assert record.extra["cohort"] and record.recipe == alone[name].recipe
        assert comparable(record) == comparable(alone[name]), name
        assert_students_equal(
            tmp_path / "cohort" / PAIR.name / name / "seed0", tmp_path / "alone" / PAIR.name / name / "seed0"
        )
