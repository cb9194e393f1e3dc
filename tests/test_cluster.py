"""Scale-out through submitit (benchmark/cluster.py): --cluster local|slurm, --wait, --status.

No Slurm is needed: local jobs are real processes (submitit's LocalExecutor) running the real
digits suite, and tests/fake_slurm stands in for sbatch/sacct/squeue/scancel/srun — sbatch keeps
every submitted script and answers a fake job id, sacct/squeue answer from a state file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from benchmark.store.records import EpochPoint, RunRecord, read_record, write_record
from tests.forked_cli import Cli

REPO = Path(__file__).resolve().parent.parent
FAKE_SLURM = REPO / "tests" / "fake_slurm"
PAIR = "small_cnn_w32-small_cnn_w8"
# One worker under pytest-xdist (tox -e py runs -n 2 --dist loadgroup): the module-scoped sweep is
# computed once and shared by four tests.
pytestmark = pytest.mark.xdist_group("cluster")
BASE = ["--suite", "digits", "--methods", "kd", "--epochs", "2", "--no-baseline", "--no-aggregate"]


def main(argv: list[str]) -> int:
    from benchmark.run import main as run_main

    return run_main(argv)


@pytest.fixture(autouse=True)
def _fast_polling(monkeypatch):
    monkeypatch.setenv("KD_CLUSTER_POLL_S", "0.3")
    monkeypatch.delenv("KD_FAULT", raising=False)


def run_dir(work: Path, seed: int = 0, variant: str = "unified-e2", method: str = "kd") -> Path:
    return work / "digits" / variant / PAIR / method / f"seed{seed}"


def summary(record) -> tuple:
    return (
        record.status,
        [(p.epoch, p.top1, p.top5, p.loss) for p in record.curve],
        record.last_top1,
        record.best_top1,
        record.best_epoch,
    )


def job_logs(work: Path) -> str:
    return "".join(path.read_text() for path in sorted((work / "jobs").glob("*_log.out")))


def starts(logs: str, seed: int) -> list[str]:
    return [
        line
        for line in logs.splitlines()
        if f" kd seed{seed} " in line and re.search(r": (starting|resuming) \|", line)
    ]


# --------------------------------------------------------------------------- local executor


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The same `--cluster local --wait` sweep started twice at the same moment (two processes).

    Teacher stage included: one trains the teacher in-process, the other waits for it. Both end
    by aggregating. Its run directories are the uninterrupted reference of the resume test.
    """
    root = tmp_path_factory.mktemp("swept")
    argv = [
        *(a for a in BASE if a != "--no-aggregate"),
        "--seeds",
        "2",
        "--work-dir",
        str(root / "work"),
        "--tables",
        str(root / "tables"),
        "--reports",
        str(root / "reports"),
        "--cluster",
        "local",
        "--wait",
    ]
    env = {**{k: v for k, v in os.environ.items() if k != "KD_FAULT"}, "KD_CLUSTER_POLL_S": "0.3"}
    procs = [Cli(*argv, env=env) for _ in range(2)]  # two processes of their own, started within milliseconds
    outs, codes = communicate_all(procs, STUCK_S)
    return root / "work", argv, outs, codes


STUCK_S = 600  # only a process that is really stuck takes this long (about a minute unloaded, 2 cores)


def communicate_all(procs: list[Cli], deadline_s: float) -> tuple[list[str], list[int]]:
    """Every process's output and exit status once all have exited; one deadline for all, none left running."""
    import time

    end = time.monotonic() + deadline_s
    done = []
    try:
        for proc in procs:
            done.append(proc.wait(timeout=max(1.0, end - time.monotonic())))
    except subprocess.TimeoutExpired as exc:
        for proc in procs[len(done) + 1 :]:
            proc.kill()
        outs = [d.stdout + d.stderr for d in done] + [f"{exc.stdout}{exc.stderr}"]
        outs += [d.stdout + d.stderr for d in (proc.wait(30) for proc in procs[len(done) + 1 :])]
        pytest.fail(f"still running after {deadline_s:.0f}s:\n" + "\n----\n".join(outs))
    return [d.stdout + d.stderr for d in done], [d.returncode for d in done]


