"""Fault battery: the real CLI on the digits suite, with faults injected, loses nothing.

Each case starts ``benchmark/run.py`` in a process of its own (forked with its imports done:
``tests/forked_cli.py``; one check starts a new interpreter as a user does), injects a fault through
``KD_FAULT`` (see :mod:`benchmark.faults`): a signal at a named point, a torn checkpoint,
a NaN loss, a second sweep at the same moment, a kill during aggregation, bad input. Then it
checks what is on disk: every record complete and equal to the uninterrupted run's (same
machine, same seeds, single-threaded suite: exact), nothing overwritten, one-line errors.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from benchmark.store.checkpoints import epoch_checkpoints
from benchmark.store.records import read_record
from tests.digits_runs import random_teacher
from tests.forked_cli import Cli

REPO = Path(__file__).resolve().parent.parent
PAIR = "small_cnn_w32-small_cnn_w8"
KILLED_TABLE = "digits_best.md"
BASE = ["--suite", "digits", "--seeds", "1", "--epochs", "2", "--no-baseline", "--no-aggregate"]


def cli(
    *args: str, fault: str | None = None, cwd: Path | None = None, timeout: float = 300, fresh: bool = False
) -> subprocess.CompletedProcess:
    return start(*args, fault=fault, cwd=cwd, fresh=fresh).wait(timeout)


def start(*args: str, fault: str | None = None, cwd: Path | None = None, fresh: bool = False) -> Cli:
    env = {k: v for k, v in os.environ.items() if k != "KD_FAULT"}
    if fault:
        env["KD_FAULT"] = fault
    return Cli(*args, env=env, cwd=cwd, fresh=fresh)


def run_dir(work: Path, method: str, variant: str = "unified-e2") -> Path:
    return work / "digits" / variant / PAIR / method / "seed0"


def summary(record) -> tuple:
    return (
        record.status,
        [(p.epoch, p.top1, p.top5, p.loss) for p in record.curve],
        record.last_top1,
        record.best_top1,
        record.best_epoch,
    )


def student(path: Path) -> dict:
    return torch.load(path / "student.pth", weights_only=True)["model"]


def assert_same_run(left: Path, right: Path) -> None:
    assert summary(read_record(left / "record.json")) == summary(read_record(right / "record.json"))
    a, b = student(left), student(right)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def one_line_error(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> Path:
    """A community-layout teacher folder (random weights: the battery tests mechanics, not accuracy)."""
    root = tmp_path_factory.mktemp("teachers")
    random_teacher(root)
    return root


@pytest.fixture(scope="module")
def reference(teachers, tmp_path_factory) -> Path:
    """The uninterrupted crd run every interrupted one must end up identical to."""
    work = tmp_path_factory.mktemp("reference")
    out = cli(*BASE, "--methods", "crd", "--teachers", str(teachers), "--work-dir", str(work))
    assert out.returncode == 0, out.stdout + out.stderr
    return run_dir(work, "crd")


INTERRUPTIONS = [
    ("mid_epoch KILL epoch=2 iter=3", -signal.SIGKILL),
    ("mid_epoch INT epoch=1 iter=3", 130),
    ("after_checkpoint INT epoch=1", 130),  # checkpoint written, validation never ran (middle epoch)
    ("after_checkpoint INT epoch=2", 130),  # ... at the last epoch
    ("before_finalise INT", 130),  # every epoch validated, the record not yet completed
    ("mid_epoch TERM epoch=2 iter=2", 143),
]


@pytest.mark.parametrize(
    "fault,code", INTERRUPTIONS, ids=[f.split(" ", 2)[0] + "-" + f.split()[1] for f, _ in INTERRUPTIONS]
)
def test_interrupted_then_resumed_equals_uninterrupted(fault, code, reference, teachers, tmp_path):
    args = [*BASE, "--methods", "crd", "--teachers", str(teachers), "--work-dir", str(tmp_path)]
    broken = cli(*args, fault=fault)
    assert broken.returncode == code, broken.stdout + broken.stderr
    record = read_record(run_dir(tmp_path, "crd") / "record.json")
    assert record.status == "running"  # resumable, not failed
    if code > 0:
        assert "run the same command again to resume" in broken.stderr
    again = cli(*args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming" in again.stdout
    assert_same_run(run_dir(tmp_path, "crd"), reference)


def test_a_torn_newest_checkpoint_does_not_fail_the_run(reference, teachers, tmp_path):
    args = [*BASE, "--methods", "crd", "--teachers", str(teachers), "--work-dir", str(tmp_path)]
    assert cli(*args, fault="after_checkpoint KILL epoch=2").returncode == -signal.SIGKILL
    newest = epoch_checkpoints(run_dir(tmp_path, "crd") / "mmengine")[0][1]
    assert newest.name == "epoch_2.pth"
    newest.write_bytes(newest.read_bytes()[:1000])  # what a kill in torch.save or a full disk leaves
    again = cli(*args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "does not load" in again.stdout and "set aside" in again.stdout
    assert (newest.parent / "epoch_2.pth.unreadable").is_file()
    assert_same_run(run_dir(tmp_path, "crd"), reference)


def test_nan_in_one_method_fails_that_run_and_the_sweep_goes_on(teachers, tmp_path):
    out = cli(
        *BASE,
        "--methods",
        "ckd,kd",
        "--teachers",
        str(teachers),
        "--work-dir",
        str(tmp_path),
        fault="nan_loss NAN method=ckd epoch=1 iter=2",
    )
    assert out.returncode == 1, out.stdout + out.stderr
    failed, done = (
        read_record(run_dir(tmp_path, "ckd") / "record.json"),
        read_record(run_dir(tmp_path, "kd") / "record.json"),
    )
    assert failed.status == "failed" and "nan" in failed.failure.lower() and "epoch 1, iteration 2" in failed.failure
    assert done.status == "completed" and [p.epoch for p in done.curve] == [1, 2]
    assert "1 run(s) completed, 1 failed" in out.stdout


def test_two_sweeps_at_once_run_everything_exactly_once(tmp_path):
    """No --teachers: the teacher stage races too."""
    args = [
        "--suite",
        "digits",
        "--methods",
        "kd",
        "--seeds",
        "2",
        "--epochs",
        "2",
        "--no-baseline",
        "--no-aggregate",
        "--work-dir",
        str(tmp_path),
    ]
    procs = [start(*args) for _ in range(2)]  # started within milliseconds of each other
    done = [proc.wait(300) for proc in procs]
    outs, codes = [(d.stdout, d.stderr) for d in done], [d.returncode for d in done]
    stdout = "".join(out for out, _ in outs)
    assert set(codes) <= {0, 3} and 0 in codes, (codes, outs)
    assert stdout.count("teacher small_cnn_w32: training") == 1, stdout
    for seed in (0, 1):
        starts = [line for line in stdout.splitlines() if f" kd seed{seed} " in line and ": starting |" in line]
        assert len(starts) == 1, stdout
        record = read_record(run_dir(tmp_path, "kd").parent / f"seed{seed}" / "record.json")
        assert (
            record.status == "completed" and [p.epoch for p in record.curve] == [1, 2] and record.extra["attempts"] == 1
        )
    teacher = read_record(tmp_path / "digits" / "unified-e2" / "teachers" / "small_cnn_w32" / "seed0" / "record.json")
    assert teacher.extra["attempts"] == 1
    for code, (out, _) in zip(codes, outs):
        assert (code == 3) == ("held by another sweep (" in out), out  # a skip is said, and the exit code says it


def test_a_run_held_by_another_process_is_skipped_with_its_holder_named(teachers, tmp_path):
    from benchmark.store.claims import claim

    with claim(run_dir(tmp_path, "kd"), say=lambda _l: None):
        out = cli(*BASE, "--methods", "kd", "--teachers", str(teachers), "--work-dir", str(tmp_path))
    assert out.returncode == 3, out.stdout + out.stderr
    assert f"held by another sweep (pid {os.getpid()} on " in out.stdout
    assert "0 run(s) completed, 0 failed, 1 held by another sweep" in out.stdout
    assert not (run_dir(tmp_path, "kd") / "record.json").exists()
    assert cli(*BASE, "--methods", "kd", "--teachers", str(teachers), "--work-dir", str(tmp_path)).returncode == 0


def test_an_interrupted_aggregation_leaves_no_half_table(teachers, tmp_path):
    tables, reports = tmp_path / "tables", tmp_path / "reports"
    args = [
        "--suite",
        "digits",
        "--epochs",
        "2",
        "--methods",
        "kd",
        "--no-baseline",
        "--teachers",
        str(teachers),
        "--work-dir",
        str(tmp_path / "w"),
        "--tables",
        str(tables),
        "--reports",
        str(reports),
    ]
    assert cli(*args, "--seeds", "1", cwd=tmp_path).returncode == 0
    before = {p.name: p.read_bytes() for p in tables.iterdir()}
    # One more seed changes every table; the aggregation is killed with a table written but not yet in place.
    killed = cli(*args, "--seeds", "2", fault=f"before_rename KILL file={KILLED_TABLE}", cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    after_kill = {p.name: p.read_bytes() for p in tables.iterdir() if not p.name.startswith(".")}
    assert after_kill.keys() == before.keys()
    assert after_kill[KILLED_TABLE] == before[KILLED_TABLE]  # the killed write never landed half-way
    assert cli(*args, "--seeds", "2", cwd=tmp_path).returncode == 0
    final = {p.name: p.read_bytes() for p in tables.iterdir() if not p.name.startswith(".")}
    assert final[KILLED_TABLE] != before[KILLED_TABLE] and b"(2)" in final[KILLED_TABLE]
    for name, content in after_kill.items():  # each file was either the old or the new complete version
        assert content in (before[name], final[name]), name


# ---- bad input: one line, exit 2, nothing lost ---------------------------------------------------


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--methods", "kd", "--seeds", "0"], "--seeds must be at least 1"),
        (["--methods", "kd", "--epochs", "-1"], "--epochs must be at least 1"),
        (["--methods", "kd", "--batch-sizes", "abc"], "--batch-sizes must be a comma list of integers"),
        (["--methods", "kd", "--recipe", "nope"], "has no recipe 'nope'"),
        (["--methods", ","], "--methods is empty"),
        (["--methods", "kd", "--pairs", "a-b"], "has no pair 'a-b'"),
    ],
)
def test_cli_mistakes(extra, needle, tmp_path):
    from benchmark import run

    code = run.main(["--suite", "digits", "--work-dir", str(tmp_path / "w"), *extra])
    assert code == 2
    assert not (tmp_path / "w").exists()  # nothing was created
    # The same through a real process, for one of them (one line on stderr, no traceback).
    if extra[-1] == "0":
        # A new interpreter: what it prints while importing counts too.
        one_line_error(cli("--suite", "digits", "--work-dir", str(tmp_path / "w"), *extra, fresh=True), needle)


def test_missing_teachers_stop_before_anything_runs(tmp_path):
    for teachers in (tmp_path / "nonexistent", tmp_path):  # a missing folder, and a folder without the file
        out = cli(*BASE, "--methods", "kd", "--teachers", str(teachers), "--work-dir", str(tmp_path / "w"))
        one_line_error(out, "1 teacher file(s) not found", "small_cnn_w32_vanilla/ckpt_epoch_240.pth")
        assert not (tmp_path / "w").exists()


def test_corrupt_and_pickle_teachers_are_refused_without_running_their_code(tmp_path):
    teachers = tmp_path / "t"
    path = teachers / "small_cnn_w32_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00not a checkpoint")
    one_line_error(
        cli(*BASE, "--methods", "kd", "--teachers", str(teachers), "--work-dir", str(tmp_path / "w")), "corrupt"
    )

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": Payload()}, path)
    out = cli(*BASE, "--methods", "kd", "--teachers", str(teachers), "--work-dir", str(tmp_path / "w"))
    one_line_error(out, "not a tensor-only checkpoint", "Weights only load failed.")
    assert len(out.stderr) < 400 and not marker.exists()


def test_a_truncated_record_is_refused_and_kept(teachers, tmp_path):
    target = run_dir(tmp_path, "kd")
    target.mkdir(parents=True)
    (target / "record.json").write_text('{"suite": "digits", "pa')
    out = cli(*BASE, "--methods", "kd", "--teachers", str(teachers), "--work-dir", str(tmp_path))
    one_line_error(out, "cannot trust", "record.json")
    assert (target / "record.json").read_text() == '{"suite": "digits", "pa'


def test_unusable_output_paths_stop_before_anything_runs(teachers, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    one_line_error(
        cli(*BASE, "--methods", "kd", "--work-dir", str(blocker / "w"), cwd=tmp_path),
        "--work-dir",
        "cannot create or write",
    )
    args = [
        "--suite",
        "digits",
        "--seeds",
        "1",
        "--epochs",
        "2",
        "--no-baseline",
        "--methods",
        "kd",
        "--work-dir",
        str(tmp_path / "w"),
    ]
    one_line_error(cli(*args, "--tables", str(blocker / "t"), cwd=tmp_path), "--tables", "cannot create or write")
    one_line_error(cli(*args, "--reports", str(blocker / "r"), cwd=tmp_path), "--reports", "cannot create or write")
    assert not (tmp_path / "w" / "digits").exists()  # nothing trained


def test_a_data_root_that_is_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    one_line_error(
        cli(
            "--suite",
            "cifar100",
            "--methods",
            "kd",
            "--pairs",
            "resnet56-resnet20",
            "--data-root",
            str(blocker),
            "--work-dir",
            str(tmp_path / "w"),
            "--no-aggregate",
        ),
        "CIFAR-100",
    )