def test_two_concurrent_submissions_execute_every_run_exactly_once(swept):
    work, _, outs, codes = swept
    assert codes == [0, 0], outs
    stdout = "".join(outs)
    assert stdout.count("teacher small_cnn_w32: training") == 1, stdout  # the other one waited for it
    assert stdout.count("2 run(s) completed, 0 failed, 0 lost") == 2, stdout  # both waited to the end
    logs = job_logs(work)
    for seed in (0, 1):
        record = read_record(run_dir(work, seed) / "record.json")
        assert record.status == "completed" and [p.epoch for p in record.curve] == [1, 2], stdout
        assert record.extra["attempts"] == 1, stdout
        assert len(starts(logs, seed)) == 1, logs  # one execution, whichever job got the claim
    assert "resuming" not in logs, logs
    # --wait returned only once every job of both sweeps had ended (a job submitted for a run that the
    # other sweep's job took finds it held or done, and exits; none may still be claiming directories).
    submitted = {p.name.split("_")[0] for p in (work / "jobs").glob("*_submitted.pkl")}
    ended = {p.name.split("_")[0] for p in (work / "jobs").glob("*_result.pkl")}
    assert submitted and submitted == ended, (submitted, ended, logs)


def test_a_job_finding_its_run_held_exits_3_and_one_finding_it_completed_does_nothing(swept, capsys, monkeypatch):
    from benchmark.store.claims import claim
    from benchmark.sweep.cluster.jobs import RunJob, job_options
    from benchmark.sweep.options import parse_args

    work, argv, _, _ = swept
    monkeypatch.chdir(REPO)
    job, job_args, target = RunJob(str(REPO)), job_options(parse_args(argv)), run_dir(work, 1)
    before = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file() and p.name != ".claim"}
    with claim(target, say=lambda _l: None):
        assert job(job_args, str(target)) == 3
    assert f"held by another sweep (pid {os.getpid()} on " in capsys.readouterr().out
    assert job(job_args, str(target)) == 0
    assert "done before" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in target.iterdir() if p.is_file() and p.name != ".claim"} == before


def test_local_wait_ran_the_sweep_to_the_end_then_the_same_command_submits_nothing(swept, capsys):
    work, argv, outs, _ = swept
    assert all("[2/2 completed] 0 running, 0 pending, 0 failed, 0 lost" in out for out in outs), outs
    assert all("tables in " in out for out in outs), outs  # aggregated once everything had ended
    assert (work.parent / "tables" / "digits_last.md").exists()
    records = sorted(work.rglob("record.json"))
    assert len(records) == 3 and all(read_record(p).status == "completed" for p in records)  # teacher + 2 runs
    assert all(
        json.loads((run_dir(work, seed) / "submitted.json").read_text())["cluster"] == "local" for seed in (0, 1)
    )
    before = {p: p.read_bytes() for p in records}
    logs = sorted((work / "jobs").glob("*_log.out"))

    assert main(argv) == 0  # the same command again
    out = capsys.readouterr().out
    assert "nothing to submit: 2 completed" in out, out
    assert {p: p.read_bytes() for p in work.rglob("record.json")} == before
    assert sorted((work / "jobs").glob("*_log.out")) == logs  # no job started

    assert main([*argv[:-3], "--status"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\[\s*completed\] small_cnn_w32: top-1", out), out
    for seed in (0, 1):
        assert re.search(rf"\[\s*completed\] digits/unified-e2/{PAIR}/kd/seed{seed}: top-1 \d+\.\d\d", out), out
    assert "2 run(s): 2 completed, 0 running, 0 pending, 0 failed, 0 lost" in out, out


def test_a_job_killed_mid_run_is_resumed_by_the_next_submission(swept, tmp_path, capsys, monkeypatch):
    reference = swept[0]
    work = tmp_path / "work"
    teacher = Path("digits") / "unified-e2" / "teachers" / "small_cnn_w32" / "seed0"
    (work / teacher).mkdir(parents=True)
    for name in ("record.json", "student.pth"):  # the same trained teacher as the reference runs
        shutil.copy2(reference / teacher / name, work / teacher / name)
    argv = [*BASE, "--seeds", "1", "--work-dir", str(work), "--cluster", "local", "--wait"]

    monkeypatch.setenv("KD_FAULT", "mid_epoch KILL epoch=2 iter=3")  # reaches the job through its environment
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert re.search(r"lost: .*seed0: record says running at epoch 1/2, but local job \d+ on .* ended", out), out
    record = read_record(run_dir(work) / "record.json")
    assert record.status == "running" and [p.epoch for p in record.curve] == [1]
    monkeypatch.delenv("KD_FAULT")

    assert main([*argv[:-3], "--status"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\[\s*lost\] .*seed0: record says running at epoch 1/2", out), out
    assert "1 run(s): 0 completed, 0 running, 0 pending, 0 failed, 1 lost" in out, out

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "submitted 1 run(s)" in out, out
    logs = job_logs(work)
    assert sorted(line.split(": ")[1].split()[0] for line in starts(logs, 0)) == ["resuming", "starting"], logs
    resumed = read_record(run_dir(work) / "record.json")
    assert resumed.extra["attempts"] == 2
    assert summary(resumed) == summary(read_record(run_dir(reference) / "record.json"))
    a = torch.load(run_dir(work) / "student.pth", weights_only=True)["model"]
    b = torch.load(run_dir(reference) / "student.pth", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    marker = json.loads((run_dir(work) / "submitted.json").read_text())
    assert len(marker["previous"]) == 1  # the killed job's submission is kept in the marker's history


# --------------------------------------------------------------------------- the stand-in Slurm


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    log = tmp_path / "slurm" / "sbatch.log"
    log.parent.mkdir()
    monkeypatch.setenv("PATH", f"{FAKE_SLURM}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KD_FAKE_SLURM_LOG", str(log))
    return log


def sbatch_calls(log: Path) -> list[str]:
    return [line.split("\t")[0] for line in log.read_text().splitlines()] if log.exists() else []


def test_slurm_submission_teacher_job_then_a_dependent_array(fake_slurm, tmp_path, capsys):
    from submitit.core.utils import DelayedSubmission

    from benchmark.sweep.cluster.jobs import RunJob, TeacherJob
    from benchmark.sweep.options import parse_args
    from benchmark.sweep.plan import plan_sweep

    work = tmp_path / "work"
    sweep_args = [
        "--suite",
        "digits",
        "--methods",
        "kd,dkd",
        "--seeds",
        "2",
        "--epochs",
        "1",
        "--no-baseline",
        "--work-dir",
        str(work),
    ]
    resources = [
        "--partition",
        "gpu",
        "--cpus-per-run",
        "4",
        "--time-limit",
        "90",
        "--mem-gb",
        "16",
        "--array-parallelism",
        "3",
        "--slurm",
        "account=abc",
        "--slurm",
        "qos=high",
        "--slurm",
        "constraint=a100",
        "--slurm",
        "reservation=kd",
    ]
    argv = [*sweep_args, "--cluster", "slurm", *resources]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "teacher small_cnn_w32: submitted as job 4242" in out, out
    assert (
        "submitted 4 run(s) (2 cohort job(s)) as array job 4243 (tasks 0-1, at most 2 at once)" in out
        and "after afterok:4242" in out
    ), out
    assert "--status" in out and "--cluster" not in out.split("watch with:")[1], out
    assert sbatch_calls(fake_slurm) == ["4242", "4243"]

    teacher_sh, runs_sh = ((fake_slurm.parent / f"sbatch-{i}.sh").read_text() for i in (4242, 4243))
    for script in (teacher_sh, runs_sh):
        for line in (
            "--partition=gpu",
            "--gpus-per-node=1",
            "--cpus-per-task=4",
            "--time=90",
            "--mem=16GB",
            "--nodes=1",
            "--ntasks-per-node=1",
            "--signal=USR2@90",
            "--requeue",
            "--account=abc",
            "--qos=high",
            "--constraint=a100",
            "--reservation=kd",
            "--open-mode=append",
        ):
            assert f"#SBATCH {line}\n" in script, (line, script)
        assert f"export PYTHONPATH={REPO}" in script
        assert re.search(
            r"srun --unbuffered .* -u -m submitit\.core\._submit " + re.escape(str(work / "jobs")), script
        ), script
    assert (
        "--array" not in teacher_sh
        and "--dependency" not in teacher_sh
        and "#SBATCH --job-name=kd-digits-teachers\n" in teacher_sh
    )
    assert "#SBATCH --array=0-1%2\n" in runs_sh and "#SBATCH --dependency=afterok:4242\n" in runs_sh, runs_sh
    assert "#SBATCH --kill-on-invalid-dep=yes\n" in runs_sh and "#SBATCH --job-name=kd-digits\n" in runs_sh
    assert re.search(r"#SBATCH --output=.*/jobs/%A_%a_0_log\.out", runs_sh), runs_sh

    # What each array task runs: RunJob(cwd)(options, run_dirs) with the sweep's options, --no-aggregate, no
    # --cluster; one task per cohort (the methods of one seed).
    runs = plan_sweep(parse_args(sweep_args)).runs
    assert len(runs) == 4
    planned = [[str(run.run_dir) for run in runs if run.seed == seed] for seed in (0, 1)]
    for index, expected in enumerate(planned):
        delayed = DelayedSubmission.load(work / "jobs" / f"4243_{index}_submitted.pkl")
        assert isinstance(delayed.function, RunJob) and delayed.function.cwd == os.getcwd()
        parsed, job_run_dir = delayed.args
        assert job_run_dir == expected
        assert parsed.no_aggregate and (parsed.cluster, parsed.wait, parsed.status) == (None, False, False)
        assert (parsed.suite, parsed.methods, parsed.seeds, parsed.epochs, parsed.work_dir, parsed.cluster) == (
            "digits",
            "kd,dkd",
            2,
            1,
            str(work),
            None,
        )
        for member in expected:  # every member of the cohort names the cohort's job
            marker = json.loads((Path(member) / "submitted.json").read_text())
            assert (marker["cluster"], marker["job_id"]) == ("slurm", f"4243_{index}")
    teacher = DelayedSubmission.load(work / "jobs" / "4242_submitted.pkl")
    assert isinstance(teacher.function, TeacherJob) and teacher.args[1] == "small_cnn_w32"
    assert (
        hasattr(RunJob, "checkpoint") and delayed.function.checkpoint(*delayed.args).function is delayed.function
    )  # requeues itself

    # Never twice: everything is queued (sacct says PENDING), so the same command submits nothing.
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "teacher small_cnn_w32: already submitted" in out and "nothing to submit: 4 queued" in out, out
    # ... nor while the scheduler does not answer.
    (fake_slurm.parent / "fake_slurm.down").touch()
    assert main(argv) == 0
    assert "nothing to submit: 4 queued, scheduler not answering" in capsys.readouterr().out
    (fake_slurm.parent / "fake_slurm.down").unlink()
    assert sbatch_calls(fake_slurm) == ["4242", "4243"]

    # One task (a cohort) ended without starting its runs: the status says lost for each member, and
    # only those runs are submitted again, as one cohort job.
    with (fake_slurm.parent / "fake_slurm.states").open("a") as states:
        states.write("4243_0|RUNNING\n4243_1|CANCELLED by 1000\n")
    assert main([*sweep_args, "--status"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\[\s*pending\] .*/kd/seed0: job 4243_0 is starting", out), out
    assert re.search(r"\[\s*pending\] .*/dkd/seed0: job 4243_0 is starting", out), out
    assert re.search(r"\[\s*lost\] .*/kd/seed1: job 4243_1 ended CANCELLED before starting the run", out), out
    assert re.search(r"\[\s*lost\] .*/dkd/seed1: job 4243_1 ended CANCELLED before starting the run", out), out
    assert "4 run(s): 0 completed, 0 running, 2 pending, 0 failed, 2 lost" in out, out
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "submitted 2 run(s) (1 cohort job(s)) as job 4244" in out and "not submitted: 2 queued" in out, out
    single = (fake_slurm.parent / "sbatch-4244.sh").read_text()
    assert "--array" not in single and "#SBATCH --dependency=afterok:4242\n" in single
    for member in planned[1]:
        marker = json.loads((Path(member) / "submitted.json").read_text())
        assert marker["job_id"] == "4244" and marker["previous"][0]["job_id"] == "4243_1"


def test_slurm_wait_ends_when_the_jobs_have_ended_and_says_which_runs_did_not_finish(
    fake_slurm, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("KD_FAKE_SLURM_STATE", "CANCELLED")  # the array is cancelled before any task starts
    argv = [
        "--suite",
        "digits",
        "--methods",
        "ce",
        "--seeds",
        "2",
        "--epochs",
        "1",
        "--no-aggregate",
        "--work-dir",
        str(tmp_path / "w"),
        "--device",
        "cpu",
        "--cluster",
        "slurm",
        "--wait",
    ]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "submitted 2 run(s) as array job 4242" in out, out
    assert "#SBATCH --gpus-per-node" not in (fake_slurm.parent / "sbatch-4242.sh").read_text()  # --device cpu: no GPU
    assert re.search(
        r"lost: .*ce/seed1: job 4242_1 ended CANCELLED before starting the run; submit again; log .*4242_1_0_log\.out",
        out,
    ), out
    assert (
        "[0/2 completed] 0 running, 0 pending, 0 failed, 2 lost" in out
        and "0 run(s) completed, 0 failed, 2 lost" in out
    ), out


def test_slurm_options_are_checked_before_anything_is_submitted(fake_slurm, tmp_path, capsys):
    base = [
        "--suite",
        "digits",
        "--methods",
        "kd",
        "--seeds",
        "1",
        "--work-dir",
        str(tmp_path / "w"),
        "--cluster",
        "slurm",
    ]
    for bad, needle in (
        (["--slurm", "time=10"], "use --time-limit"),
        (["--slurm", "nodes=2"], "multi-node"),
        (["--slurm", "noequals=", "--gpus-per-run", "-1"], "--gpus-per-run must be at least 0"),
    ):
        assert main([*base, *bad]) == 2
        assert needle in capsys.readouterr().err
    assert sbatch_calls(fake_slurm) == []


# --------------------------------------------------------------------------- --status without a scheduler


def test_status_from_the_run_directories_alone_with_no_scheduler(tmp_path, capsys, monkeypatch):
    from benchmark.store.claims import claim
    from benchmark.sweep.options import parse_args
    from benchmark.sweep.plan import plan_sweep

    work = tmp_path / "work"
    argv = [
        "--suite",
        "digits",
        "--methods",
        "kd",
        "--seeds",
        "7",
        "--epochs",
        "4",
        "--no-baseline",
        "--work-dir",
        str(work),
    ]
    runs = plan_sweep(parse_args(argv)).runs

    def record(seed: int, status: str, epochs_done: int, failure: str | None = None) -> None:
        run = runs[seed]
        rec = RunRecord(
            suite="digits",
            pair=PAIR,
            teacher="small_cnn_w32",
            student="small_cnn_w8",
            method="kd",
            recipe="unified",
            recipe_hash=run.recipe.hash,
            seed=seed,
            epochs=4,
            batch_size=64,
            lr=0.05,
            status=status,
            failure=failure,
            curve=[EpochPoint(e, 40.0 + 10 * e, 90.0, 1.0) for e in range(1, epochs_done + 1)],
            wall_time_s=10.0 * epochs_done,
        )
        rec.finalise_curve()
        write_record(rec, run.run_dir)

    def marker(seed: int, cluster: str, job_id: str) -> None:
        from benchmark.sweep.cluster.markers import write_marker

        write_marker(runs[seed].run_dir, cluster, job_id, log=None)

    record(0, "completed", 4)
    record(1, "failed", 2, failure="NonFiniteLossError: loss is nan at epoch 3")
    record(2, "running", 2)  # held below: running
    record(3, "running", 1)  # no claim, no job: lost
    record(4, "running", 1)
    marker(4, "slurm", "777_4")  # submitted, scheduler silent: queued
    probe = subprocess.Popen(["true"])  # a local job that has ended (its pid is gone)
    probe.wait()
    marker(6, "local", str(probe.pid))  # seed 5: never submitted; seed 6: its local job ended before starting it

    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no sacct, no squeue
    with claim(runs[2].run_dir, say=lambda _l: None):
        assert main([*argv, "--status"]) == 0
    out = capsys.readouterr().out
    prefix = f"digits/unified-e4/{PAIR}/kd"
    expected = [
        rf"\[\s*completed\] {prefix}/seed0: top-1 80\.00 \(best 80\.00 at epoch 4\)",
        rf"\[\s*failed\] {prefix}/seed1: NonFiniteLossError: loss is nan at epoch 3",
        rf"\[\s*running\] {prefix}/seed2: epoch 2/4, top-1 60\.00, ETA 0m20s \(pid {os.getpid()} on ",
        rf"\[\s*lost\] {prefix}/seed3: record says running at epoch 1/4, but no live job holds it",
        rf"\[\s*pending\] {prefix}/seed4: queued \(job 777_4\) to resume at epoch 1/4, scheduler not answering",
        rf"\[\s*pending\] {prefix}/seed5: not submitted",
        rf"\[\s*lost\] {prefix}/seed6: local job {probe.pid} on .* ended before starting the run",
        r"7 run\(s\): 1 completed, 1 running, 2 pending, 1 failed, 2 lost",
        r"Slurm not answering \(sacct: No such file or directory; squeue: No such file or directory\)",
    ]
    for pattern in expected:
        assert re.search(pattern, out), (pattern, out)
